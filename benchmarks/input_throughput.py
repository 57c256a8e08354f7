r"""Input pipeline throughput vs what the train step consumes, in examples/s; prints the ratio.

  python -m benchmarks.input_throughput                    # both cases below
  python -m benchmarks.input_throughput --cases=jpeg --jpeg_variant=B/16 --jpeg_batch=8
  python -m benchmarks.input_throughput --input_batches=2 --step_steps=2 --jpeg_steps=1 \
    --warmup=1 --jpeg_images=8 --jpeg_batch=2 --jpeg_image_size=64   # a smoke run

Cases:
  digits: the default job (configs/digits_tokenlearner.py) as configured.
  jpeg: `image_folder` JPEGs (--jpeg_images of 320x256, written to a temporary folder) read at
    224x224 with the ImageNet config's augmentation (Inception crop decoded from the JPEG window,
    flip), and the step of configs/imagenet_tokenlearner.py's TokenLearner ViT at 224 with
    --jpeg_variant (default Ti/16: a B/16 step takes seconds on a CPU) and batch --jpeg_batch.

The input rate is that of the real train iterator (`data.train_iterator`: reading, decoding,
augmentation, batching; numpy batches on the host), after --warmup batches. The step rate is
that of the jitted train step alone on a batch already on device (as benchmarks/train_step.py:
`setup.build`'s run of the case's config with `--sharding`, on all devices).
They are measured one after the other, so on a CPU machine neither competes with the other for
cores. Target: input / step >= 2.
"""
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tensorflow as tf

from configs import digits_tokenlearner
from configs import imagenet_tokenlearner
from token_learner import data
from token_learner import experiment
from token_learner.train import setup

FLAGS = flags.FLAGS
flags.DEFINE_list('cases', ['digits', 'jpeg'], 'Which of: digits, jpeg.')
flags.DEFINE_integer('input_batches', 60, 'Timed input batches per case.')
flags.DEFINE_integer('step_steps', 20, 'Timed train steps of the digits case.')
flags.DEFINE_integer('jpeg_steps', 3, 'Timed train steps of the jpeg case.')
flags.DEFINE_integer('warmup', 5, 'Untimed batches / steps before the timed ones.')
flags.DEFINE_integer('jpeg_images', 192, 'JPEGs written (4 classes).')
flags.DEFINE_string('jpeg_variant', 'Ti/16', 'ViT variant of the jpeg case step.')
flags.DEFINE_integer('jpeg_batch', 8, 'Batch size of the jpeg case.')
flags.DEFINE_integer('jpeg_image_size', 224, 'Image side the jpeg case reads and steps at.')
flags.DEFINE_enum('sharding', 'replicated', ['replicated', 'fsdp', 'tp', 'fsdp_tp'],
                  'config.sharding of both cases.')


def _clock():
  return np.array([time.perf_counter(), time.process_time()])


def input_rate(exp) -> np.ndarray:
  """(wall, CPU) examples/s of the train iterator."""
  iterator = data.train_iterator(exp.data, seed=exp.train.seed, batch_size=exp.train.batch_size)
  for _ in range(FLAGS.warmup):
    next(iterator)
  start = _clock()
  for _ in range(FLAGS.input_batches):
    next(iterator)
  return FLAGS.input_batches * exp.train.batch_size / (_clock() - start)


def step_rate(run, steps: int) -> np.ndarray:
  """(wall, CPU) examples/s of the run's jitted train step on one device-resident batch."""
  state, batch = run.init_state(), run.synthetic_batch()
  for _ in range(min(FLAGS.warmup, 2)):
    state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready(metrics)
  start = _clock()
  for _ in range(steps):
    state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready((state, metrics))
  return steps * run.cfg.batch_size / (_clock() - start)


def write_jpegs(root: str, num_images: int, size=(256, 320)):
  """ROOT/{train,val}/class_<k>/*.jpg: smooth random images (JPEG-typical content) at `size`."""
  rng = np.random.default_rng(0)
  for split, count in (('train', num_images), ('val', 4)):
    for i in range(count):
      folder = os.path.join(root, split, f'class_{i % 4}')
      os.makedirs(folder, exist_ok=True)
      coarse = rng.uniform(0, 255, (size[0] // 16, size[1] // 16, 3)).astype(np.float32)
      image = tf.image.resize(coarse[None], size, method='bicubic')[0]
      image = image + rng.normal(0, 8, (*size, 3))  # Some texture.
      jpeg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
      tf.io.write_file(os.path.join(folder, f'{i:05d}.jpg'), jpeg)


def report(name: str, config, steps: int):
  config.sharding = FLAGS.sharding
  exp = experiment.from_config(config)
  run = setup.build(exp, num_train_examples=10 ** 6)
  name = name.format(model=exp.model, train=run.cfg, data=exp.data)
  inputs, consumed = input_rate(exp), step_rate(run, steps)
  print(f'{name}, sharding={run.cfg.sharding} mesh={dict(run.mesh.shape)}: input '
        f'{inputs[0]:.0f} examples/s ({inputs[1]:.0f} per CPU second), train step '
        f'{consumed[0]:.1f} examples/s; input / step = {inputs[0] / consumed[0]:.2f} '
        '(target >= 2)', flush=True)


def main(argv):
  del argv
  unknown = set(FLAGS.cases) - {'digits', 'jpeg'}
  if unknown:
    raise ValueError(f'--cases: unknown {sorted(unknown)}; use digits and/or jpeg')
  logging.set_verbosity(logging.WARNING)
  if 'digits' in FLAGS.cases:
    report('digits (default job: {model.variant}, batch {train.batch_size}, '
           '{data.image_size[0]}px, augment={data.augment})', digits_tokenlearner.get_config(),
           FLAGS.step_steps)
  if 'jpeg' in FLAGS.cases:
    with tempfile.TemporaryDirectory() as root:
      write_jpegs(root, FLAGS.jpeg_images)
      config = imagenet_tokenlearner.get_config()
      config.batch_size = FLAGS.jpeg_batch
      config.model.variant = FLAGS.jpeg_variant
      config.model.num_classes = 4
      config.dataset = imagenet_tokenlearner.common.dataset_config(
          'image_folder', root=root, train_split='train', eval_split='val',
          image_size=FLAGS.jpeg_image_size, crop_min_area=0.05, augment=True)
      report('jpeg (image_folder 320x256 JPEGs -> {data.image_size[0]}, Inception crop + flip; '
             'step: TL {model.variant} at {data.image_size[0]}, {model.tokenlearner.num_tokens} '
             'tokens at layer {model.tokenlearner.loc}, batch {train.batch_size})', config,
             FLAGS.jpeg_steps)


if __name__ == '__main__':
  app.run(main)
