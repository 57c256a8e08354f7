"""Faults injected on purpose, in-process and fast (tools/fault_suite.py runs the slow ones with
real signals in subprocesses): corrupt checkpoints, a changed config, restarts and metrics,
SIGTERM, bad numbers in the config, an unwritable checkpoint folder, broken image folders."""
import collections
import dataclasses
import glob
import json
import os
import signal

import jax
import numpy as np
import pytest

import trainer
from token_learner import data
from token_learner import fields
from token_learner.train import checkpoints
from token_learner.train import logger
from token_learner.train import preemption
from token_learner.train import setup
from tools.fault_harness import array_files, garble, garble_silently


@pytest.fixture(scope='module')
def reference(trained_workdir):
  """The shared uninterrupted run of the tiny config (checkpoints 2, 4, 6; read only): its
  workdir and final params."""
  return trained_workdir, checkpoints.restore_params(
      os.path.join(trained_workdir, 'checkpoints', '6'))


def _copy(src, dst):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  return str(dst)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _no_compiling(*args, **kwargs):
  raise AssertionError('compiled before validating the config')


def _built_unjitted(*args, **kwargs):
  """The run, with a train step that fails if it is ever called or lowered."""
  return dataclasses.replace(setup.build(*args, **kwargs), train_step=_no_compiling)


@pytest.mark.parametrize('field,value', [
    ('learning_rate', float('inf')), ('weight_decay', float('inf')), ('momentum', float('nan')),
    ('mixup_alpha', float('-inf')), ('num_epochs', float('inf'))])
def test_non_finite_numbers_fail_before_compiling(tmp_path, monkeypatch, tiny_config, field,
                                                  value):
  monkeypatch.setattr(jax, 'jit', _no_compiling)
  config = tiny_config(**{field: value})
  if field == 'num_epochs':
    config.num_train_steps = None
  with pytest.raises(fields.ConfigError, match=f'config.{field}=.* must be a finite number'):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_garbled_checkpoint_falls_back_and_all_bad_is_an_error(tmp_path, reference, tiny_config,
                                                               caplog):
  ref_dir, ref_params = reference
  workdir = _copy(ref_dir, tmp_path / 'w')
  os.remove(os.path.join(workdir, 'summary.json'))
  garble_silently(workdir, 6)  # Restores as is: only the digest can tell.
  assert trainer.train_and_evaluate(tiny_config(), workdir)['step'] == 6
  assert 'Checkpoint at step 6 is unreadable or corrupt' in caplog.text
  assert any('6.corrupt' in d for d in os.listdir(os.path.join(workdir, 'checkpoints')))
  _assert_same(checkpoints.restore_params(os.path.join(workdir, 'checkpoints', '6')),
               ref_params)

  for step in (2, 4, 6):
    for path in array_files(workdir, step):  # Every array file: one may hold bytes no read needs.
      garble(path)
  with pytest.raises(checkpoints.CorruptCheckpointError, match='None of the checkpoints'):
    trainer.train_and_evaluate(tiny_config(), workdir)


def test_changed_config_is_refused_naming_the_fields(tmp_path, reference, tiny_config):
  workdir = _copy(reference[0], tmp_path / 'w')
  changed = tiny_config(**{'model.tokenlearner.pooling': 'mean', 'learning_rate': 0.01})
  with pytest.raises(checkpoints.ConfigChangedError) as error:
    trainer.train_and_evaluate(changed, workdir)
  assert 'config.model.tokenlearner.pooling' in str(error.value)
  assert 'config.learning_rate' in str(error.value)
  assert 'num_train_steps' not in str(error.value)
  # Reporting cadence may change; a longer run only when asked for.
  with pytest.raises(checkpoints.ConfigChangedError, match='config.num_train_steps'):
    trainer.train_and_evaluate(tiny_config(num_train_steps=8), workdir)
  result = trainer.train_and_evaluate(tiny_config(num_train_steps=8, log_every_steps=1), workdir,
                                      allow_config_change=['num_train_steps'])
  assert result['step'] == 8


