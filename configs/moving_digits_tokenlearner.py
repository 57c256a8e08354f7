r"""moving_digits with ViViT + TokenLearner (§5.1, Fig. 3(a)): 8 tokens per temporal slice.

Same data, schedule and model as configs/moving_digits_vivit.py, plus a TokenLearner before layer 1
of the 4: the 8 x 8 grid of each of the 2 temporal slices (128 tokens) becomes 8 learned tokens
per slice (16 tokens) for layers 1-3, cutting their attention and MLP cost.

Accuracy, time and FLOPs against the ViViT baseline: BENCHMARKS.md (the moving_digits rows);
TokenLearner before layer 1 vs 2 over seeds: docs/paper_claims.md.

  python main.py --config=configs/moving_digits_tokenlearner.py --workdir=/tmp/md_tl
  python main.py --config=configs/moving_digits_tokenlearner.py --workdir=/tmp/md_tl_fuser \
      --config.model.tokenlearner.fuser=True      # Fig. 3(b): TokenLearner-block-TokenFuser
"""
from configs import moving_digits_vivit


def get_config():
  config = moving_digits_vivit.get_config()
  tl = config.model.tokenlearner
  tl.num_tokens, tl.loc, tl.version, tl.fuser = 8, 1, 'v1', False
  return config
