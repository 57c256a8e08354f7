r"""AViD (§6.1.1, Table 11): the Charades model (configs/charades_tokenlearner.py) on 887 classes.

Single-label (softmax cross-entropy, label smoothing 0.2 as in B.3), reported as mean per-class
accuracy (token_learner.train.metrics.mean_per_class_accuracy, reported as
eval_mean_per_class_accuracy: config.mean_per_class_accuracy). B.3: batch 8 per core x 64 = 512,
100k steps (~125 epochs). Eval: 4 clips x 3 crops, logits averaged.

  python main.py --config=configs/avid_tokenlearner.py --workdir=/tmp/tl_avid \
    --config.dataset.file_pattern_train='/data/avid/train-*.tfrecord' \
    --config.dataset.file_pattern_eval='/data/avid/test-*.tfrecord' \
    --config.init_from.path=/data/vit_models/ViT-B_16.npz --config.init_from.inflation=central_frame

  python -m token_learner.flops --config=configs/avid_tokenlearner.py
"""
from configs import charades_tokenlearner


def get_config():
  return avid(charades_tokenlearner.get_config(), eval_short_side=224)


def avid(config, eval_short_side: int):
  """A Charades config turned into AViD's: 887 single-label classes, label smoothing 0.2, mean
  per-class accuracy, 4 clips x 3 crops at test (B.3)."""
  config.batch_size = 512
  config.loss = 'softmax_xent'
  config.label_smoothing = 0.2
  config.eval_average = 'logits'
  config.mean_per_class_accuracy = True
  config.model.num_classes = 887
  d = config.dataset
  d.name, d.multi_label = 'avid', False
  d.file_pattern_train = '/path/to/avid/train-*.tfrecord'
  d.file_pattern_eval = '/path/to/avid/test-*.tfrecord'
  d.eval_clips, d.eval_crops, d.eval_short_side = 4, 3, eval_short_side
  return config
