"""What the fault suite (tools/fault_suite.py) runs its probes with: main.py of the tiny digits
job in subprocesses, optionally through `_inject` (a fault inside the process), and readers of
what a run left in its workdir (steps, parameters, TensorBoard events).

    python -m tools.fault_harness _inject KIND MAIN_PY_ARGS...   # what `command(inject=KIND)` runs
"""
import collections
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
           XLA_FLAGS='--xla_force_host_platform_device_count=2 '
                     '--xla_backend_optimization_level=0')
STEPS = 120
TINY = {
    'model.num_layers': 1, 'model.tokenlearner.num_tokens': 4, 'model.tokenlearner.loc': 1,
    'model.dropout_rate': 0.1, 'batch_size': 16, 'eval_batch_size': 120,
    'num_train_steps': STEPS, 'warmup_steps': 2, 'log_every_steps': 1,
    'evals.eval.every_steps': 60,
    'checkpoint_every_steps': 10, 'keep_checkpoints': 3,
}
RESULTS = []


def command(workdir, overrides=None, extra=(), inject=None):
  """`python main.py` of the tiny job (or through `_inject` to add a fault inside it)."""
  args = [f'--config={os.path.join(REPO, "configs", "digits_tokenlearner.py")}',
          f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in dict(TINY, **(overrides or {})).items()]
  prefix = [sys.executable, '-m', 'tools.fault_harness', '_inject', inject] if inject else [
      sys.executable, os.path.join(REPO, 'main.py')]
  return prefix + args + list(extra)


def run(workdir, overrides=None, extra=(), inject=None, timeout=600, env=None):
  """Runs main.py to the end: (returncode, combined output, seconds)."""
  start = time.time()
  p = subprocess.run(command(workdir, overrides, extra, inject), cwd=REPO, env=env or ENV,
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout + p.stderr, time.time() - start


def start(workdir, overrides=None, log=None, env=None, extra=()):
  return subprocess.Popen(command(workdir, overrides, extra), cwd=REPO, env=env or ENV,
                          stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def record(probe, expectation, ok, detail=''):
  RESULTS.append((probe, expectation, 'PASS' if ok else 'FAIL', detail))
  print(f'[{"PASS" if ok else "FAIL"}] {probe}: {detail}', flush=True)


def steps_in(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def params(workdir, step, verify=True):
  """The parameters of checkpoint `step`, verified against its digest unless `verify=False`
  (to see what a garbled checkpoint holds)."""
  from token_learner.train import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.restore_params(os.path.join(workdir, 'checkpoints', str(step)),
                                    verify=verify)


def identical(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def events(workdir):
  """Counter of (tag, step) over the workdir's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = collections.Counter()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    try:
      for event in tf.compat.v1.train.summary_iterator(path):
        out.update((v.tag, event.step) for v in event.summary.value)
    except tf.errors.DataLossError:
      pass
  return out


def last_line(output, needle):
  return next((l for l in reversed(output.splitlines()) if needle in l), '')


def quote(line, needle, width=100):
  """`line` from `needle` on, shortened: the part of a message a user reads first."""
  line = line.strip()
  return line[max(0, line.find(needle)):][:width]


# What the corruption probes (and tests/test_faults.py) do to checkpoint files.


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def garble(path, size=2048, at=0.5):
  import numpy as np  # pylint: disable=g-import-not-at-top
  n = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(max(0, int(n * at) - size // 2))
    f.write(np.random.default_rng(0).bytes(min(size, n)))


def array_files(workdir, step):
  return sorted(glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'default', '**', 'd',
                                       '*'), recursive=True), key=os.path.getsize)


def garble_silently(workdir, step):
  """8 bytes of an array file changed so that the checkpoint still restores, other values."""
  before = params(workdir, step, verify=False)
  for at in (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.9, 0.1):
    for path in reversed(array_files(workdir, step)):
      content = open(path, 'rb').read()
      garble(path, 8, at)
      try:
        if not identical(before, params(workdir, step, verify=False)):
          return
      except Exception:  # pylint: disable=broad-except
        pass
      open(path, 'wb').write(content)
  raise RuntimeError('no silent garbling found')


def inject(kind, argv):
  """Runs main.py in this process with a fault: 'nojit' (jax.jit raises),
  'nan_from_step_<k>' (inputs of step k onwards are NaN) or 'eio_restore' (every checkpoint
  read fails with EIO, as on a failing disk or network filesystem)."""
  import runpy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  # Imported before jax.jit is patched (clu decorates functions with jax.jit at import).
  from token_learner.train import loop  # pylint: disable=g-import-not-at-top
  if kind in ('nojit', 'malformed'):
    def no_jit(*args, **kwargs):
      raise AssertionError('compiled before validating the config')
    jax.jit = no_jit
  if kind == 'malformed':  # argv: a JSON list of main.py argument lists.
    import contextlib  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    import main as main_module  # pylint: disable=g-import-not-at-top
    for args in json.loads(argv[0]):
      values = flags.FlagValues()  # main.py's config flag, parsed as on its command line.
      config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                      sys_argv=['main.py'] + args)
      flags.DEFINE_string('workdir', None, '', flag_values=values)
      values(['main.py'] + args)
      err = io.StringIO()
      with contextlib.redirect_stderr(err):
        try:
          main_module.train(values.config, values.workdir)
          code = 0
        except SystemExit as e:
          code = e.code
        except Exception as e:  # pylint: disable=broad-except
          code, err = 1, io.StringIO(f'Traceback: {type(e).__name__}: {e}')
      print('RESULT ' + json.dumps([code, [l for l in err.getvalue().splitlines()
                                           if 'config error' in l or 'Traceback' in l]]),
            flush=True)
    return
  elif kind == 'eio_restore':
    import errno  # pylint: disable=g-import-not-at-top
    from token_learner.train import checkpoints  # pylint: disable=g-import-not-at-top

    def failing_restore(*args, **kwargs):
      raise OSError(errno.EIO, 'Input/output error (injected)')
    checkpoints.ocp.CheckpointManager.restore = failing_restore
    checkpoints.BACKOFF_S = 0.1
  elif kind.startswith('nan_from_step_'):
    import functools  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from token_learner import data  # pylint: disable=g-import-not-at-top
    first = int(kind.rsplit('_', 1)[1])

    def nan_iterator(cfg, start_step=0, **kwargs):
      for step, batch in enumerate(data.train_iterator(cfg, start_step=start_step, **kwargs),
                                   start_step):
        if step + 1 >= first:
          # Float inputs are model inputs as they are (uint8 pixels cannot hold a NaN).
          batch = dict(batch, inputs=np.full(batch['inputs'].shape, np.nan, np.float32))
        yield batch
    # main.py calls loop.train_and_evaluate: its input seam gets the NaN batches.
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, train_input=nan_iterator)
  sys.argv = [os.path.join(REPO, 'main.py')] + argv
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  if len(sys.argv) > 2 and sys.argv[1] == '_inject':
    inject(sys.argv[2], sys.argv[3:])
