"""The workdir lock (token_learner/train/workdir_lock.py): a busy workdir is refused before
compiling and left untouched, a dead run's lock is taken over (pid gone; heartbeat expired),
the holder's heartbeat refreshes it, it is released when a run fails, and it works the same on
the gs:// emulator."""
import json
import logging
import os
import socket
import subprocess
import time
import uuid

import jax
import pytest

from gcs_emulator import BUCKET, gcs, gcs_server  # pylint: disable=unused-import
from token_learner import paths
from token_learner.train import loop

LOCK_FILE = 'workdir.lock'


def _record(host=None, pid=None, age=0.0, start=1.7e9):
  return json.dumps(dict(host=host or socket.gethostname(), pid=pid or os.getpid(),
                         start_time=start, heartbeat=time.time() - age, token='rival'))


def _dead_pid():
  p = subprocess.Popen(['true'])
  p.wait()
  return p.pid


def _snapshot(folder):
  return {os.path.relpath(os.path.join(root, f), folder): open(os.path.join(root, f), 'rb').read()
          for root, _, files in os.walk(folder) for f in files}


_COMPILED, _RECORDING = [], [False]


def _on_event_duration(event, duration, **kwargs):
  del kwargs
  if _RECORDING[0] and event == '/jax/core/compile/backend_compile_duration':
    _COMPILED.append(duration)


jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


@pytest.fixture(autouse=True)
def _count_compiles():
  """_COMPILED lists the XLA compilations of the running test."""
  _COMPILED.clear()
  _RECORDING[0] = True
  yield
  _RECORDING[0] = False


def test_busy_workdir_is_refused_before_compiling_and_left_untouched(tmp_path, tiny_config):
  """A live run (this process, on this host, beating) holds the workdir: a second run is refused
  with one line naming the workdir and the holder (main.py prints it and exits 2, as
  test_gcs.py's two-process case checks), compiles nothing and writes nothing."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / LOCK_FILE).write_text(_record(start=1.7e9))
  (workdir / 'summary.json').write_text('{"the first run": 1}')
  before = _snapshot(workdir)
  with pytest.raises(Exception) as error:
    loop.train_and_evaluate(tiny_config(), str(workdir))
  assert type(error.value).__name__ == 'WorkdirBusyError', error.value
  line = str(error.value)
  assert len(line.splitlines()) == 1, line
  for part in (str(workdir), socket.gethostname(), f'pid {os.getpid()}', '2023-11-14 22:13:20'):
    assert part in line, (part, line)
  assert not _COMPILED  # Not a program compiled (refused right after the config checks).
  assert _snapshot(workdir) == before  # No checkpoints/, events, summary or lock change.


def test_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
  from token_learner.train import workdir_lock  # pylint: disable=g-import-not-at-top
  assert loop.workdir_lock.paths.create_exclusive(str(tmp_path / 'x'), b'1')
  assert not paths.create_exclusive(str(tmp_path / 'x'), b'2')  # O_EXCL: the first one stays.
  assert (tmp_path / 'x').read_bytes() == b'1'
  (tmp_path / LOCK_FILE).write_text(_record(pid=_dead_pid()))
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.acquire(str(tmp_path))
  assert 'Taking over the lock' in caplog.text and 'is gone' in caplog.text
  held = json.loads((tmp_path / LOCK_FILE).read_text())
  assert held['pid'] == os.getpid() and held['token'] != 'rival'
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {os.getpid()}'):
    workdir_lock.acquire(str(tmp_path))  # Held by a live run now.
  lock.release()
  assert not (tmp_path / LOCK_FILE).exists()
  workdir_lock.acquire(str(tmp_path)).release()


def test_heartbeat_decides_for_another_host(tmp_path, monkeypatch, caplog):
  from token_learner.train import workdir_lock  # pylint: disable=g-import-not-at-top
  path = tmp_path / LOCK_FILE
  path.write_text(_record(host='another-host', pid=1, age=workdir_lock.STALE_AFTER_S / 2))
  with pytest.raises(workdir_lock.WorkdirBusyError, match='host another-host, pid 1'):
    workdir_lock.acquire(str(tmp_path))  # Its pid cannot be checked here; it beats: busy.
  path.write_text(_record(host='another-host', pid=1, age=workdir_lock.STALE_AFTER_S + 5))
  monkeypatch.setattr(workdir_lock, 'HEARTBEAT_S', 0.05)
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.acquire(str(tmp_path))
  assert 'heartbeat is' in caplog.text
  first = json.loads(path.read_text())['heartbeat']
  time.sleep(0.5)
  assert json.loads(path.read_text())['heartbeat'] > first  # The daemon thread beats.
  lock.release()
  assert not path.exists()


def test_lock_is_released_when_the_run_fails(tmp_path, tiny_config, monkeypatch):
  def unwritable(*args, **kwargs):
    raise OSError('disk gone')

  monkeypatch.setattr(loop.checkpoints, 'check_writable', unwritable)  # The first step held.
  with pytest.raises(OSError, match='disk gone'):
    loop.train_and_evaluate(tiny_config(), str(tmp_path))
  assert not (tmp_path / LOCK_FILE).exists()
  monkeypatch.undo()
  workdir_lock = loop.workdir_lock
  workdir_lock.acquire(str(tmp_path)).release()  # Free again.


def test_lock_on_the_gcs_emulator(gcs, monkeypatch):
  from token_learner.train import workdir_lock  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(workdir_lock, 'SETTLE_S', 0.2)
  prefix = f'lock-{uuid.uuid4().hex[:8]}'
  workdir = f'gs://{BUCKET}/{prefix}'
  lock = workdir_lock.acquire(workdir)
  assert gcs.objects(prefix) == [f'{prefix}/{LOCK_FILE}']
  # The create is a test-and-set on the server (ifGenerationMatch=0): a rival's is refused.
  assert not paths.create_exclusive(paths.join(workdir, LOCK_FILE), b'{}')
  assert json.loads(paths.read_text(paths.join(workdir, LOCK_FILE)))['pid'] == os.getpid()
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'workdir {workdir} .*pid {os.getpid()}'):
    workdir_lock.acquire(workdir)
  lock.release()
  assert not gcs.objects(prefix)
  paths.write_text_atomic(paths.join(workdir, LOCK_FILE),
                          _record(host='another-host', age=workdir_lock.STALE_AFTER_S + 5))
  lock = workdir_lock.acquire(workdir)  # Expired heartbeat on the object store: taken over.
  assert json.loads(paths.read_text(paths.join(workdir, LOCK_FILE)))['pid'] == os.getpid()
  lock.release()
  assert not gcs.objects(prefix)
