r"""The offline default job: a micro ViT + TokenLearner on scikit-learn's 8x8 digits.

No download needed (the digits ship with scikit-learn: 1437 train / 360 test images, 10
classes). The 8x8 scans are upsampled to 16x16 and cut into 4x4 patches (a 4x4 grid of 16
tokens); a TokenLearner (§2.1) reduces them to 8 learned tokens before layer 1 of a 4-layer,
64-wide ViT ('Mu/4'). Finishes in a few minutes on 2 CPU cores, > 95 % test accuracy.

  python main.py --config=configs/digits_tokenlearner.py --workdir=/tmp/token_learner

  # ViT vs TokenLearner placements vs TokenFuser, one run per row of get_sweep():
  python sweep.py --config=configs/digits_tokenlearner.py --workdir=/tmp/tl_sweep
"""
from configs import common


def get_config():
  return common.experiment_config(
      seed=0, batch_size=128, eval_batch_size=128, num_train_steps=1500, optimizer='adamw',
      learning_rate=3e-3, lr_schedule='cosine', warmup_steps=100, weight_decay=0.05,
      grad_clip_norm=1.0, label_smoothing=0.1, mixup_alpha=0.0, log_every_steps=100,
      evals={'eval': common.eval_config(every_steps=500)}, checkpoint_every_steps=500, keep_checkpoints=2,
      model=common.model_config(name='vit', variant='Mu/4', num_classes=10, num_tokens=8, loc=1,
                                version='v1', fuser=False),
      dataset=common.dataset_config('digits', train_split='train', eval_split='test',
                                    image_size=16, crop_min_area=1.0, augment=False,
                                    shuffle_buffer=2048))


def get_sweep():
  """Named override sets: ViT, TokenLearner at each location and token count, with/without fuser."""
  tl = 'model.tokenlearner.'
  sweep = [('vit', {tl + 'num_tokens': 0})]
  for loc in (0, 1, 2, 3):
    sweep.append((f'tl8_loc{loc}', {tl + 'num_tokens': 8, tl + 'loc': loc}))
  for tokens in (4, 16):
    sweep.append((f'tl{tokens}_loc1', {tl + 'num_tokens': tokens, tl + 'loc': 1}))
  sweep.append(('tl8_loc1_fuser', {tl + 'num_tokens': 8, tl + 'loc': 1, tl + 'fuser': True}))
  sweep.append(('tl8_loc1_v11', {tl + 'num_tokens': 8, tl + 'loc': 1, tl + 'version': 'v1.1'}))
  return [dict(name=name, overrides=overrides) for name, overrides in sweep]
