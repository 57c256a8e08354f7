r"""The offline video job: a micro ViViT (§5.1) on moving_digits, no TokenLearner (the baseline).

moving_digits (token_learner/data, no download): a scikit-learn digit slides across a 32x32 canvas
in one of 4 directions; 40 classes = digit x direction, so a single frame cannot tell the class.
Clips of 8 frames (stride 2), tubelets 4x4x4 -> 2 x 8 x 8 = 128 tokens, joint space-time attention
in a 4-layer, 64-wide ViViT ('Mu/4'). Eval: 2 clips per video, logits averaged.

Accuracy and time: BENCHMARKS.md (the moving_digits rows).

  python main.py --config=configs/moving_digits_vivit.py --workdir=/tmp/md_vivit
  python -m token_learner.flops --config=configs/moving_digits_vivit.py
"""
from configs import common


def get_config():
  config = common.experiment_config(
      seed=0, batch_size=64, eval_batch_size=64, num_train_steps=1200, optimizer='adamw',
      learning_rate=2e-3, lr_schedule='cosine', warmup_steps=100, weight_decay=0.05,
      grad_clip_norm=1.0, label_smoothing=0.1, loss='softmax_xent', log_every_steps=100,
      checkpoint_every_steps=400, keep_checkpoints=2,
      # Multi-view evaluation: a video's views are averaged ('logits' or 'probs') before metrics.
      eval_average='logits',
      model=common.model_config(name='vivit', variant='Mu/4', num_classes=40, num_tokens=0,
                                classifier='gap', tubelet_size=4),
      dataset=common.dataset_config(
          'moving_digits', directions=4, multi_label=False, train_split='train',
          eval_split='test', image_size=32, num_frames=8, stride=2, eval_clips=2, eval_crops=1,
          # Direction is the label: no flip, and no crop that could push the digit out of view.
          augment=False, random_flip=False, crop_min_area=1.0,
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  # Optional initialisation (token_learner.pretrained.init_from); path '' = from scratch.
  config.init_from.kind = 'checkpoint'
  return config
