r"""Pretraining ViT + TokenLearner at 224x224 on ImageNet-21k (the public stand-in for §3.1's JFT).

The TokenLearner is in place from the start (B/16, 8 tokens before layer 6, Fig. 3(a)), so the
fine-tuning runs (configs/imagenet_tokenlearner.py at 384 / 512, the video configs with tubelet
inflation) start from a checkpoint of the same architecture. Settings of the ViT paper's
ImageNet-21k pretraining (Dosovitskiy et al. 2021, Table 3 / B.1): 90 epochs, Adam(W), batch 4096,
learning rate 1e-3 with 10k warmup steps and linear decay, weight decay 0.03 (kernels only,
config.weight_decay_regex), gradient clipping at global norm 1, a pre-logits layer of the model
width (dropped again for fine-tuning). Softmax cross-entropy on the single TFDS label.

Data: TFDS 'imagenet21k' (ImageNet-21k, 21,843 classes of fall11_whole.tar from image-net.org),
built with `tfds build token_learner/data/imagenet21k --manual_dir=... --data_dir=...`
(docs/datasets.md); hold out the first 102,400 train
images (ViT's minival-like split) for evaluation. Launch:

  python main.py --config=configs/imagenet21k_tokenlearner.py --workdir=/tmp/tl_i21k \
    --config.dataset.data_dir=/data/tensorflow_datasets

Its checkpoint then initialises the fine-tuning, e.g. at 384 on ImageNet-1k:

  python main.py --config=configs/imagenet_tokenlearner.py --workdir=/tmp/tl_i21k_to_in1k \
    --config.init_from.path=/tmp/tl_i21k --config.init_from.kind=checkpoint

  python -m token_learner.flops --config=configs/imagenet21k_tokenlearner.py
"""
from configs import common

IMAGENET21K_TRAIN_SIZE = 13_000_000  # images in TFDS imagenet21k 'train' (approx.)
HELD_OUT = 102_400


def get_config():
  batch_size = 4096
  return common.experiment_config(
      batch_size=batch_size, eval_batch_size=1024,
      num_train_steps=90 * (IMAGENET21K_TRAIN_SIZE - HELD_OUT) // batch_size,
      optimizer='adamw', learning_rate=1e-3, lr_schedule='linear', warmup_steps=10_000,
      weight_decay=0.03, grad_clip_norm=1.0, log_every_steps=100, evals={'eval': common.eval_config(every_steps=10_000)},
      checkpoint_every_steps=2_000,
      # Mixed precision (the precision policy, token_learner/model_config.py): bfloat16 activations,
      # float32 parameters, optimizer state, logits and losses. The paper does not state its
      # precision; bfloat16 is how ViT / ViViT models are trained on TPUs (and GPUs).
      model=common.model_config(name='vit', variant='B/16', num_classes=21_843, num_tokens=8,
                                loc=6, version='v1', fuser=False, representation_size=768,
                                dropout_rate=0.1, dtype='bfloat16'),
      dataset=common.dataset_config(
          'imagenet21k', train_split=f'train[{HELD_OUT}:]', eval_split=f'train[:{HELD_OUT}]',
          image_size=224, crop_min_area=0.05, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
          augment=True, shuffle_buffer=250_000))
