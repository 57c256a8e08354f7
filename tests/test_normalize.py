"""uint8 batches: pixels to the device, normalised inside the jitted steps (issue 18)."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner.data import normalize as normalize_lib
from token_learner.evals import classification
from token_learner.train import metrics as metrics_lib
from token_learner.train import setup

MEAN, STD = (0.5, 0.25, 0.1), (0.5, 0.2, 0.4)


def _pixels(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_normalize_equals_the_float64_formula():
  x = _pixels((4, 5, 6, 3))
  x[0, 0, 0] = (0, 255, 128)
  want = (x.astype(np.float64) / 255 - np.asarray(MEAN)) / np.asarray(STD)
  got = jax.jit(lambda a: normalize_lib.normalize(a, MEAN, STD))(x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(normalize_lib.normalize_np(x, MEAN, STD), want, atol=1e-12)
  assert normalize_lib.normalize(x, MEAN, STD, jnp.bfloat16).dtype == jnp.bfloat16
  # Float inputs are normalised already: only cast.
  f = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 2, 3)
  np.testing.assert_array_equal(normalize_lib.normalize(f, MEAN, STD), f)
  # Figures: pixels / 255 for uint8, mean / std undone for floats.
  np.testing.assert_allclose(normalize_lib.to_unit(x, MEAN, STD), x / 255, atol=1e-7)
  np.testing.assert_allclose(normalize_lib.to_unit(want.astype(np.float32), MEAN, STD), x / 255,
                             atol=1e-6)


def test_normalize_imports_no_tensorflow():
  code = ('import sys; from token_learner.data import normalize; '
          'from token_learner.train import step; assert "tensorflow" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True)


@pytest.fixture(scope='module')
def run(tiny_config):
  config = tiny_config()
  config.dataset.mean, config.dataset.std = MEAN, STD
  return setup.build(experiment_lib.from_config(config), devices=jax.devices()[:8])


def test_uint8_batch_through_train_step_equals_float_path(run):
  """The step on uint8 pixels == the step on (pixels / 255 - mean) / std computed in numpy
  float64 (then float32): same loss and the same parameters after the update."""
  pixels = _pixels((run.cfg.batch_size, *run.input_shape))
  labels = np.arange(run.cfg.batch_size, dtype=np.int32) % 10
  floats = normalize_lib.normalize_np(pixels, MEAN, STD).astype(np.float32)
  results = []
  for inputs in (pixels, floats):
    batch = data.make_global_batch({'inputs': inputs, 'labels': labels}, run.batch_sharding)
    state, metrics = run.train_step(run.init_state(), batch, run.dropout_rng)
    results.append(jax.device_get((state.params, metrics)))
  (p8, m8), (pf, mf) = results
  np.testing.assert_allclose(m8['loss'], mf['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p8, pf)


def test_uint8_batch_through_eval_step_equals_float_path(run):
  b = 16
  pixels = _pixels((b, *run.input_shape), seed=1)
  floats = normalize_lib.normalize_np(pixels, MEAN, STD).astype(np.float32)
  step = classification.compile_eval_step(run.model, run.cfg, run.mesh,
                                          run.state_shardings.params, multi_view=False,
                                          mean=MEAN, std=STD)
  params = run.init_state().params
  out = []
  for inputs in (pixels, floats):
    batch = data.make_global_batch({'inputs': inputs, 'labels': np.arange(b, dtype=np.int32) % 10,
                                    'mask': np.ones(b, np.float32)}, run.batch_sharding)
    empty = jax.jit(metrics_lib.ClassificationMetrics.empty, out_shardings=run.replicated)()
    metrics, _ = step(params, batch, empty)
    out.append(metrics_lib.eval_results(jax.device_get(metrics)))
  assert out[0]['accuracy'] == out[1]['accuracy']
  assert out[0]['loss'] == pytest.approx(out[1]['loss'], rel=1e-5)


def test_synthetic_batch_is_uint8(run):
  batch = run.synthetic_batch(8)
  assert batch['inputs'].dtype == jnp.uint8 and batch['inputs'].shape == (8, *run.input_shape)


def _check_options(dataset):
  from token_learner.data import stream  # pylint: disable=g-import-not-at-top
  options = dataset.options()
  assert options.deterministic
  assert options.threading.private_threadpool_size == stream.THREADPOOL_SIZE >= 1
  assert options.threading.max_intra_op_parallelism == 1


def test_train_and_eval_pipelines_set_threading_options():
  images = data.from_dict({'name': 'digits', 'image_size': 8})
  videos = data.from_dict({'name': 'moving_digits', 'num_frames': 2, 'image_size': 16})
  for cfg in (images, videos):
    train = data.train_iterator(cfg, seed=0, batch_size=4)
    _check_options(train.dataset)
    _check_options(data.eval_input(cfg, batch_size=4).dataset)
    batch = next(train)
    assert batch['inputs'].dtype == np.uint8 and batch['inputs'].shape == (4, *cfg.example_shape)
