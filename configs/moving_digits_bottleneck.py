r"""Offline smoke job for the §6 model: a tiny X(2+1)D + TokenLearner bottleneck on multi-label
moving_digits.

Data: moving_digits with 2 digits per video (`digits_per_video=2`), each sliding left or right
(`directions=2`); labels = the set of (digit, direction) classes (20, multi-hot), sigmoid
cross-entropy, mAP over the 720 test videos (2 clips each, probabilities averaged). 8 frames
(stride 2) at 32x32. Chance mAP is about 0.11 (1.9 positives of 20 per video).

Model: a micro X(2+1)D (stem 8, widths 8/16/24/32, depths 1/1/1/2, expansion 2 -> d = 64 in the
last stage, conv5 64, head 128; spatial strides 2,1,2,1,1 so res5 sees 8 x 8 x 8) whose last
stage is Conv2D + TokenLearner (8 tokens per frame: 64 tokens) -> Vector Transformer ->
TokenFuser. The Conv1D baseline is the same backbone with its own (2+1)D pair.

Recipe: AdamW 3e-3, 30 warmup steps, cosine; the head's bias starts at -2.2 = log(p / (1 - p)),
p = 0.1 the label prior (without it both models sat at the marginal loss for the whole run).
Measured results, and the runs that chose this recipe: BENCHMARKS.md, "§6 bottleneck".

  python main.py --config=configs/moving_digits_bottleneck.py --workdir=/tmp/md_bn
  python main.py --config=configs/moving_digits_bottleneck.py --workdir=/tmp/md_bn_conv1d \
      --config.model.bottleneck.module=conv2d_conv1d
  python -m token_learner.flops --config=configs/moving_digits_bottleneck.py --module=all \
      --module_shape=8,8,8,64
"""
from configs import common


def get_config():
  model = common.model_config(name='bottleneck', num_classes=20, classifier='gap',
                              head_bias_init=-2.2)
  bn = model.bottleneck
  bn.stem_width, bn.widths, bn.depths, bn.expansion = 8, (8, 16, 24, 32), (1, 1, 1, 2), 2.0
  bn.conv5_width, bn.head_width, bn.strides = 64, 128, (2, 1, 2, 1, 1)
  bn.stem_temporal_kernel, bn.norm_groups, bn.head_dropout = 5, 8, 0.0
  bn.module, bn.num_tokens, bn.transformer, bn.num_heads = 'conv2d_tokenlearner', 8, 'vector', 4
  bn.fuser_mlp_dim = 32
  config = common.experiment_config(
      seed=0, batch_size=16, eval_batch_size=64, num_train_steps=1000, optimizer='adamw',
      learning_rate=3e-3, lr_schedule='cosine', warmup_steps=30, weight_decay=0.05,
      grad_clip_norm=1.0, label_smoothing=0.0, loss='sigmoid_xent', log_every_steps=50,
      checkpoint_every_steps=0, keep_checkpoints=1, eval_average='probs',
      model=model,
      dataset=common.dataset_config(
          'moving_digits', directions=2, digits_per_video=2, multi_label=True,
          train_split='train', eval_split='test', image_size=32, num_frames=8, stride=2,
          eval_clips=2, eval_crops=1, augment=False, random_flip=False, crop_min_area=1.0,
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  config.init_from.kind = 'checkpoint'
  return config
