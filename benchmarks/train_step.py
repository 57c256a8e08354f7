r"""Throughput of the jitted train step: compile time, steps/s and examples/s for a config.

  python -m benchmarks.train_step --config=configs/digits_tokenlearner.py --steps=50
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    python -m benchmarks.train_step --config=configs/digits_tokenlearner.py --num_devices=8 \
    --config.sharding=fsdp

The run is `setup.build`'s, as training builds it (the config's `sharding`, `mesh_shape` and
`sharding_rules`, its optimizer, donation), stepped on one synthetic batch of the config's input
shape (`Run.synthetic_batch`), so the input pipeline is not part of the number.
"""
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from token_learner import experiment
from token_learner.train import setup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 50, 'Timed steps (after one compile + warm-up step).')
flags.DEFINE_integer('num_devices', 0, 'Devices of the mesh (0: all).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  exp = experiment.from_config(FLAGS.config)
  run = setup.build(exp, devices=jax.devices()[:FLAGS.num_devices or None],
                    num_train_examples=10 ** 6)
  model_cfg, cfg = exp.model, run.cfg
  print(f'{model_cfg.name} {model_cfg.variant} tokens={model_cfg.tokenlearner.num_tokens} '
        f'sharding={cfg.sharding} mesh={dict(run.mesh.shape)} batch={cfg.batch_size} '
        f'dtype={model_cfg.dtype}', flush=True)
  state, batch = run.init_state(), run.synthetic_batch()

  start = time.perf_counter()
  state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  print(f'compile+first step {compile_s:.1f}s, {FLAGS.steps / elapsed:.2f} steps/s, '
        f'{FLAGS.steps * cfg.batch_size / elapsed:.0f} examples/s')


if __name__ == '__main__':
  app.run(main)
