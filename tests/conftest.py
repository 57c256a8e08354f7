"""Test setup: JAX on CPU with 8 simulated devices (set before jax is imported)."""
import fcntl
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = (flags + " --xla_force_host_platform_device_count=8").strip()
# Compile fast: XLA's compilation of the tiny test programs is most of the suite's time. Its
# backend optimisations and its newer CPU fusion emitters (about a third slower to compile for
# these programs) change no result beyond float rounding, which the value tests' tolerances cover.
# One codegen thread per compilation: the test workers already keep every core busy, and
# splitting a program's code generation across threads took more CPU (16 % more for
# test_nnx.py + test_scan.py in one process, 25-67 % more compiling six tiny train steps).
FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false',
                      '--xla_cpu_parallel_codegen_split_count=1')
for flag in FAST_COMPILE_FLAGS:
  if flag.split('=')[0] not in flags:
    flags += ' ' + flag
os.environ["XLA_FLAGS"] = flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests import the repository's top-level modules (trainer, configs) from its root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# One test run, one scratch folder: the process that starts the run (pytest itself, or xdist's
# controller) creates it, and every xdist worker and every subprocess a test starts inherits it
# through the environment. It holds the persistent compilation cache, so a program compiled once
# (the tiny job's train step, say) is loaded, not compiled, by every other worker and child, and
# the tiny job's trained workdir (`trained_workdir`).
RUN_DIR_VAR = 'TOKEN_LEARNER_TEST_RUN_DIR'
_OWNS_RUN_DIR = RUN_DIR_VAR not in os.environ
if _OWNS_RUN_DIR:
  os.environ[RUN_DIR_VAR] = tempfile.mkdtemp(prefix='token_learner_tests_')
RUN_DIR = os.environ[RUN_DIR_VAR]
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(RUN_DIR, 'jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomise(params, seed=1, scale=0.5, replace=False):
  """Non-trivial values for every parameter (zero / one initialisations hide mistakes): the init
  plus `scale` x N(0, 1), or with `replace` N(0, 1) alone (a 'trained' checkpoint whose values
  are distinguishable from any init)."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  noise = lambda l: rng.standard_normal(np.shape(l))
  return jax.tree.unflatten(treedef, [
      np.asarray(noise(l) if replace else np.asarray(l) + scale * noise(l), np.float32)
      for l in leaves])


@pytest.fixture
def randomise():
  return _randomise


def _subprocess_env(num_devices=None):
  """Environment of a `python main.py` / `sweep.py` child: CPU, quiet TF, fast compiles."""
  flags = ' '.join(FAST_COMPILE_FLAGS)
  if num_devices:
    flags = f'--xla_force_host_platform_device_count={num_devices} {flags}'
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS=flags)


@pytest.fixture(scope='session')
def subprocess_env():
  return _subprocess_env


# The tiny job's settings over configs/digits_tokenlearner.py (also main.py's `--config.KEY=VALUE`
# flags of the tests that run it as a process).
TINY_OVERRIDES = {
    'model.num_layers': 1, 'model.tokenlearner.num_tokens': 4, 'model.tokenlearner.loc': 1,
    'batch_size': 16,
    'eval_batch_size': 64,  # 360 test digits: the last batch is padded with 24 masked rows.
    'num_train_steps': 6, 'warmup_steps': 2, 'log_every_steps': 2,
    'checkpoint_every_steps': 2, 'keep_checkpoints': 5}


def _tiny_config(**overrides):
  """The default job shrunk: digits at 16x16, a 1-layer 64-wide ViT then 4 TokenLearner tokens,
  6 steps of batch 16, checkpoints every 2 steps; `evals={name: {field: value}}` replaces the
  evaluators."""
  from configs import digits_tokenlearner  # pylint: disable=g-import-not-at-top
  config = digits_tokenlearner.get_config()
  config.update_from_flattened_dict(TINY_OVERRIDES)
  for key, value in overrides.items():
    if key == 'evals':  # {name: {field: value}}: a new evaluator set, each section complete.
      from configs import common  # pylint: disable=g-import-not-at-top
      config.evals = {name: common.eval_config(**section) for name, section in value.items()}
    else:
      config.update_from_flattened_dict({key: value})
  return config


@pytest.fixture(scope='session')
def tiny_config():
  return _tiny_config


@pytest.fixture(scope='session')
def trained_workdir():
  """The workdir of a finished run of `_tiny_config()` on the 8 devices: checkpoints 2, 4 and 6,
  summary.json, event files. Trained once per test run, by whichever worker asks first (the
  others wait on a lock, then read it): read it in place, or `shutil.copytree` it and change the
  copy, never the original."""
  workdir = os.path.join(RUN_DIR, 'trained_workdir')
  with open(workdir + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes, also if training fails.
    if not os.path.isdir(workdir):
      import trainer  # pylint: disable=g-import-not-at-top
      partial = workdir + '.partial'
      shutil.rmtree(partial, ignore_errors=True)  # A worker that failed here before.
      trainer.train_and_evaluate(_tiny_config(), partial)
      os.rename(partial, workdir)  # Complete or absent, never half-written.
  return workdir


@pytest.fixture
def restore_params():
  """The params of checkpoint `step` of a workdir as numpy, whatever topology wrote it."""
  from token_learner.train import checkpoints  # pylint: disable=g-import-not-at-top
  return lambda workdir, step: checkpoints.restore_params(
      os.path.join(workdir, checkpoints.CHECKPOINTS, str(step)))


def _assert_batches_equal(a, b):
  """Two lists of batches (dicts of arrays) are equal bit for bit."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture
def assert_batches_equal():
  return _assert_batches_equal


# Scheduling (pytest.ini: xdist's `loadgroup`, units handed out in the collection's order): the
# longest units first, so that the workers start on them together and none is left with a long
# one while the others are done. Node id prefixes; the rest keep their order.
# The first test trains the shared `trained_workdir`; test_gcs.py (one unit: its module fixture)
# needs none of it, so the other worker starts there instead of waiting for it.
SLOW_FIRST = (
    'tests/test_multiprocess.py::test_sigkilled_run_resumes_bit_identical',
    'tests/test_gcs.py',
    'tests/test_multiprocess.py::test_two_processes_match_one_process',
    'tests/test_sweep.py',
    'tests/test_readme.py',
    'tests/test_gpu_script.py::test_cpu_smoke_group_writes_gpu_json',
    'tests/test_faults.py::test_garbled_checkpoint_falls_back_and_all_bad_is_an_error',
    'tests/test_tools.py::test_evaluate_command',
    'tests/test_tools.py::test_visualize_command',
)


def _slow_rank(item):
  return next((rank for rank, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)),
              len(SLOW_FIRST))


@pytest.hookimpl(tryfirst=True)  # Before xdist's worker reads the groups into the node ids.
def pytest_collection_modifyitems(items):
  items.sort(key=_slow_rank)  # Stable: the order within a rank is the collection's.
  # Tests that share a module-scoped fixture (a trained run, an emulator) form one unit of work,
  # run by one worker, which builds the fixture once. (xdist 3.8 groups by rewriting node ids,
  # which pytest 9.2 no longer allows: requirements.txt pins pytest 9.1.)
  for item in items:
    info = getattr(item, '_fixtureinfo', None)
    shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                    if defs and defs[-1].scope == 'module')
    if shared:
      item.add_marker(pytest.mark.xdist_group(f'{item.module.__name__}:{",".join(shared)}'))


def pytest_unconfigure(config):
  del config
  if _OWNS_RUN_DIR and 'PYTEST_XDIST_WORKER' not in os.environ:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
