r"""Compile time and compiled memory of the real train step for large models (nothing is run).

  python -m benchmarks.scale                      # both parts below
  python -m benchmarks.scale --part=compile --batch=8
  python -m benchmarks.scale --part=memory --frames=32 --video_batch=8
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    python -m benchmarks.scale --sharding=fsdp --num_devices=8   # per-device memory
  python -m benchmarks.scale --part=attention --attention_rows=einsum/float32/unrolled/none,\
    auto/bfloat16/unrolled/none,xla/bfloat16/unrolled/none,auto/bfloat16/scan/full
  python -m benchmarks.scale --variant=Mu/4 --depth=2 --loc=1 --image_size=32 --frames=2 \
    --batch=2 --video_batch=2 --layouts=unrolled/none,scan/full   # a smoke run

Part 'compile': ViT-L/16 "24+11" (35 layers, 16-TL at 12; Table 2) at 224x224, the train step of
configs/imagenet_tokenlearner.py as `token_learner.train.setup.build` builds it (its optimizer,
`--sharding` over `--num_devices`), lowered on the abstract state (`Run.abstract_state`) and
compiled for config.model.scan_layers False / True and config.model.remat 'none' / 'full' /
'dots'. Prints the lower + compile time and the compiled peak memory (XLA's `memory_analysis()`:
temp + argument + output bytes, per device; the donated state's output aliases its argument,
`alias` says how much) and the ratios to the unrolled, remat-free step.

Part 'memory' (§5.2, Fig. 9): ViViT-L/16 with and without TokenLearner (16 tokens before layer
12) at frames x 224 x 224, the train step of configs/kinetics400_tokenlearner.py, compiled
peak memory of both and their ratio.

Part 'attention' (issue 18): the ViViT-L/16 + 16-TL at 12 train step of the 'memory' part (its
batch, frames and size) under the precision policy and attention levers, one row per
`--attention_rows` entry `implementation/dtype/layout/remat` (e.g. auto/bfloat16/scan/full).
On the CPU 'auto' trains with 'einsum'; 'cudnn' and 'pallas' (the flash kernels) only compile on
a GPU / TPU backend, where a row names them.

Parameters and state are abstract (`jax.eval_shape`), so nothing of the model's size is
allocated; compile times depend on the machine and on what else runs on it.
"""
import collections
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from configs import imagenet_tokenlearner
from configs import kinetics400_tokenlearner
from token_learner import experiment
from token_learner.train import setup

_PART = flags.DEFINE_enum('part', 'all', ['all', 'compile', 'memory', 'attention'],
                          "What to measure ('all': compile and memory).")
_BATCH = flags.DEFINE_integer('batch', 8, "Global batch of the 'compile' part.")
_LAYOUTS = flags.DEFINE_list('layouts', 'unrolled/none,scan/none,scan/full,scan/dots,'
                             'unrolled/full,unrolled/dots',
                             "'compile' part: layout/remat pairs, in this order.")
_FRAMES = flags.DEFINE_integer('frames', 32, "Frames of the 'memory' part's clips.")
_VIDEO_BATCH = flags.DEFINE_integer('video_batch', 8, "Global batch of the 'memory' part.")
_VIDEO_SCAN = flags.DEFINE_bool('video_scan', False, "'memory' part: config.model.scan_layers "
                                '(False: the default layout).')
_ATTENTION_ROWS = flags.DEFINE_list(
    'attention_rows', 'einsum/float32/unrolled/none,auto/bfloat16/unrolled/none,'
    'xla/bfloat16/unrolled/none,auto/bfloat16/scan/full,auto/bfloat16/scan/dots',
    "'attention' part: implementation/dtype/layout/remat rows, in this order.")
_VARIANT = flags.DEFINE_string('variant', 'L/16', 'Model variant of both parts.')
_DEPTH = flags.DEFINE_integer('depth', 0, "Layers (0: the paper's, 35 = 24+11 for 'compile', "
                              "the variant's for 'memory').")
_LOC = flags.DEFINE_integer('loc', 12, 'Layer the TokenLearner precedes (both parts).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Image / frame side (both parts).')
_SHARDING = flags.DEFINE_enum('sharding', 'replicated', ['replicated', 'fsdp', 'tp', 'fsdp_tp'],
                              'config.sharding of both parts.')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 1, 'Devices of the mesh (0: all).')
GIB = 2.0 ** 30


def _devices():
  return jax.devices()[:_NUM_DEVICES.value or None]


def _topology() -> str:
  return f'sharding={_SHARDING.value}, {len(_devices())} device(s)'