def _events(workdir):
  """[(tag, step)] of every scalar in the workdir's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      out += [(v.tag, event.step) for v in event.summary.value]
  return out


def _dies_after(n, kill=None):
  """data.train_iterator that raises KeyboardInterrupt (or sends `kill` to this process) after
  `n` batches."""
  create = data.train_iterator

  def iterator(*args, **kwargs):
    batches = create(*args, **kwargs)
    for _ in range(n):
      yield next(batches)
    if kill is None:
      raise KeyboardInterrupt('simulated kill')
    os.kill(os.getpid(), kill)
    yield from batches
  return iterator


def test_restarts_log_each_step_once_and_summary_is_complete(tmp_path, tiny_config, reference):
  config = tiny_config(log_every_steps=1, checkpoint_every_steps=4, num_train_steps=8)
  workdir = str(tmp_path)
  with pytest.raises(KeyboardInterrupt):  # Killed at step 8; checkpoint at 4.
    trainer.train_and_evaluate(config, workdir, train_input=_dies_after(7))
  assert ('train_loss', 6) in _events(workdir)
  first = trainer.train_and_evaluate(config, workdir)
  counts = collections.Counter(_events(workdir))
  assert counts[('train_loss', 5)] == 1 and counts[('train_loss', 8)] == 1
  assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]

  # Resumed at its final step (e.g. killed in the final eval): summary.json is still complete.
  os.remove(os.path.join(workdir, 'summary.json'))
  trainer.train_and_evaluate(config, workdir)
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['final_metrics']['train_loss'] == first['train_loss']
  assert summary['wall_time_s'] > json.load(open(os.path.join(reference[0], 'summary.json')))[
      'wall_time_s'] / 10
  assert max(collections.Counter(_events(workdir)).values()) == 1


def test_sigterm_saves_the_current_step_and_resumes_exactly(tmp_path, tiny_config, reference):
  workdir = str(tmp_path)
  with pytest.raises(preemption.Preempted) as stopped:
    trainer.train_and_evaluate(tiny_config(), workdir,
                               train_input=_dies_after(4, kill=signal.SIGTERM))
  # The signal came while a batch was being prefetched: the step then running finished and
  # was saved.
  step = stopped.value.step
  assert step < 6 and str(step) in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert '6' not in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert trainer.train_and_evaluate(tiny_config(), workdir)['step'] == 6
  _assert_same(checkpoints.restore_params(os.path.join(workdir, 'checkpoints', '6')),
               reference[1])


def test_unwritable_checkpoint_folder_fails_before_compiling(tmp_path, monkeypatch, tiny_config):
  (tmp_path / 'checkpoints').write_text('a file where the folder should be')
  with pytest.raises(OSError, match='Cannot write checkpoints to .*checkpoints'):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path), build=_built_unjitted)
  monkeypatch.setattr(os, 'statvfs', lambda path: os.statvfs_result((4096,) * 2 + (1,) * 8))
  with pytest.raises(OSError, match='MiB free, a checkpoint needs'):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path / 'full'))


def test_failed_async_save_surfaces_at_the_next_step(tmp_path, monkeypatch, tiny_config):
  save = checkpoints.ocp.CheckpointManager.save

  def lost_save(self, step, *args, **kwargs):  # As when the write thread hits a full disk.
    result = save(self, step, *args, **kwargs)
    if step == 2:
      self.wait_until_finished()
      os.rename(os.path.join(os.fspath(self.directory), '2'), str(tmp_path / 'lost'))
    return result

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'save', lost_save)
  with pytest.raises(OSError, match='checkpoint of step 2 .* failed'):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path / 'w'))


def test_failed_event_write_is_one_line_naming_the_workdir_and_file(tmp_path):
  """A full disk that hits the TensorBoard writer first: clu's asynchronous writer raises
  TensorFlow's error (wrapped in its AsyncError) at the next call; the run's writer turns it into
  an OSError naming the workdir and the event file, and a flush after another failure is
  logged, not raised over it."""
  from clu import asynclib  # pylint: disable=g-import-not-at-top
  from token_learner.train import loop  # pylint: disable=g-import-not-at-top
  event_file = str(tmp_path / 'events.out.tfevents.1.v2')

  class FullDisk:
    def write_scalars(self, step, scalars):
      del step, scalars
      try:
        raise RuntimeError('{{function_node __wrapped__FlushSummaryWriter_device_/job:localhost/'
                           f'replica:0/task:0/device:CPU:0}}}} {event_file}; No space left on '
                           'device [Op:FlushSummaryWriter]')
      except RuntimeError as e:
        raise asynclib.AsyncError(f"Error '{e}' occurred ASYNCHRONOUSLY.") from e

    def flush(self):  # The same failure from flush().
      self.write_scalars(0, {})

  writer = logger.ResumedWriter(FullDisk(), str(tmp_path))
  message = (f'Writing TensorBoard events to {tmp_path} failed: {event_file}; No space left on '
             'device [Op:FlushSummaryWriter]')
  with pytest.raises(OSError) as error:
    writer.write_scalars(3, {'train_loss': 1.0})
  assert str(error.value) == message
  with pytest.raises(OSError, match='Writing TensorBoard events'):
    writer.flush()
  with pytest.raises(KeyError, match='the original error'):  # In a `finally` after another.
    try:
      raise KeyError('the original error')
    finally:
      loop._flush_after(writer)  # pylint: disable=protected-access


def test_logged_steps_reader_survives_a_torn_event_file(tmp_path):
  (tmp_path / 'events.out.tfevents.1.torn').write_bytes(b'\x10\x00\x00')
  assert not logger._logged_steps(str(tmp_path))  # pylint: disable=protected-access


def _png(path, value=128):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full([8, 8, 3], value, np.uint8)).save(path)


def _folder_cfg(root, **kwargs):
  return data.from_dict(dict(name='image_folder', root=str(root), train_split='train',
                             eval_split='test', image_size=8, **kwargs), num_classes=2)


def test_empty_class_folder_is_named(tmp_path):
  _png(tmp_path / 'train' / 'cat' / 'a.png')
  (tmp_path / 'train' / 'dog').mkdir()
  _png(tmp_path / 'test' / 'cat' / 'b.png')
  with pytest.raises(ValueError, match='class folder .*dog.* has no'):
    data.dataset_info(_folder_cfg(tmp_path))


def test_corrupt_eval_image_is_found_before_training(tmp_path):
  for cls in ('cat', 'dog'):
    _png(tmp_path / 'train' / cls / 'a.png')
    _png(tmp_path / 'test' / cls / 'b.png')
  good = (tmp_path / 'test' / 'dog' / 'b.png').read_bytes()
  (tmp_path / 'test' / 'dog' / 'b.png').write_bytes(good[:len(good) // 2])  # Truncated.
  with pytest.raises(ValueError, match='Corrupt or unreadable image .*dog/b.png'):
    data.eval_input(_folder_cfg(tmp_path), batch_size=2)
  assert data.eval_input(_folder_cfg(tmp_path, skip_corrupt=True), batch_size=2).num_skipped == 1
