"""Test setup: JAX on CPU with 8 simulated devices (set before jax is imported)."""
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = (flags + " --xla_force_host_platform_device_count=8").strip()
# Compile fast: XLA's backend optimisations cost most of the suite's time and change no result
# beyond float rounding, which the value tests' tolerances cover.
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests import the repository's top-level modules (trainer, configs) from its root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# Trainer tests compile the same few programs again and again: cache them for the session.
jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='jax_cache_'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
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
  flags = '--xla_backend_optimization_level=0'
  if num_devices:
    flags = f'--xla_force_host_platform_device_count={num_devices} {flags}'
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS=flags)


@pytest.fixture(scope='session')
def subprocess_env():
  return _subprocess_env


def _tiny_config(**overrides):
  """The default job shrunk: digits at 16x16, a 1-layer 64-wide ViT then 4 TokenLearner tokens,
  6 steps of batch 16, checkpoints every 2 steps; `evals={name: {field: value}}` replaces the
  evaluators."""
  from configs import digits_tokenlearner  # pylint: disable=g-import-not-at-top
  config = digits_tokenlearner.get_config()
  config.update_from_flattened_dict({
      'model.num_layers': 1, 'model.tokenlearner.num_tokens': 4, 'model.tokenlearner.loc': 1,
      'batch_size': 16,
      'eval_batch_size': 64,  # 360 test digits: the last batch is padded with 24 masked rows.
      'num_train_steps': 6, 'warmup_steps': 2, 'log_every_steps': 2,
      'checkpoint_every_steps': 2, 'keep_checkpoints': 5})
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