def compile_train_step(config):
  """(seconds to lower + compile, memory analysis) of the train step of `config`."""
  config.sharding = _SHARDING.value
  run = setup.build(experiment.from_config(config), devices=_devices(),
                    num_train_examples=10 ** 6)
  b, shape = run.cfg.batch_size, run.input_shape
  labels = ((b, run.cfg.num_classes), jnp.float32) if run.cfg.multi_label else ((b,), jnp.int32)
  batch = {'inputs': jax.ShapeDtypeStruct((b, *shape), jnp.uint8, sharding=run.batch_sharding),
           'labels': jax.ShapeDtypeStruct(*labels, sharding=run.batch_sharding)}
  start, cpu = time.perf_counter(), time.process_time()
  lowered = run.train_step.lower(run.abstract_state, batch, run.dropout_rng)
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
  depth = _DEPTH.value or 35
  print(f'ViT-{_VARIANT.value} ({depth} layers), 16-TL at {_LOC.value}, {_IMAGE_SIZE.value}px, '
        f'batch {_BATCH.value}, train step of configs/imagenet_tokenlearner.py, {_topology()}',
        flush=True)
  # Warm-up: JAX's and XLA's one-time start-up costs go to none of the timed compiles.
  warmup = imagenet_tokenlearner.get_config()
  warmup.update_from_flattened_dict({'model.variant': 'Mu/4', 'model.num_layers': 1,
                                     'model.tokenlearner.loc': 1, 'dataset.image_size': 16,
                                     'batch_size': len(_devices()),
                                     'eval_batch_size': len(_devices())})
  compile_train_step(warmup)
  base = None
  for entry in _LAYOUTS.value:
    layout, remat = entry.split('/')
    config = imagenet_tokenlearner.get_config()
    config.update_from_flattened_dict({
        'model.variant': _VARIANT.value, 'model.num_layers': depth,
        'model.tokenlearner.num_tokens': 16, 'model.tokenlearner.loc': _LOC.value,
        'dataset.image_size': _IMAGE_SIZE.value, 'batch_size': _BATCH.value,
        'model.scan_layers': layout == 'scan', 'model.remat': remat})
    times, mem = compile_train_step(config)
    base = base or (times, peak(mem))
    print(f'  scan_layers={layout == "scan"!s:5} remat={remat:4}: {times} '
          f'({times.total / base[0].total:.2f}x wall, {times.cpu / base[0].cpu:.2f}x CPU), '
          f'{describe(mem)} ({peak(mem) / base[1]:.2f}x)', flush=True)


def memory_part():
  print(f'ViViT-{_VARIANT.value}, {_FRAMES.value} frames x {_IMAGE_SIZE.value}px, batch '
        f'{_VIDEO_BATCH.value}, train step of configs/kinetics400_tokenlearner.py, '
        f'scan_layers={_VIDEO_SCAN.value}, {_topology()}', flush=True)
  peaks = {}
  for tokens in (16, 0):
    config = kinetics400_tokenlearner.get_config()
    overrides = {
        'model.variant': _VARIANT.value, 'model.tokenlearner.num_tokens': tokens,
        'model.tokenlearner.loc': _LOC.value, 'dataset.num_frames': _FRAMES.value,
        'dataset.image_size': _IMAGE_SIZE.value, 'batch_size': _VIDEO_BATCH.value,
        'eval_batch_size': _VIDEO_BATCH.value, 'model.scan_layers': _VIDEO_SCAN.value}
    if _DEPTH.value:
      overrides['model.num_layers'] = _DEPTH.value
    config.update_from_flattened_dict(overrides)
    times, mem = compile_train_step(config)
    name = f'16-TL at {_LOC.value}' if tokens else 'no TokenLearner'
    peaks[tokens] = (peak(mem), mem.temp_size_in_bytes)
    print(f'  {name:16}: {times}, {describe(mem)}', flush=True)
  print(f'  ratio TokenLearner / ViViT: {peaks[16][0] / peaks[0][0]:.3f} (temp + argument + '
        f'output), {peaks[16][1] / peaks[0][1]:.3f} (temp alone: activations and gradients)')


def _video_config(tokens, **overrides):
  """configs/kinetics400_tokenlearner.py with the 'memory' part's flags and `overrides`."""
  config = kinetics400_tokenlearner.get_config()
  flat = {
      'model.variant': _VARIANT.value, 'model.tokenlearner.num_tokens': tokens,
      'model.tokenlearner.loc': _LOC.value, 'dataset.num_frames': _FRAMES.value,
      'dataset.image_size': _IMAGE_SIZE.value, 'batch_size': _VIDEO_BATCH.value,
      'eval_batch_size': _VIDEO_BATCH.value, **overrides}
  if _DEPTH.value:
    flat['model.num_layers'] = _DEPTH.value
  config.update_from_flattened_dict(flat)
  return config


def attention_part():
  print(f'ViViT-{_VARIANT.value} + 16-TL at {_LOC.value}, {_FRAMES.value} frames x '
        f'{_IMAGE_SIZE.value}px, batch {_VIDEO_BATCH.value}, train step of '
        f'configs/kinetics400_tokenlearner.py, backend {jax.default_backend()}, {_topology()}',
        flush=True)
  base = None
  for entry in _ATTENTION_ROWS.value:
    impl, dtype, layout, remat = entry.split('/')
    config = _video_config(16, **{'model.attention_implementation': impl, 'model.dtype': dtype,
                                  'model.scan_layers': layout == 'scan', 'model.remat': remat})
    try:
      times, mem = compile_train_step(config)
    except Exception as e:  # pylint: disable=broad-except  # e.g. a GPU / TPU kernel on the CPU.
      print(f'  {entry:28}: does not compile on {jax.default_backend()}: '
            f'{str(e).splitlines()[0][:160]}', flush=True)
      continue
    base = base or peak(mem)
    print(f'  {entry:28}: {times}, {describe(mem)} ({peak(mem) / base:.3f}x)', flush=True)


def main(argv):
  del argv
  if _PART.value in ('all', 'compile'):
    compile_part()
  if _PART.value in ('all', 'memory'):
    memory_part()
  if _PART.value == 'attention':
    attention_part()


if __name__ == '__main__':
  app.run(main)
