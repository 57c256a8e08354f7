"""Restoring checkpoints (token_learner/train/checkpoints.py): corruption is told from failure,
unverifiable checkpoints are refused, every reader goes through one verified path, a new run
starts its own TensorBoard steps, partial saves are removed. In-process, on checkpoints of the
tiny config written without training."""
import collections
import errno
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evaluate
import trainer
from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner import pretrained
from token_learner.train import checkpoints
from token_learner.train import setup
from tools.fault_harness import array_files, garble_silently, truncate


@pytest.fixture(scope='module')
def saved(tmp_path_factory, tiny_config):
  """A workdir with checkpoints 2 and 4 of the tiny config (states told apart by `.step`), its
  Run and config dict."""
  config = tiny_config()
  experiment = experiment_lib.from_config(config)
  run = setup.build(experiment, num_train_examples=data.dataset_info(experiment.data).num_train)
  workdir = str(tmp_path_factory.mktemp('saved'))
  mngr = checkpoints.manager(workdir, keep=5)
  state = run.init_state()
  for step in (2, 4):
    checkpoints.save(mngr, step, state.replace(step=jnp.asarray(step, state.step.dtype)),
                     config=experiment_lib.as_dict(config))
  mngr.close()
  return workdir, run, experiment_lib.as_dict(config)


@pytest.fixture
def workdir(saved, tmp_path):
  return shutil.copytree(saved[0], str(tmp_path / 'w'))


@pytest.fixture
def no_backoff(monkeypatch):
  monkeypatch.setattr(checkpoints, 'BACKOFF_S', 0.0)


def _restore(workdir, saved, config=None, **kwargs):
  mngr = checkpoints.manager(workdir, keep=5)
  try:
    state, mngr, _ = checkpoints.restore_latest(mngr, saved[1].abstract_state,
                                                config or saved[2], **kwargs)
    return None if state is None else int(state.step)
  finally:
    mngr.close()


def _listing(workdir):
  return sorted(os.listdir(os.path.join(workdir, checkpoints.CHECKPOINTS)))


@pytest.mark.parametrize('error,corrupt', [
    (OSError(errno.EIO, 'Input/output error'), False),
    (MemoryError(), False),
    (ValueError('RESOURCE_EXHAUSTED: Out of memory allocating 1073741824 bytes'), False),
    (AttributeError("module 'orbax.checkpoint' has no attribute 'args'"), False),
    (ValueError('UNAVAILABLE: Error reading "params.x/0" in OCDBT database'), False),
    (RuntimeError('something new'), False),  # Unknown: never moved aside.
    (ValueError('OUT_OF_RANGE: Requested byte range [3, 4) is not valid for value of size 2'),
     True),
    (ValueError('FAILED_PRECONDITION: Truncated Zstd-compressed stream'), True),
    (FileNotFoundError(errno.ENOENT, 'No such file'), True),
    (checkpoints.CorruptCheckpointError('1 array(s) differ from their digest'), True)])
def test_corruption_is_told_from_failure(error, corrupt):
  wrapped = Exception('Encountered error while reading array index')
  wrapped.__cause__ = error  # As orbax wraps tensorstore's error.
  assert checkpoints.is_corruption(error) is corrupt
  assert checkpoints.is_corruption(wrapped) is corrupt


def test_io_error_is_retried_and_never_moves_a_step_aside(workdir, saved, monkeypatch,
                                                          no_backoff):
  restore = checkpoints.ocp.CheckpointManager.restore
  calls = collections.Counter()

  def flaky(self, step, *args, **kwargs):
    calls[step] += 1
    if calls[step] <= failures:
      raise OSError(errno.EIO, 'Input/output error')
    return restore(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'restore', flaky)
  before = _listing(workdir)
  failures = checkpoints.RETRIES  # Every attempt fails: an error, the steps left as they are.
  with pytest.raises(checkpoints.CheckpointUnavailableError,
                     match='step 4 .* intact .* could not be read .*Input/output error') as e:
    _restore(workdir, saved)
  assert 'remove' not in str(e.value) and 'delete' not in str(e.value)
  assert calls == {4: checkpoints.RETRIES} and _listing(workdir) == before
  calls.clear()
  failures = checkpoints.RETRIES - 1  # The fault clears: the newest step is restored.
  assert _restore(workdir, saved) == 4 and _listing(workdir) == before


