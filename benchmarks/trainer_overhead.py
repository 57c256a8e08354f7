r"""Overhead of the training loop: steady-state step time of `train_and_evaluate` / a bare loop.

  python -m benchmarks.trainer_overhead  # the default job, 300 steps, checkpoints every 100
  python -m benchmarks.trainer_overhead --config=configs/digits_vit.py --steps=600 --repeats=3
  python -m benchmarks.trainer_overhead --steps=4 --warmup=1 --checkpoint_every=0 \
    --config.model.num_layers=1 --config.warmup_steps=1   # a smoke run

The trainer run is the real `train_and_evaluate` (token_learner.train.loop; its `build` seam
wraps the run's train step to time its dispatches, its `train_input` seam feeds the batches read
ahead; prefetching input thread, metrics read
one step late, log lines every `log_every_steps`, a checkpoint every --checkpoint_every steps;
no evaluation before the final one, which is not timed): its step time is the interval between
the dispatches of step --warmup and of the last step, over the steps between. The bare loop
calls the same jitted step (same config, shardings, donation) on the same batches, already on
device, and blocks only at both ends; it is `setup.build`'s run of the same config (so the same
`config.sharding`, `mesh_shape` and `sharding_rules`) on all devices, as the trainer's. A third run is the trainer fed the same batches as numpy
arrays read beforehand ('trainer, input read ahead'): the loop's own overhead without the cost
of the tf.data pipeline. The three alternate --repeats times; the ratios of the fastest of each
to the bare loop are printed (target: <= 1.05).

Both are timed in wall seconds and in CPU seconds of this process (all its threads). On an
accelerator the wall ratio is the one that matters; on a CPU machine shared with other jobs the
CPU-time ratio is the steadier one (other processes do not inflate it), and it counts the host
work of the trainer (input threads, checkpoint writes) that competes with the CPU "device".
"""
import dataclasses
import os
import tempfile
import time

from absl import app
from absl import logging
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from token_learner import data
from token_learner import experiment
from token_learner.train import loop
from token_learner.train import setup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
    'digits_tokenlearner.py'), 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 300, 'Train steps of each run.')
flags.DEFINE_integer('warmup', 20, 'Steps before the timed ones (compilation, queues filling).')
flags.DEFINE_integer('checkpoint_every', 100, 'config.checkpoint_every_steps of the trainer.')
flags.DEFINE_integer('repeats', 1, 'Rounds of the three runs.')


def _check_flags():
  if FLAGS.steps < 2 or not 1 <= FLAGS.warmup < FLAGS.steps:
    raise ValueError(f'--warmup={FLAGS.warmup} must be >= 1 and below --steps={FLAGS.steps}')
  if FLAGS.checkpoint_every < 0 or FLAGS.repeats < 1:
    raise ValueError('--checkpoint_every must be >= 0 and --repeats >= 1')


def _config():
  config = FLAGS.config
  config.num_train_steps = FLAGS.steps
  config.num_epochs = None
  config.checkpoint_every_steps = FLAGS.checkpoint_every
  for name in config.evals:  # Only the final evaluation, which is not timed.
    config.evals[name].every_steps = 0
  return config


def _clocks():
  return np.array([time.perf_counter(), time.process_time()])


def trainer_step_time(config, host_batches=None) -> np.ndarray:
  """Mean (wall, CPU) seconds per step of train_and_evaluate between the dispatches of steps
  --warmup and --steps; with `host_batches` (numpy) as its train input if given."""
  dispatch_times = []

  def timed_build(*args, **kwargs):
    run = setup.build(*args, **kwargs)
    jitted = run.train_step

    def step(*step_args):
      dispatch_times.append(_clocks())
      return jitted(*step_args)
    step.lower = jitted.lower  # The throughput meter lowers it to count its FLOPs.
    return dataclasses.replace(run, train_step=step)

  train_input = data.train_iterator
  if host_batches is not None:
    train_input = lambda *args, start_step=0, **kwargs: iter(host_batches[start_step:])
  with tempfile.TemporaryDirectory() as workdir:
    loop.train_and_evaluate(config, workdir, build=timed_build, train_input=train_input)
  times = dispatch_times[FLAGS.warmup - 1:]
  return (times[-1] - times[0]) / (len(times) - 1)


def bare_step_time(run, batches) -> np.ndarray:
  """Mean (wall, CPU) seconds per step of the run's jitted step alone over the same steps."""
  state = run.init_state()
  for batch in batches[:FLAGS.warmup]:
    state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready(metrics)
  start = _clocks()
  for batch in batches[FLAGS.warmup:]:
    state, metrics = run.train_step(state, batch, run.dropout_rng)
  jax.block_until_ready((state, metrics))
  return (_clocks() - start) / (len(batches) - FLAGS.warmup)


def main(argv):
  del argv
  _check_flags()
  logging.set_verbosity(logging.WARNING)  # The trainer's setup lines would bury the results.
  config = _config()
  exp = experiment.from_config(config)
  run = setup.build(exp, num_train_examples=10 ** 6)  # All devices, as the trainer's run.
  iterator = data.train_iterator(exp.data, seed=run.cfg.seed, batch_size=run.cfg.batch_size)
  host_batches = [next(iterator) for _ in range(FLAGS.steps)]
  batches = [data.make_global_batch(b, run.batch_sharding) for b in host_batches]
  print(f'{exp.model.name} {exp.model.variant} batch={run.cfg.batch_size} sharding='
        f'{run.cfg.sharding} mesh={dict(run.mesh.shape)} steps={FLAGS.steps} (timed '
        f'{FLAGS.steps - FLAGS.warmup}) checkpoint_every={FLAGS.checkpoint_every}', flush=True)
  results = {'trainer': [], 'trainer, input read ahead': [], 'bare loop': []}
  for repeat in range(FLAGS.repeats):
    results['trainer'].append(trainer_step_time(config))
    results['trainer, input read ahead'].append(trainer_step_time(config, host_batches))
    results['bare loop'].append(bare_step_time(run, batches))
    print(f'repeat {repeat}: {_line({k: v[-1] for k, v in results.items()})}', flush=True)
  print(f'fastest of {FLAGS.repeats}:')
  print(_line({k: np.min(v, axis=0) for k, v in results.items()}) + ' (target <= 1.05)')


def _line(times) -> str:
  """ms/step (wall and CPU) of each run, and each trainer run's ratios to the bare loop."""
  bare = times['bare loop']
  return '; '.join(
      f'{name} {t[0] * 1e3:.2f} ms/step ({t[1] * 1e3:.2f} CPU ms)' +
      ('' if name == 'bare loop' else f' = x{t[0] / bare[0]:.3f} wall, x{t[1] / bare[1]:.3f} CPU')
      for name, t in times.items())


if __name__ == '__main__':
  app.run(main)
