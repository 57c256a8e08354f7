r"""Overhead of the training loop: steady-state step time of `train_and_evaluate` / a bare loop.

  python benchmarks/trainer_overhead.py  # the default job, 300 steps, checkpoints every 100
  python benchmarks/trainer_overhead.py --config=configs/digits_vit.py --steps=600 --repeats=3

The trainer run is the real `trainer.train_and_evaluate` (prefetching input thread, metrics read
one step late, log lines every `log_every_steps`, a checkpoint every --checkpoint_every steps;
no evaluation before the final one, which is not timed): its step time is the interval between
the dispatches of step --warmup and of the last step, over the steps between. The bare loop
calls the same jitted step (same config, shardings, donation) on the same batches, already on
device, and blocks only at both ends. A third run is the trainer fed the same batches as numpy
arrays read beforehand ('trainer, input read ahead'): the loop's own overhead without the cost
of the tf.data pipeline. The three alternate --repeats times; the ratios of the fastest of each
to the bare loop are printed (target: <= 1.05).

Both are timed in wall seconds and in CPU seconds of this process (all its threads). On an
accelerator the wall ratio is the one that matters; on a CPU machine shared with other jobs the
CPU-time ratio is the steadier one (other processes do not inflate it), and it counts the host
work of the trainer (input threads, checkpoint writes) that competes with the CPU "device".
"""
import os
import sys
import tempfile
import time

from absl import app
from absl import logging
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jitted_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

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
  config.eval_every_steps = 0
  config.checkpoint_every_steps = FLAGS.checkpoint_every
  config.fewshot.every_steps = 0
  return config


def _clocks():
  return np.array([time.perf_counter(), time.process_time()])


def trainer_step_time(config, host_batches=None) -> np.ndarray:
  """Mean (wall, CPU) seconds per step of train_and_evaluate between the dispatches of steps
  --warmup and --steps; with `host_batches` (numpy) as its train input if given."""
  dispatch_times = []
  compile_step, train_iterator = trainer.compile_train_step, data.train_iterator

  def timed_compile(*args, **kwargs):
    jitted = compile_step(*args, **kwargs)

    def step(*step_args):
      dispatch_times.append(_clocks())
      return jitted(*step_args)
    step.lower = jitted.lower
    return step

  trainer.compile_train_step = timed_compile
  if host_batches is not None:
    data.train_iterator = lambda *args, start_step=0, **kwargs: iter(host_batches[start_step:])
  try:
    with tempfile.TemporaryDirectory() as workdir:
      trainer.train_and_evaluate(config, workdir)
  finally:
    trainer.compile_train_step, data.train_iterator = compile_step, train_iterator
  times = dispatch_times[FLAGS.warmup - 1:]
  return (times[-1] - times[0]) / (len(times) - 1)


def bare_step_time(config, batches) -> np.ndarray:
  """Mean (wall, CPU) seconds per step of the jitted step alone over the same steps."""
  run = experiment.from_config(config)
  step, state, rng, cfg, mesh = jitted_step.jitted_train_step(run)
  for batch in batches[:FLAGS.warmup]:
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  start = _clocks()
  for batch in batches[FLAGS.warmup:]:
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  return (_clocks() - start) / (len(batches) - FLAGS.warmup)


def main(argv):
  del argv
  _check_flags()
  logging.set_verbosity(logging.WARNING)  # The trainer's setup lines would bury the results.
  config = _config()
  run = experiment.from_config(config)
  mesh = sharding.create_mesh()
  iterator = data.train_iterator(run.data, seed=run.train.seed, batch_size=run.train.batch_size)
  host_batches = [next(iterator) for _ in range(FLAGS.steps)]
  batches = [data.make_global_batch(b, sharding.batch_sharding(mesh)) for b in host_batches]
  results = {'trainer': [], 'trainer, input read ahead': [], 'bare loop': []}
  for repeat in range(FLAGS.repeats):
    results['trainer'].append(trainer_step_time(config))
    results['trainer, input read ahead'].append(trainer_step_time(config, host_batches))
    results['bare loop'].append(bare_step_time(config, batches))
    print(f'repeat {repeat}: {_line({k: v[-1] for k, v in results.items()})}', flush=True)
  print(f'{run.model.name} {run.model.variant} batch={run.train.batch_size} devices={mesh.size} '
        f'steps={FLAGS.steps} (timed {FLAGS.steps - FLAGS.warmup}) checkpoint_every='
        f'{FLAGS.checkpoint_every}, fastest of {FLAGS.repeats}:')
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
