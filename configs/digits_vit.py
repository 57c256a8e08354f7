r"""The offline default job without TokenLearner: the same micro ViT ('Mu/4') on the 8x8 digits.

Identical to configs/digits_tokenlearner.py except `model.tokenlearner.num_tokens=0`, so the
two summary.json files compare ViT and ViT + TokenLearner directly.

  python main.py --config=configs/digits_vit.py --workdir=/tmp/token_learner_vit
"""
from configs import digits_tokenlearner


def get_config():
  config = digits_tokenlearner.get_config()
  config.model.tokenlearner.num_tokens = 0
  return config
