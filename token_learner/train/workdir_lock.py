"""One run per workdir: `WORKDIR/workdir.lock`, taken before compiling, released at exit.

Two runs writing one workdir would interleave their checkpoints, events and summary.json; the
second one is refused instead (`WorkdirBusyError`, one line naming the workdir and the holder:
host, pid, start time), before anything is compiled, and the first one's results are untouched.

The lock file holds JSON `{host, pid, start_time, heartbeat, token}`. A daemon thread of the
holder rewrites `heartbeat` every HEARTBEAT_S seconds. A lock is stale, and is taken over with a
warning naming the old holder, when its process is gone (same host, pid not alive: a SIGKILLed
run) or its heartbeat is older than STALE_AFTER_S (another host, or an object store where no pid
can be checked). `release()` (at the end of the run, after an exception, after a SIGTERM's
checkpoint) removes it if it is still this run's.

Atomicity:
- a new lock is created atomically where the store allows (paths.create_exclusive): O_CREAT |
  O_EXCL on a local disk, an upload with the precondition ifGenerationMatch=0 on gs:// (gcsfs),
  so of two runs starting together exactly one gets it.
- local disk, taking over a stale lock: it is first renamed to a name of our own; if what we
  moved is not the stale record we read (a rival took over between our read and our rename),
  it is put back with os.link (which fails if a third lock exists) and the workdir counts as
  busy; then the exclusive create decides between rivals.
- object store, taking over a stale lock (or creating one where there is no exclusive create):
  the run writes its record with a fresh random token, waits SETTLE_S seconds and reads it back
  (reads after writes are strongly consistent on GCS): only the last writer sees its own token,
  the others report the workdir busy. Two runs are both let in only if one's check and write
  both fall inside the other's settle window after its read-back; the holder's heartbeat
  re-reads the lock and logs an error if the token changed.

Multi-process runs: process 0 takes, beats and releases the lock; the outcome is broadcast, so
every process stops together when the workdir is busy.
"""
import datetime
import json
import os
import secrets
import socket
import threading
import time
from typing import Any, Dict, Optional

from absl import logging
import jax
import numpy as np

from token_learner import paths

LOCK_FILE = 'workdir.lock'
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
SETTLE_S = 1.0


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir's lock."""


def _now_iso(t: float) -> str:
  utc = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
  return utc.strftime('%Y-%m-%d %H:%M:%S UTC')


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


