"""Helpers of the tests that start real processes: free loopback ports, multi-process runs, and
the repository's commands started from a zygote (`popen`, `run`)."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from typing import List, Sequence, Tuple

import pytest

import zygote


def free_port() -> int:
  """A TCP port free on the loopback interface now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(command: Sequence[str], cwd, env, num_processes: int = 2,
                  timeout: float = 300) -> Tuple[List[int], List[str]]:
  """Runs `command` as processes 0..N-1 of one jax.distributed run on localhost; their return
  codes and outputs (all processes killed and the test failed after `timeout` seconds)."""
  command = list(command) + [f'--coordinator_address=localhost:{free_port()}',
                             f'--num_processes={num_processes}']
  logs = [tempfile.TemporaryFile() for _ in range(num_processes)]
  processes = [popen(command + [f'--process_id={i}'], cwd, env, stdout=log,
                     stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
  outputs = []
  for p, log in zip(processes, logs):
    try:
      p.wait(timeout)
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      pytest.fail(f'{num_processes}-process run timed out after {timeout} s')
    outputs.append(_read(log))
    log.close()
  return [p.returncode for p in processes], outputs


# --- Commands of the repository, started from a zygote (tests/zygote.py) ---------------------
# `python main.py` imports for ~8 s before it reads a flag; a child of a zygote that has done
# those imports once starts in well under a second, and is otherwise that command: its own
# process (pid, signals, exit status), argv, environment, working directory and stdio.
# tests/test_readme.py and tests/test_imports.py still start fresh interpreters.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZYGOTE_SCRIPTS = ('main.py', 'evaluate.py', 'visualize.py', 'sweep.py')
_zygotes = {}  # environment key -> (zygote process, socket path); None: it failed to start


def _read(file):
  """All that a child wrote to `file`, as text."""
  file.seek(0)
  return file.read().decode()


def _zygote_socket(env):
  """The socket of this process's zygote for `env`, started on first use; None if it failed."""
  key = tuple(sorted((k, v) for k, v in env.items() if not zygote.late_env(k)))
  if key not in _zygotes:
    path = os.path.join(tempfile.mkdtemp(prefix='zygote_', dir=os.environ.get(
        'TOKEN_LEARNER_TEST_RUN_DIR')), 'socket')  # Removed with the test run's folder.
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'tests', 'zygote.py'), path, str(os.getpid())],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    ready = select.select([process.stdout], [], [], 300)[0] and process.stdout.readline()
    _zygotes[key] = (process, path) if ready == b'ready\n' else None
    if _zygotes[key] is None:
      process.kill()
      process.wait()
  return _zygotes[key] and _zygotes[key][1]


class ForkedProcess:
  """A command forked by a zygote, with the part of subprocess.Popen's interface tests use."""

  def __init__(self, args, conn, pid):
    self.args, self.pid, self.returncode = args, pid, None
    self._conn = conn

  def _receive(self, timeout):
    self._conn.settimeout(timeout)
    try:
      message = self._conn.recv(4096)
    except (socket.timeout, BlockingIOError):
      return None
    if not message:
      raise RuntimeError(f'the zygote of {self.args[:2]} exited before its child')
    self.returncode = json.loads(message)['returncode']
    self._conn.close()
    return self.returncode

  def poll(self):
    return self.returncode if self.returncode is not None else self._receive(0)

  def wait(self, timeout=None):
    if self.returncode is None and self._receive(timeout) is None:
      raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def send_signal(self, sig):
    if self.poll() is None:
      os.kill(self.pid, sig)

  def kill(self):
    self.send_signal(signal.SIGKILL)


def popen(command, cwd, env, stdout=None, stderr=None):
  """subprocess.Popen(command, cwd=, env=, stdout=, stderr=) with stdin from /dev/null; stdout a
  file (None: this process's), stderr a file, subprocess.STDOUT or None. `python SCRIPT` of
  ZYGOTE_SCRIPTS is forked by a zygote, anything else started by subprocess."""
  command = [os.fspath(c) for c in command]
  script = len(command) > 1 and os.path.abspath(os.path.join(cwd, command[1]))
  path = (command[0] == sys.executable and os.path.dirname(script or '') == REPO
          and os.path.basename(script) in ZYGOTE_SCRIPTS and _zygote_socket(env))
  if not path:
    return subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr)
  out = stdout.fileno() if stdout is not None else 1
  err = out if stderr == subprocess.STDOUT else (stderr.fileno() if stderr is not None else 2)
  conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
  conn.connect(path)
  with open(os.devnull, 'rb') as devnull:
    request = json.dumps(dict(argv=command[1:], cwd=os.fspath(cwd), env=dict(env)))
    socket.send_fds(conn, [request.encode()], [devnull.fileno(), out, err])
  return ForkedProcess(command, conn, json.loads(conn.recv(4096))['pid'])


def run(command, cwd, env, timeout):
  """subprocess.run(command, cwd=, env=, capture_output=True, text=True, timeout=), through
  `popen`."""
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    process = popen(command, cwd, env, stdout=out, stderr=err)
    try:
      process.wait(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      raise
    return subprocess.CompletedProcess(command, process.returncode, _read(out), _read(err))