def test_processes_agree_before_anyone_renames(workdir, saved, monkeypatch):
  """Another process could not read step 4 (here: says so through the verdict exchange): this
  process, which read it fine, raises too and nothing is renamed; another process's corruption
  verdict makes this one fall back to step 2 like it."""
  ok, corrupt, failed = (checkpoints._OK, checkpoints._CORRUPT,  # pylint: disable=protected-access
                         checkpoints._FAILED)  # pylint: disable=protected-access
  others = iter([failed, corrupt, ok, ok])  # The other process's verdicts, in exchange order.
  exchanged = []

  def all_verdicts(verdict):
    exchanged.append(verdict)
    return np.asarray([verdict, next(others)])

  monkeypatch.setattr(checkpoints, '_all_verdicts', all_verdicts)
  before = _listing(workdir)
  with pytest.raises(checkpoints.CheckpointUnavailableError, match='step 4'):
    _restore(workdir, saved)
  assert _listing(workdir) == before and exchanged == [ok]  # Stopped at the first exchange.
  # Step 4: corrupt on the other process (its metadata); step 2: read and restored on both.
  assert _restore(workdir, saved) == 2 and exchanged == [ok] * 4
  assert [d.split('.')[:2] for d in _listing(workdir) if not d.isdigit()] == [['4', 'corrupt']]


def test_truncated_array_data_is_moved_aside(workdir, saved):
  truncate(array_files(workdir, 4)[-1])
  assert _restore(workdir, saved) == 2
  assert [d.split('.')[:2] for d in _listing(workdir) if not d.isdigit()] == [['4', 'corrupt']]


def test_step_with_its_array_files_missing_is_moved_aside(workdir, saved):
  """Every file of step 4's item folder deleted (a copy cut short): corrupt, step 2 is used."""
  item = os.path.join(workdir, 'checkpoints', '4', 'default')
  for name in os.listdir(item):
    if os.path.isfile(os.path.join(item, name)):
      os.remove(os.path.join(item, name))
  assert _restore(workdir, saved) == 2
  assert [d.split('.')[:2] for d in _listing(workdir) if not d.isdigit()] == [['4', 'corrupt']]


def test_missing_metadata_is_refused_as_unverifiable(workdir, saved):
  os.remove(os.path.join(workdir, 'checkpoints', '4', '_CHECKPOINT_METADATA'))
  assert _restore(workdir, saved, allow_unverified=True) == 4  # The escape hatch.
  assert _restore(workdir, saved) == 2
  assert [d.split('.')[:2] for d in _listing(workdir) if not d.isdigit()] == [['4', 'unverified']]
  # No step verifiable: an error (nothing moved), not a silent fresh start.
  os.remove(os.path.join(workdir, 'checkpoints', '2', '_CHECKPOINT_METADATA'))
  with pytest.raises(checkpoints.CorruptCheckpointError, match='None of the checkpoints'):
    _restore(workdir, saved)
  assert '2' in _listing(workdir)


def test_metadata_without_config_is_unverifiable_and_config_is_checked_per_step(workdir, saved):
  path = os.path.join(workdir, 'checkpoints', '4', '_CHECKPOINT_METADATA')
  metadata = json.load(open(path))
  del metadata['custom_metadata']['config']
  json.dump(metadata, open(path, 'w'))
  changed = dict(saved[2], learning_rate=0.5)
  with pytest.raises(checkpoints.ConfigChangedError, match='config.learning_rate'):
    _restore(workdir, saved, changed)
  assert _listing(workdir) == ['2', '4']  # Refused before anything was moved.
  assert _restore(workdir, saved) == 2


