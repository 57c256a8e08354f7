r"""Compile time and compiled memory of the real train step for large models (nothing is run).

  python benchmarks/scale.py                      # both parts below
  python benchmarks/scale.py --part=compile --batch=8
  python benchmarks/scale.py --part=memory --frames=32 --video_batch=8

Part 'compile': ViT-L/16 "24+11" (35 layers, 16-TL at 12; Table 2) at 224x224, the train step of
configs/imagenet_tokenlearner.py (`trainer.compile_train_step`, its optimizer from
`token_learner.train.optim`), lowered and compiled for config.model.scan_layers False / True and
config.model.remat 'none' / 'full' / 'dots'. Prints the lower + compile time and the compiled
peak memory (XLA's `memory_analysis()`: temp + argument + output bytes; the donated state's
output aliases its argument, `alias` says how much) and the ratios to the unrolled, remat-free
step.

Part 'memory' (§5.2, Fig. 9): ViViT-L/16 with and without TokenLearner (16 tokens before layer
12) at frames x 224 x 224, the train step of configs/kinetics400_tokenlearner.py, compiled
peak memory of both and their ratio.

Parameters and state are abstract (`jax.eval_shape`), so nothing of the model's size is
allocated; compile times depend on the machine and on what else runs on it.
"""
import collections
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import trainer
from configs import imagenet_tokenlearner
from configs import kinetics400_tokenlearner
from token_learner import build_model
from token_learner import experiment
from token_learner.train import optim
from token_learner.train import sharding
# pylint: enable=g-import-not-at-top,wrong-import-position

_PART = flags.DEFINE_enum('part', 'all', ['all', 'compile', 'memory'], 'What to measure.')
_BATCH = flags.DEFINE_integer('batch', 8, "Global batch of the 'compile' part.")
_LAYOUTS = flags.DEFINE_list('layouts', 'unrolled/none,scan/none,scan/full,scan/dots,'
                             'unrolled/full,unrolled/dots',
                             "'compile' part: layout/remat pairs, in this order.")
_FRAMES = flags.DEFINE_integer('frames', 32, "Frames of the 'memory' part's clips.")
_VIDEO_BATCH = flags.DEFINE_integer('video_batch', 8, "Global batch of the 'memory' part.")
_VIDEO_SCAN = flags.DEFINE_bool('video_scan', False, "'memory' part: config.model.scan_layers "
                                '(False: the default layout).')
GIB = 2.0 ** 30


def compile_train_step(config):
  """(seconds to lower + compile, memory analysis) of the train step of `config` on 1 device."""
  run = experiment.from_config(config)
  mesh = sharding.create_mesh(jax.devices()[:1])
  cfg = run.train.for_run(num_train_examples=10 ** 6, num_devices=1)
  model = build_model(run.model)
  tx = optim.create_optimizer(cfg, optim.learning_rate_fn(cfg))
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  state, shardings = sharding.abstract_train_state(jax.random.key(0), model, tx,
                                                   run.model.input_shape, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {'inputs': jax.ShapeDtypeStruct((cfg.batch_size, *run.model.input_shape), jnp.float32,
                                          sharding=batch_sharding),
           'labels': jax.ShapeDtypeStruct((cfg.batch_size,), jnp.int32, sharding=batch_sharding)}
  step = trainer.compile_train_step(model, tx, cfg, mesh, shardings)
  start, cpu = time.perf_counter(), time.process_time()
  lowered = step.lower(state, batch, rng)
  lower_s = time.perf_counter() - start
  compiled = lowered.compile()
  times = Times(time.perf_counter() - start, lower_s, time.process_time() - cpu)
  return times, compiled.memory_analysis()


class Times(collections.namedtuple('Times', 'total lower cpu')):
  """Seconds: lower + compile (wall), of which lowering (tracing), and the process's CPU time
  (less sensitive than wall time to other jobs on the machine)."""

  def __str__(self):
    return (f'compile {self.total:6.1f} s wall (lower {self.lower:4.1f} s), '
            f'{self.cpu:6.1f} s CPU')


def peak(mem) -> float:
  return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


def describe(mem) -> str:
  return (f'peak {peak(mem) / GIB:.2f} GiB (temp {mem.temp_size_in_bytes / GIB:.2f} + argument '
          f'{mem.argument_size_in_bytes / GIB:.2f} + output {mem.output_size_in_bytes / GIB:.2f}'
          f'; alias {mem.alias_size_in_bytes / GIB:.2f})')


def compile_part():
  print(f'ViT-L/16 (24+11), 16-TL at 12, 224x224, batch {_BATCH.value}, train step of '
        'configs/imagenet_tokenlearner.py, 1 device', flush=True)
  # Warm-up: JAX's and XLA's one-time start-up costs go to none of the timed compiles.
  warmup = imagenet_tokenlearner.get_config()
  warmup.update_from_flattened_dict({'model.variant': 'Mu/4', 'model.num_layers': 1,
                                     'model.tokenlearner.loc': 1, 'dataset.image_size': 16})
  compile_train_step(warmup)
  base = None
  for entry in _LAYOUTS.value:
    layout, remat = entry.split('/')
    config = imagenet_tokenlearner.get_config()
    config.update_from_flattened_dict({
        'model.variant': 'L/16', 'model.num_layers': 35, 'model.tokenlearner.num_tokens': 16,
        'model.tokenlearner.loc': 12, 'dataset.image_size': 224, 'batch_size': _BATCH.value,
        'model.scan_layers': layout == 'scan', 'model.remat': remat})
    times, mem = compile_train_step(config)
    base = base or (times, peak(mem))
    print(f'  scan_layers={layout == "scan"!s:5} remat={remat:4}: {times} '
          f'({times.total / base[0].total:.2f}x wall, {times.cpu / base[0].cpu:.2f}x CPU), '
          f'{describe(mem)} ({peak(mem) / base[1]:.2f}x)', flush=True)


def memory_part():
  print(f'ViViT-L/16, {_FRAMES.value} frames x 224x224, batch {_VIDEO_BATCH.value}, train step of '
        f'configs/kinetics400_tokenlearner.py, scan_layers={_VIDEO_SCAN.value}, 1 device',
        flush=True)
  peaks = {}
  for tokens in (16, 0):
    config = kinetics400_tokenlearner.get_config()
    config.update_from_flattened_dict({
        'model.tokenlearner.num_tokens': tokens, 'dataset.num_frames': _FRAMES.value,
        'batch_size': _VIDEO_BATCH.value, 'eval_batch_size': _VIDEO_BATCH.value,
        'model.scan_layers': _VIDEO_SCAN.value})
    times, mem = compile_train_step(config)
    name = '16-TL at 12' if tokens else 'no TokenLearner'
    peaks[tokens] = (peak(mem), mem.temp_size_in_bytes)
    print(f'  {name:16}: {times}, {describe(mem)}', flush=True)
  print(f'  ratio TokenLearner / ViViT: {peaks[16][0] / peaks[0][0]:.3f} (temp + argument + '
        f'output), {peaks[16][1] / peaks[0][1]:.3f} (temp alone: activations and gradients)')


def main(argv):
  del argv
  if _PART.value in ('all', 'compile'):
    compile_part()
  if _PART.value in ('all', 'memory'):
    memory_part()


if __name__ == '__main__':
  app.run(main)
