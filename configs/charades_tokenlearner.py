r"""Charades (§6.1.1, Table 10): ViViT-B/16 + TokenLearner (8 tokens) + TokenFuser, 64-frame clips.

Multi-label: 157 classes, any number per video, sigmoid cross-entropy, mAP ("v1 classification",
token_learner.train.metrics.mean_average_precision, as the official devkit: videos without labels
rank last in every class, classes without positives are skipped). 64 frames (12 fps, §6.1.1)
at 224x224, tubelets 2x16x16 -> 32 x 14 x 14 tokens; from layer 6 on, every layer is TokenLearner (8 tokens per temporal
slice: 256 tokens) -> Transformer block -> TokenFuser (Fig. 3(b), Fig. 8). Test views: 64-frame
segments spread over the video, their responses merged (B.3) -- here 4 clips, probabilities
averaged; test frames resized to 256 on the short side, centre crop 224 (§6.1.1 tests at 256).

The paper's Charades backbone is X(2+1)D (§6.1.1); this config puts the same TokenLearner setting
(S = 8, 64 frames, fuser) into the project's ViViT. Schedule from B.3: cosine decay, batch 256,
100k steps, no label smoothing; the optimizer and rate are ViViT's fine-tuning ones (§5.2).

Data: DMVR-style TFRecords (JPEG frames in 'image/encoded', label ids in 'clip/label/index');
Charades cannot be downloaded here, set the file patterns:

  python main.py --config=configs/charades_tokenlearner.py --workdir=/tmp/tl_charades \
    --config.dataset.file_pattern_train='/data/charades/train-*.tfrecord' \
    --config.dataset.file_pattern_eval='/data/charades/test-*.tfrecord' \
    --config.init_from.path=/data/ViT-B_16.npz --config.init_from.inflation=central_frame

init_from: an image checkpoint (a public ViT `.npz` or this project's ImageNet-21k run with
`--config.init_from.kind=checkpoint`), its patch kernel inflated to 2x16x16 tubelets
('central_frame' or 'average', ViViT's 3D init) and its position embedding tiled over time.

  python -m token_learner.flops --config=configs/charades_tokenlearner.py
"""
from configs import common


def get_config():
  config = common.experiment_config(
      seed=0, batch_size=256, eval_batch_size=32, num_train_steps=100_000, optimizer='momentum',
      momentum=0.9, learning_rate=0.05, lr_schedule='cosine', warmup_steps=2_500,
      weight_decay=0.0, grad_clip_norm=1.0, label_smoothing=0.0, loss='sigmoid_xent',
      log_every_steps=100, evals={'eval': common.eval_config(every_steps=5_000)}, checkpoint_every_steps=1_000,
      keep_checkpoints=3,
      eval_average='probs',  # sigmoid probabilities of the segments, averaged per video
      # Mixed precision (the precision policy, token_learner/model_config.py): bfloat16 activations,
      # float32 parameters, optimizer state, logits and losses. The paper does not state its
      # precision; bfloat16 is how ViT / ViViT models are trained on TPUs (and GPUs).
      model=common.model_config(name='vivit', variant='B/16', num_classes=157, num_tokens=8,
                                loc=6, version='v1', fuser=True, tubelet_size=2,
                                stochastic_depth=0.1, dtype='bfloat16'),
      dataset=common.dataset_config(
          'charades', multi_label=True,
          file_pattern_train='/path/to/charades/train-*.tfrecord',
          file_pattern_eval='/path/to/charades/test-*.tfrecord',
          frames_key='image/encoded', label_key='clip/label/index',
          image_size=224, num_frames=64, stride=1, eval_clips=4, eval_crops=1,
          eval_short_side=256, augment=True, crop_min_area=0.3, random_flip=True,
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  config.init_from.kind = 'vit_npz'
  return config
