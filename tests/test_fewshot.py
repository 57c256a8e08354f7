"""Few-shot linear evaluation: the closed-form solve against numpy least squares, separable
features, exact shot sampling, and the evaluator on the digits through the data layer."""
import types

import jax
import numpy as np
import pytest

from token_learner import data
from token_learner.evals import config as evals_config
from token_learner.evals import fewshot
from token_learner.train import sharding


def test_solve_matches_an_augmented_least_squares_reference():
  rng = np.random.default_rng(0)
  x, labels, l2 = rng.normal(size=(30, 6)), rng.integers(0, 4, size=30), 3.0
  w = fewshot.solve(x, labels, 4, l2)
  # Independent: ridge as plain least squares on [X 1; sqrt(l2) I] w = [Y; 0].
  x1 = np.concatenate([x, np.ones((30, 1))], axis=1)
  y = np.where(np.eye(4)[labels] > 0, 1.0, -1.0)
  a = np.concatenate([x1, np.sqrt(l2) * np.eye(7)])
  b = np.concatenate([y, np.zeros((7, 4))])
  want, *_ = np.linalg.lstsq(a, b, rcond=None)
  np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-10)
  np.testing.assert_array_equal(fewshot.predict(w, x), np.argmax(x1 @ want, axis=1))


def test_separable_features_reach_100_percent_from_one_shot():
  rng = np.random.default_rng(1)
  centres = 10.0 * np.eye(5, 16)
  make = lambda n: (lambda y: (centres[y] + 0.1 * rng.normal(size=(n, 16)), y))(
      rng.integers(0, 5, size=n))
  result = fewshot.few_shot_accuracy(make(200), make(100), 5, shots=(1, 5), seeds=2,
                                     l2_reg=1.0)
  assert result == {'1shot': 1.0, '5shot': 1.0}


def test_sample_shots_takes_k_of_every_class():
  labels = np.array([0] * 7 + [1] * 3 + [2] * 9)
  idx = fewshot.sample_shots(labels, 4, np.random.default_rng(0))
  assert sorted(np.bincount(labels[idx]).tolist()) == [3, 4, 4]  # class 1 has only 3
  assert len(set(idx.tolist())) == len(idx)


class _Pixels:
  """A 'model' whose pre-logit features are the raw pixels."""

  def apply(self, variables, x, train):
    del variables, train
    return None, {'pre_logits': x.reshape(x.shape[0], -1)}


def _pixel_run(num_devices):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  return types.SimpleNamespace(mesh=mesh, model=_Pixels(), state_shardings=types.SimpleNamespace(
      params=sharding.replicated(mesh)))


def test_evaluator_on_digit_pixels_through_the_data_layer():
  cfg = data.from_dict(dict(name='digits', image_size=8, augment=False))
  evaluator = fewshot.FewShotEvaluator(
      'fewshot', evals_config.FewShotEval(shots=(1, 10), seeds=2, l2_reg=1.0, batch_size=64),
      _pixel_run(2), cfg, data.dataset_info(cfg))
  result, images = evaluator(None)
  assert set(result) == {'1shot', '10shot'} and not images
  # Raw 8x8 digits are nearly linearly separable: 10 shots per class give most of the test set.
  assert 0.1 < result['1shot'] < result['10shot'] and result['10shot'] > 0.8


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='config.evals.few.shots'):
    evals_config.from_dict('few', {'kind': 'fewshot', 'shots': (0,)})
  with pytest.raises(ValueError, match='config.evals.few.seeds'):
    evals_config.from_dict('few', {'kind': 'fewshot', 'seeds': 0})
  cfg = data.from_dict(dict(name='moving_digits'))
  with pytest.raises(ValueError, match='video dataset'):
    fewshot.FewShotEvaluator('fewshot', evals_config.FewShotEval(), _pixel_run(1), cfg, None)
