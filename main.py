r"""Trains and evaluates a model: `python main.py --config=configs/X.py --workdir=DIR`.

Config fields can be overridden on the command line (`--config.learning_rate=1e-3`); the config
is locked, so a misspelled field is an error. Re-running the same command resumes from the
checkpoints in DIR (a changed config is refused unless --allow_config_change names the fields).
Exit status: 0 done, 2 a config error (one line naming the field) or a workdir in use by another
live run (one line naming the workdir and the holder: host, pid, start time; the lock
WORKDIR/workdir.lock of token_learner/train/workdir_lock.py), 75 preempted by SIGTERM after
saving a checkpoint (run the command again to resume). DIR may be a URL (gs://bucket/run).

Multi-process: on TPU pods and SLURM / Open MPI clusters `jax.distributed` finds its peers
itself; elsewhere (GPU or CPU hosts) pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every
process.

On a GPU, when XLA_FLAGS is unset, the flags of token_learner/train/xla_flags.py (latency-hiding
scheduler, gradient all-reduce combining) are set before JAX initialises its backend; a set
XLA_FLAGS (even an empty one) is used as it is.
"""
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from token_learner import fields
from token_learner import flag_parsing
from token_learner.train import compile_cache
from token_learner.train import loop
from token_learner.train import preemption
from token_learner.train import workdir_lock
from token_learner.train import xla_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs, summary.json.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 (multi-process); env JAX_COORDINATOR_ADDRESS.')
flags.DEFINE_integer('num_processes', None, 'Number of processes; env JAX_NUM_PROCESSES.')
flags.DEFINE_integer('process_id', None, 'This process (0..num_processes-1); env JAX_PROCESS_ID.')
flags.DEFINE_list('allow_config_change', [],
                  'Config fields allowed to differ from those the workdir\'s checkpoints were '
                  'trained with, e.g. num_train_steps (resuming refuses other changes).')
flags.DEFINE_integer('heartbeat_timeout_s', 30, 'Multi-process runs: a process whose peer '
                     'stops answering for this long exits (jax.distributed heartbeat; its '
                     'default, 100 s, keeps a pod idle that long after a host dies).', lower_bound=5)
flags.mark_flags_as_required(['config', 'workdir'])

# Environment variables by which jax.distributed.initialize() detects a cluster by itself.
_AUTO_DETECTED_CLUSTERS = ('TPU_WORKER_HOSTNAMES', 'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE')


def initialize_distributed():
  """Calls jax.distributed.initialize() when this is one of several processes."""
  address = FLAGS.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = FLAGS.num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0')) or None
  process_id = FLAGS.process_id
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if address or num_processes:
    if not (address and num_processes and process_id is not None):
      raise app.UsageError('multi-process runs need --coordinator_address, --num_processes and '
                           '--process_id (or the JAX_* environment variables)')
    # CPU hosts exchange collectives through gloo; GPUs and TPUs ignore this setting.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)
  elif any(os.environ.get(v) for v in _AUTO_DETECTED_CLUSTERS):
    hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
    if 'TPU_WORKER_HOSTNAMES' not in os.environ or ',' in hosts:
      jax.distributed.initialize(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)


class _OnlyOrbaxWarnings(std_logging.Filter):
  """orbax logs every step of every save at INFO; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_OnlyOrbaxWarnings())
  # Before the first device query (XLA reads XLA_FLAGS when the backend initialises).
  applied = xla_flags.apply_defaults(os.environ)
  if applied:
    logging.info('GPU: XLA_FLAGS=%r (unset XLA_FLAGS: the defaults of xla_flags.py)', applied)
  initialize_distributed()
  try:  # Keep TensorFlow (the input pipeline) off the accelerators.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX process %d / %d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)


def train(config, workdir, allow_config_change=()):
  """train_and_evaluate; a config error or a busy workdir exits 2 with one line, a preemption
  exits 75."""
  try:
    compile_cache.enable_for(config)  # config.compilation_cache_dir, before anything compiles.
    loop.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  except fields.ConfigError as e:  # One line naming the field, no traceback.
    sys.stderr.write(f'main.py: config error: {e}\n')
    sys.exit(2)
  except workdir_lock.WorkdirBusyError as e:  # Every process of the run, before compiling.
    sys.stderr.write(f'main.py: {e}\n')
    logging.flush()
    sys.exit(2)
  except preemption.Preempted as e:
    logging.warning('%s', e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except BaseException:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # jax.distributed's shutdown at exit waits for every peer (minutes when one is dead): a
    # failed process of a multi-process run exits now, and its peers fail at their next
    # collective.
    logging.exception('Training failed; exiting without waiting for the other processes.')
    logging.flush()
    os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
