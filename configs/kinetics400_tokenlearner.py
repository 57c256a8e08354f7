r"""Kinetics-400: ViViT-L/16 + 16 TokenLearner tokens per frame at layer 12 (§5, Table 7).

32 frames at 224x224, tubelet 2x16x16 (16 x 14 x 14 = 3136 tokens before the TokenLearner, 16 x 16 =
256 after), §5.2 settings: 30 epochs, Momentum optimizer, base learning rate 0.05, cosine decay.
Kinetics is read from DMVR-style TFRecords written by prepare_video_data.py (docs/datasets.md;
set the file patterns). Kinetics-600: the same with --config.model.num_classes=600.

  python main.py --config=configs/kinetics400_tokenlearner.py --workdir=/tmp/tl_k400 \
    --config.dataset.file_pattern_train='/data/kinetics400/train-*.tfrecord' \
    --config.dataset.file_pattern_eval='/data/kinetics400/validate-*.tfrecord' \
    --config.init_from.path=/data/vit_models/ViT-L_16.npz --config.init_from.inflation=central_frame

init_from (§5.2): an image ViT-L/16 (a public `.npz`, or this project's image pretraining with
`--config.init_from.kind=checkpoint`); the patch kernel is inflated to 2x16x16 tubelets, the
position embedding resampled to 14x14 and tiled over the 16 temporal slices.

  python -m token_learner.flops --config=configs/kinetics400_tokenlearner.py   # 766 GFLOPs / view
"""
from configs import common

KINETICS400_TRAIN_SIZE = 215_000  # clips available in the common DMVR release (approx.)


def get_config():
  batch_size = 64
  return common.experiment_config(
      batch_size=batch_size, eval_batch_size=batch_size, optimizer='momentum', momentum=0.9,
      learning_rate=0.05, lr_schedule='cosine', label_smoothing=0.1, grad_clip_norm=1.0,
      num_train_steps=30 * KINETICS400_TRAIN_SIZE // batch_size,
      warmup_steps=int(2.5 * KINETICS400_TRAIN_SIZE // batch_size), log_every_steps=100,
      evals={'eval': common.eval_config(every_steps=5000)}, checkpoint_every_steps=1000,
      # Mixed precision (the precision policy, token_learner/model_config.py): bfloat16 activations,
      # float32 parameters, optimizer state, logits and losses. The paper does not state its
      # precision; bfloat16 is how ViT / ViViT models are trained on TPUs (and GPUs).
      model=common.model_config(name='vivit', variant='L/16', num_classes=400, num_tokens=16,
                                loc=12, version='v1', fuser=False, tubelet_size=2,
                                stochastic_depth=0.1, dtype='bfloat16'),
      dataset=common.dataset_config(
          'kinetics400', file_pattern_train='/path/to/kinetics400/train-*.tfrecord',
          file_pattern_eval='/path/to/kinetics400/validate-*.tfrecord', frames_key='image/encoded',
          label_key='clip/label/index', multi_label=False, num_frames=32, stride=2,
          # Eval views (ViViT / Scenic): short side 256, then 4 clips x 3 crops of 224.
          image_size=224, eval_clips=4, eval_crops=3, eval_short_side=256, mean=(0.5, 0.5, 0.5),
          std=(0.5, 0.5, 0.5), augment=True))
