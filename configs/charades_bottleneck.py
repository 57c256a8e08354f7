r"""Charades (§6, Table 10): X(2+1)D-M + Conv2D + TokenLearner bottleneck (the 66.3 mAP model).

Model (token_learner/bottleneck.py): X(2+1)D-M (X3D-M widths and depths, every 3D conv a 1x3x3 +
3x1x1 pair, no squeeze-excitation, ReLU, GroupNorm), and in res5 every residual module's temporal
conv replaced by TokenLearner (alpha = one conv2d, S = 8 tokens per frame) -> Vector Transformer
(Eq. 3) -> TokenFuser after the 3x3 conv2d ('conv2d_tokenlearner', Fig. 9), d = 432. 64 frames at
224x224 (res5: 64 x 7 x 7; 64 x 8 x 8 at 256) -> 512 tokens per module.

Data: 12 fps (the better setting of §6.1.1: decode the videos at 12 fps when writing the
TFRecords; stride 1 here), 64-frame training clips at 224 with random crop + flip; multi-label,
157 classes, sigmoid cross-entropy, mAP over whole videos (v1 classification): each test video
is 6 64-frame segments spread over it (~30 s at 12 fps = 360 frames), probabilities averaged.
Test frames: short side 256, centre crop 224 (the data layer crops eval views to image_size; the
paper's 256x256 testing would need a separate eval crop size -- the model itself is fully
convolutional and takes 256).

Schedule (B.3): cosine decay, 100k steps, batch 4 per core x 64 = 256, base rate 0.8 (the paper
quotes it "per TPU core"; taken as the run's rate), no label smoothing, momentum SGD (X3D's
optimizer; weight decay 5e-5 and the warmup are X3D's, not in the paper). From scratch (no
pre-training, Table 10). Memory: the 512 x 512 x 432 attention tensor per clip is chunked
(`query_chunk=128`: a quarter of it live at a time).

  python main.py --config=configs/charades_bottleneck.py --workdir=/tmp/bn_charades \
    --config.dataset.file_pattern_train='/data/charades/train-*.tfrecord' \
    --config.dataset.file_pattern_eval='/data/charades/test-*.tfrecord'

  python -m token_learner.flops --config=configs/charades_bottleneck.py --module=all
  # Table 12 / 13 variants: --config.model.bottleneck.module=conv2d_conv1d (the backbone), ...
"""
from configs import common


def get_config():
  # Mixed precision (the precision policy, token_learner/model_config.py): bfloat16 activations,
  # float32 parameters, optimizer state, logits and losses; the paper does not state its
  # precision, bfloat16 is the accelerators' training dtype.
  model = common.model_config(name='bottleneck', num_classes=157, classifier='gap',
                              dtype='bfloat16')
  model.bottleneck.module = 'conv2d_tokenlearner'
  model.bottleneck.num_tokens = 8
  model.bottleneck.transformer = 'vector'
  model.bottleneck.query_chunk = 128
  config = common.experiment_config(
      seed=0, batch_size=256, eval_batch_size=32, num_train_steps=100_000, optimizer='momentum',
      momentum=0.9, learning_rate=0.8, lr_schedule='cosine', warmup_steps=2_000,
      weight_decay=5e-5, grad_clip_norm=0.0, label_smoothing=0.0, loss='sigmoid_xent',
      log_every_steps=100, evals={'eval': common.eval_config(every_steps=10_000)}, checkpoint_every_steps=1_000,
      keep_checkpoints=3, eval_average='probs', model=model,
      dataset=common.dataset_config(
          'charades', multi_label=True,
          file_pattern_train='/path/to/charades/train-*.tfrecord',
          file_pattern_eval='/path/to/charades/test-*.tfrecord',
          frames_key='image/encoded', label_key='clip/label/index',
          image_size=224, num_frames=64, stride=1, eval_clips=6, eval_crops=1,
          eval_short_side=256, augment=True, crop_min_area=0.3, random_flip=True,
          mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225)))
  return config
