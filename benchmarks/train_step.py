r"""Throughput of the jitted train step: compile time, steps/s and examples/s for a config.

  python benchmarks/train_step.py --config=configs/digits_tokenlearner.py --steps=50
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    python benchmarks/train_step.py --config=configs/digits_tokenlearner.py --num_devices=8

Runs `trainer.train_step` exactly as training does (same shardings, donation) on one synthetic
batch of the config's input shape, so the input pipeline is not part of the number.
"""
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 50, 'Timed steps (after one compile + warm-up step).')
flags.DEFINE_integer('num_devices', 0, 'Devices of the mesh (0: all).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  run = experiment.from_config(FLAGS.config)
  model_cfg = run.model
  devices = jax.devices()[:FLAGS.num_devices or None]
  mesh = sharding.create_mesh(devices, run.train.mesh_shape)
  cfg = run.train.for_run(num_train_examples=10 ** 6, num_devices=mesh.size)
  model = build_model(model_cfg)
  tx = optim.create_optimizer(cfg, optim.learning_rate_fn(cfg))
  init_rng, rng = sharding.replicated_keys(cfg.seed, mesh)
  state, shardings = sharding.create_train_state(init_rng, model, tx, model_cfg.input_shape,
                                                 mesh, sharding.rules_of(cfg))
  step = trainer.compile_train_step(model, tx, cfg, mesh, shardings)
  batch = {'inputs': jnp.zeros((cfg.batch_size, *model_cfg.input_shape), jnp.float32),
           'labels': jnp.zeros((cfg.batch_size,), jnp.int32)}
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))

  start = time.perf_counter()
  state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  print(f'{model_cfg.name} {model_cfg.variant} tokens={model_cfg.tokenlearner.num_tokens} '
        f'devices={mesh.size} batch={cfg.batch_size} dtype={model_cfg.dtype}: '
        f'compile+first step {compile_s:.1f}s, {FLAGS.steps / elapsed:.2f} steps/s, '
        f'{FLAGS.steps * cfg.batch_size / elapsed:.0f} examples/s')


if __name__ == '__main__':
  app.run(main)
