"""A process that has imported the libraries of the repository's commands and forks one child
per request to run one of them (`python tests/zygote.py SOCKET PARENT_PID`; the client side is
tests/processes.py).

`python main.py ...` spends ~8 s importing TensorFlow, JAX, flax, orbax and clu before it reads
its flags; the tests start about twenty such commands. A child of this process skips that: it
takes the request's argv, environment, working directory and stdin / stdout / stderr, then runs
the script as `__main__`, exactly as the interpreter would from there on (sys.argv, sys.path[0]
the script's folder, exit status, atexit handlers, an uncaught exception's traceback). Its
parent reports the child's pid, then its return code (negative: killed by that signal).

Nothing here initialises a JAX backend, so XLA_FLAGS (the device count) is the child's own: XLA
reads it at the first device query. Every other variable is read by the imports, so a zygote
serves only requests whose environment, apart from XLA_FLAGS and pytest's own variables, is the
one it was started with (the client keeps one zygote per such environment).
"""
import json
import os
import select
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What main.py imports before it reads its flags (main() then imports TensorFlow); evaluate.py,
# visualize.py and sweep.py import these too, and the rest themselves.
PRELOAD = ('absl.app', 'absl.flags', 'jax', 'ml_collections.config_flags', 'tensorflow',
           'token_learner.fields', 'token_learner.flag_parsing', 'token_learner.train.compile_cache',
           'token_learner.train.loop', 'token_learner.train.preemption',
           'token_learner.train.workdir_lock', 'token_learner.train.xla_flags')
# Environment variables read after the imports (they may differ between a zygote's requests).
LATE_ENV = ('XLA_FLAGS',)


def late_env(name):
  return name in LATE_ENV or name.startswith('PYTEST_')


def _preload():
  sys.path.insert(1, REPO)
  try:
    for name in PRELOAD:
      __import__(name)
  finally:
    sys.path.remove(REPO)


def _reap(waiting):
  """Sends {'returncode': N} to the client of every child that has exited."""
  while waiting:
    try:
      pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
      return
    if pid == 0:
      return
    conn = waiting.pop(pid, None)
    if conn is not None:
      try:
        conn.send(json.dumps({'returncode': os.waitstatus_to_exitcode(status)}).encode())
      except OSError:
        pass  # The client is gone.
      conn.close()


def serve(path, parent):
  """Answers requests until `parent` exits; returns, in a forked child, that child's request."""
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
  listener.bind(path)
  listener.listen(64)
  sys.stdout.write('ready\n')
  sys.stdout.flush()
  waiting = {}  # child pid -> the client's connection
  while os.getppid() == parent:
    if select.select([listener], [], [], 0.05)[0]:
      conn, _ = listener.accept()
      message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
      pid = os.fork()
      if pid == 0:
        listener.close()
        for other in waiting.values():
          other.close()
        conn.close()
        for target, fd in enumerate(fds):
          os.dup2(fd, target)
        for fd in fds:
          if fd > 2:
            os.close(fd)
        return json.loads(message)
      for fd in fds:
        os.close(fd)
      conn.send(json.dumps({'pid': pid}).encode())
      waiting[pid] = conn
    _reap(waiting)
  sys.exit(0)


if __name__ == '__main__':
  _preload()
  request = serve(sys.argv[1], int(sys.argv[2]))
  # From here on this process is `python SCRIPT ARGS...` with the request's environment.
  os.environ.clear()
  os.environ.update(request['env'])
  os.chdir(request['cwd'])
  sys.argv = list(request['argv'])
  sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
  import runpy  # pylint: disable=g-import-not-at-top
  runpy.run_path(sys.argv[0], run_name='__main__')