def _read(path: str) -> Optional[Dict[str, Any]]:
  """The lock record at `path`; None if absent; {} if unreadable (a torn write)."""
  try:
    record = json.loads(paths.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {} if paths.exists(path) else None
  return record if isinstance(record, dict) else {}


def stale_reason(record: Dict[str, Any], now: Optional[float] = None) -> Optional[str]:
  """Why the lock `record` no longer protects a live run, or None if it does."""
  now = time.time() if now is None else now
  heartbeat = record.get('heartbeat')
  if not isinstance(heartbeat, (int, float)):
    return 'the lock file is unreadable'
  if record.get('host') == socket.gethostname() and not _pid_alive(int(record.get('pid', -1))):
    return f'process {record.get("pid")} is gone'
  if now - heartbeat > STALE_AFTER_S:
    return f'its heartbeat is {now - heartbeat:.0f} s old (> {STALE_AFTER_S:.0f} s)'
  return None


def describe(record: Dict[str, Any]) -> str:
  start = record.get('start_time')
  since = _now_iso(start) if isinstance(start, (int, float)) else '?'
  return f'host {record.get("host", "?")}, pid {record.get("pid", "?")}, started {since}'


class WorkdirLock:
  """The lock of one workdir held by this process; `release()` ends it."""

  def __init__(self, workdir: str):
    self.workdir = paths.absolute(workdir)
    self.path = paths.join(self.workdir, LOCK_FILE)
    now = time.time()
    self.record = dict(host=socket.gethostname(), pid=os.getpid(), start_time=now,
                       heartbeat=now, token=secrets.token_hex(8))
    self._stop = threading.Event()
    self._thread = None
    self.held = False

  def _busy(self, holder: Dict[str, Any]) -> WorkdirBusyError:
    return WorkdirBusyError(
        f'workdir {self.workdir} is in use by another run ({describe(holder)}; lock file '
        f'{self.path}): wait for it to finish or stop it, or use another --workdir')

  def _encoded(self) -> bytes:
    return json.dumps(self.record).encode()

  def _create(self) -> bool:
    """An atomic create where the store has one (paths.create_exclusive), else
    write-and-confirm."""
    try:
      return paths.create_exclusive(self.path, self._encoded())
    except NotImplementedError:
      return self._write_and_confirm()

  def _write_and_confirm(self) -> bool:
    paths.write_bytes_atomic(self.path, self._encoded())
    time.sleep(SETTLE_S)
    return (_read(self.path) or {}).get('token') == self.record['token']

  def _move_aside_local(self, stale: Dict[str, Any]) -> bool:
    """Renames the stale lock away; False if a rival replaced it meanwhile (put back)."""
    aside = f'{self.path}.stale.{self.record["token"]}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return True  # Someone else removed it: compete for a fresh create.
    if (_read(aside) or {}).get('token') != stale.get('token'):
      try:
        os.link(aside, self.path)  # Put the rival's live lock back (fails if a third exists).
      except FileExistsError:
        pass
      os.remove(aside)
      return False
    os.remove(aside)
    return True

  def acquire(self):
    """Takes the lock (taking over a stale one) or raises WorkdirBusyError; an OSError naming
    the workdir if the lock cannot be written there (e.g. a read-only disk)."""
    try:
      return self._acquire()
    except OSError as e:
      raise OSError(e.errno, f'Cannot write to the workdir {self.workdir} (its lock '
                    f'{self.path}): {e.strerror or e}') from None

  def _acquire(self):
    paths.makedirs(self.workdir)
    local = not paths.is_url(self.path)
    for _ in range(3):  # A rival may win a takeover race; look again.
      holder = _read(self.path)
      if holder is None:
        if self._create():
          return self._held()
        continue
      reason = stale_reason(holder)
      if reason is None:
        raise self._busy(holder)
      logging.warning('Taking over the lock of workdir %s from a dead run (%s): %s.',
                      self.workdir, describe(holder), reason)
      if local:
        if self._move_aside_local(holder) and self._create():
          return self._held()
      elif self._write_and_confirm():
        return self._held()
    raise self._busy(_read(self.path) or {})

  def _held(self):
    self.held = True
    self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat',
                                    daemon=True)
    self._thread.start()
    logging.info('Holding the lock of workdir %s (%s).', self.workdir, self.path)
    return self

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      try:
        current = _read(self.path) or {}
        if current.get('token') != self.record['token']:
          logging.error('The lock of workdir %s was taken by another run (%s); this run no '
                        'longer holds it.', self.workdir, describe(current))
          return
        self.record['heartbeat'] = time.time()
        paths.write_bytes_atomic(self.path, self._encoded())
      except Exception as e:  # pylint: disable=broad-except  # Keep beating through a blip.
        logging.warning('Refreshing the lock of workdir %s failed: %s', self.workdir, e)

  def release(self):
    """Stops the heartbeat and removes the lock if it is still this run's."""
    if not self.held:
      return
    self.held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=HEARTBEAT_S)
    try:
      if (_read(self.path) or {}).get('token') == self.record['token']:
        paths.remove(self.path)
    except Exception as e:  # pylint: disable=broad-except  # Never mask the run's own error.
      logging.warning('Removing the lock of workdir %s failed: %s', self.workdir, e)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """The workdir's lock, taken by process 0 for all processes; every process raises
  WorkdirBusyError (process 0's message) if it is busy."""
  lock = WorkdirLock(workdir)
  if jax.process_count() == 1:
    return lock.acquire()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  error = ''
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except Exception as e:  # pylint: disable=broad-except  # Every process must hear of it.
      error = str(e) or type(e).__name__
  message = np.zeros(2048, np.uint8)
  encoded = np.frombuffer(error.encode()[:2048], np.uint8)
  message[:encoded.size] = encoded
  message = np.asarray(multihost_utils.broadcast_one_to_all(message))
  error = bytes(message[message > 0]).decode(errors='replace')
  if error:
    raise WorkdirBusyError(error)
  return lock