def test_every_reader_verifies(workdir, saved):
  ckpt = os.path.join(workdir, 'checkpoints')
  good = checkpoints.restore_params(os.path.join(ckpt, '2'))
  jax.tree.map(np.testing.assert_array_equal, good, jax.device_get(saved[1].init_state().params))
  garble_silently(workdir, 4)  # Restores as is: only the digest can tell.
  with pytest.raises(checkpoints.CorruptCheckpointError, match='differ from their digest'):
    checkpoints.restore_params(os.path.join(ckpt, '4'))
  with pytest.raises(checkpoints.CorruptCheckpointError, match='differ from their digest'):
    pretrained.load_flat(workdir, 'checkpoint')  # init_from kind 'checkpoint': the newest.
  with pytest.raises(checkpoints.CorruptCheckpointError, match='differ from their digest'):
    evaluate.evaluate_checkpoint(None, workdir)
  os.remove(os.path.join(ckpt, '2', '_CHECKPOINT_METADATA'))
  with pytest.raises(checkpoints.UnverifiedCheckpointError, match='allow_unverified'):
    checkpoints.restore_params(os.path.join(ckpt, '2'))
  jax.tree.map(np.testing.assert_array_equal, good, checkpoints.restore_params(
      os.path.join(ckpt, '2'), allow_unverified=True))
  assert _listing(workdir) == ['2', '4']  # Readers never move anything.


def test_evaluate_compares_the_config_with_the_stored_one(workdir, saved, tiny_config, caplog):
  with pytest.raises(checkpoints.ConfigChangedError, match='config.model.num_layers: 1 -> 2'):
    evaluate.evaluate_checkpoint(tiny_config(**{'model.num_layers': 2}), workdir)
  caplog.set_level('INFO')
  checkpoints.check_model_config(saved[2], experiment_lib.as_dict(
      tiny_config(batch_size=32, **{'model.dropout_rate': 0.1})), allow=['model.dropout_rate'])
  lines = [r.getMessage() for r in caplog.records if 'differs from the one stored' in r.message]
  assert len(lines) == 1 and 'config.batch_size: 16 -> 32' in lines[0]
  assert 'config.model.dropout_rate' in lines[0]
  names = {evaluate.output_path('/w', {'step': 4, 'split': split, 'evals': evals})
           for split, evals in (('test', ['eval']), ('train[:100]', ['eval']),
                                ('test', ['eval', 'fewshot']))}
  assert len(names) == 3 and '/w/eval_4_test_eval.json' in names


def test_partial_saves_are_removed_never_a_finished_step(workdir, saved, monkeypatch):
  ckpt = os.path.join(workdir, 'checkpoints')
  os.makedirs(os.path.join(ckpt, '6.orbax-checkpoint-tmp-1764590000'))
  os.makedirs(os.path.join(ckpt, '8.corrupt.1764590000'))
  checkpoints.manager(workdir, keep=5).close()  # Start-up.
  assert _listing(workdir) == ['2', '4', '8.corrupt.1764590000']

  def failing_save(self, step, *args, **kwargs):  # A write that dies half way.
    os.makedirs(os.path.join(ckpt, f'{step}.orbax-checkpoint-tmp-1764590001', 'default'))
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'save', failing_save)
  mngr = checkpoints.manager(workdir, keep=5)
  with pytest.raises(OSError, match='No space left'):
    checkpoints.save(mngr, 6, saved[1].init_state(), config=saved[2])
  mngr.close()
  assert _listing(workdir) == ['2', '4', '8.corrupt.1764590000']


def _train_losses(workdir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steps = []
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for v in event.summary.value if v.tag == 'train_loss']
  return sorted(steps)


def test_starting_over_logs_the_new_runs_steps(tmp_path, tiny_config):
  """checkpoints/ deleted to start over: the event files of the old run (here steps 1-5) must
  not hide the new run's steps."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  old_writer = metric_writers.create_default_writer(workdir)
  for step in range(1, 6):
    old_writer.write_scalars(step, {'train_loss': 9.0})
  old_writer.close()
  trainer.train_and_evaluate(tiny_config(num_train_steps=2, log_every_steps=1, evals={}),
                             workdir)
  assert _train_losses(workdir) == [1, 2]  # The new run's, once each.
  old = glob.glob(os.path.join(workdir, 'events_before.*'))
  assert len(old) == 1 and _train_losses(old[0]) == [1, 2, 3, 4, 5]  # The old run's, kept.
