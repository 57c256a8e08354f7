"""token_learner.metrics against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner.train import losses as metrics


def test_average_views_logits_and_probs_by_hand():
  logits = np.array([[[1.0, 3.0], [3.0, -1.0], [2.0, 1.0]],
                     [[0.0, 0.0], [4.0, 2.0], [-2.0, 2.0]]], np.float32)  # [N=2, V=3, K=2]
  np.testing.assert_allclose(metrics.average_views(logits, 'logits'),
                             [[2.0, 1.0], [2 / 3, 4 / 3]], rtol=1e-6)
  # probs, softmax over 2 classes: p(class 0) = sigmoid(l0 - l1) per view.
  sig = lambda z: 1 / (1 + np.exp(-z))
  p0 = [(sig(-2.0) + sig(4.0) + sig(1.0)) / 3, (sig(0.0) + sig(2.0) + sig(-4.0)) / 3]
  got = metrics.average_views(jnp.asarray(logits), 'probs')
  np.testing.assert_allclose(np.asarray(got)[:, 0], p0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got).sum(-1), [1.0, 1.0], rtol=1e-5)
  multi = metrics.average_views(logits, 'probs', multi_label=True)
  np.testing.assert_allclose(multi[0, 1], (sig(3.0) + sig(-1.0) + sig(1.0)) / 3, rtol=1e-6)
  with pytest.raises(ValueError, match='how'):
    metrics.average_views(logits, 'max')


def test_average_precision_by_hand():
  # Ranked scores: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2.
  ap = metrics.average_precision([0.1, 0.9, 0.7, 0.8], [0, 1, 1, 0])
  assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_map_three_classes_by_hand_ignores_class_without_positives():
  scores = np.array([[0.9, 0.2, 0.5],
                     [0.3, 0.8, 0.4],
                     [0.6, 0.7, 0.3],
                     [0.1, 0.1, 0.9]])
  targets = np.array([[1, 0, 0],
                      [0, 1, 0],
                      [0, 0, 0],
                      [1, 0, 0]])
  # class 0: ranking 0.9(+) 0.6(-) 0.3(-) 0.1(+) -> (1/1 + 2/4) / 2 = 0.75
  # class 1: ranking 0.8(+) ...                  -> 1.0
  # class 2: no positive                          -> ignored
  assert metrics.mean_average_precision(scores, targets) == pytest.approx((0.75 + 1.0) / 2)
  # A padding row (mask 0) that would otherwise rank first in class 1 as a negative is dropped.
  padded_s = np.concatenate([scores, [[0.0, 0.99, 0.0]]])
  padded_t = np.concatenate([targets, [[0, 0, 0]]])
  assert metrics.mean_average_precision(padded_s, padded_t, mask=[1, 1, 1, 1, 0]) == \
      pytest.approx(0.875)
  acc = metrics.MultiLabelAccumulator()
  acc.update(padded_s[:2], padded_t[:2])
  acc.update(padded_s[2:], padded_t[2:], mask=[1, 1, 0])
  assert acc.count == 4 and acc.result() == pytest.approx(0.875)


def test_sigmoid_xent_matches_formula_and_smoothing():
  logits = jnp.array([[2.0, -1.0, 0.0]])
  targets = jnp.array([[1.0, 0.0, 1.0]])
  sig = lambda z: 1 / (1 + np.exp(-z))
  want = -(np.log(sig(2.0)) + np.log(1 - sig(-1.0)) + np.log(sig(0.0)))
  np.testing.assert_allclose(metrics.sigmoid_xent(logits, targets), [want], rtol=1e-5)
  smooth = metrics.sigmoid_xent(logits, targets, label_smoothing=0.2)
  t = np.array([0.9, 0.1, 0.9])
  want_s = -(t * np.log(sig(np.array([2.0, -1.0, 0.0]))) +
             (1 - t) * np.log(1 - sig(np.array([2.0, -1.0, 0.0])))).sum()
  np.testing.assert_allclose(smooth, [want_s], rtol=1e-5)
  assert np.isfinite(metrics.sigmoid_xent(jnp.array([[1e4, -1e4]]), jnp.array([[0.0, 1.0]])))


def test_mean_per_class_accuracy():
  # class 0: 2/2, class 1: 0/1, class 2: 1/2 -> (1 + 0 + 0.5) / 3
  acc = metrics.mean_per_class_accuracy([0, 0, 0, 2, 1], [0, 0, 1, 2, 2], 4)
  assert acc == pytest.approx(0.5)
