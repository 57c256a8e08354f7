"""token_learner.train.metrics and losses.average_views against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner.train import losses
from token_learner.train import metrics


def test_average_views_logits_and_probs_by_hand():
  logits = np.array([[[1.0, 3.0], [3.0, -1.0], [2.0, 1.0]],
                     [[0.0, 0.0], [4.0, 2.0], [-2.0, 2.0]]], np.float32)  # [N=2, V=3, K=2]
  np.testing.assert_allclose(losses.average_views(logits, 'logits'),
                             [[2.0, 1.0], [2 / 3, 4 / 3]], rtol=1e-6)
  # probs, softmax over 2 classes: p(class 0) = sigmoid(l0 - l1) per view.
  sig = lambda z: 1 / (1 + np.exp(-z))
  p0 = [(sig(-2.0) + sig(4.0) + sig(1.0)) / 3, (sig(0.0) + sig(2.0) + sig(-4.0)) / 3]
  got = losses.average_views(jnp.asarray(logits), 'probs')
  np.testing.assert_allclose(np.asarray(got)[:, 0], p0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got).sum(-1), [1.0, 1.0], rtol=1e-5)
  multi = losses.average_views(logits, 'probs', multi_label=True)
  np.testing.assert_allclose(multi[0, 1], (sig(3.0) + sig(-1.0) + sig(1.0)) / 3, rtol=1e-6)
  with pytest.raises(ValueError, match='how'):
    losses.average_views(logits, 'max')


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
  # Row 2 has no label: the devkit ranks it last (-inf) in every class.
  # class 0: ranking 0.9(+) 0.3(-) 0.1(+) [row 2] -> (1/1 + 2/3) / 2 = 5/6
  # class 1: ranking 0.8(+) ...                   -> 1.0
  # class 2: no positive                           -> ignored
  assert metrics.mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1.0) / 2)
  # A padding row (mask 0) that would otherwise rank first in class 1 as a negative is dropped.
  padded_s = np.concatenate([scores, [[0.0, 0.99, 0.0]]])
  padded_t = np.concatenate([targets, [[0, 0, 0]]])
  assert metrics.mean_average_precision(padded_s, padded_t, mask=[1, 1, 1, 1, 0]) == \
      pytest.approx(11 / 12)
  acc = metrics.MultiLabelAccumulator()
  acc.update(padded_s[:2], padded_t[:2])
  acc.update(padded_s[2:], padded_t[2:], mask=[1, 1, 0])
  assert acc.count == 4 and acc.result() == pytest.approx(11 / 12)
  assert acc.results() == {'map': pytest.approx(11 / 12)}


def test_sigmoid_xent_matches_formula_and_smoothing():
  logits = jnp.array([[2.0, -1.0, 0.0]])
  targets = jnp.array([[1.0, 0.0, 1.0]])
  sig = lambda z: 1 / (1 + np.exp(-z))
  want = -(np.log(sig(2.0)) + np.log(1 - sig(-1.0)) + np.log(sig(0.0)))
  np.testing.assert_allclose(losses.sigmoid_xent(logits, targets), [want], rtol=1e-5)
  smooth = losses.sigmoid_xent(logits, targets, label_smoothing=0.2)
  t = np.array([0.9, 0.1, 0.9])
  want_s = -(t * np.log(sig(np.array([2.0, -1.0, 0.0]))) +
             (1 - t) * np.log(1 - sig(np.array([2.0, -1.0, 0.0])))).sum()
  np.testing.assert_allclose(smooth, [want_s], rtol=1e-5)
  assert np.isfinite(losses.sigmoid_xent(jnp.array([[1e4, -1e4]]), jnp.array([[0.0, 1.0]])))


def test_mean_per_class_accuracy():
  # class 0: 2/2, class 1: 0/1, class 2: 1/2 -> (1 + 0 + 0.5) / 3
  acc = metrics.mean_per_class_accuracy([0, 0, 0, 2, 1], [0, 0, 1, 2, 2], 4)
  assert acc == pytest.approx(0.5)


def test_charades_map_as_the_devkit_with_an_unlabeled_video():
  """The official devkit sets the scores of a video without labels to -inf: it can never rank
  above a positive, however confident the model is on it."""
  scores = np.array([[0.9, 0.2],
                     [0.3, 0.8],
                     [0.95, 0.9],  # no label at all
                     [0.1, 0.1]])
  targets = np.array([[1, 0], [0, 1], [0, 0], [1, 0]])
  # class 0: 0.9(+) 0.3(-) 0.1(+) then the unlabeled video -> (1 + 2/3) / 2 = 5/6
  # class 1: 0.8(+) first -> 1.0      (were it ranked by 0.95 / 0.9: 1/2 + 2/4 and 1/2)
  assert metrics.mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1.0) / 2)
  # As a plain AP over all rows it would be (0.5 + 0.5) / 2: the devkit rule changes the value.
  assert metrics.average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(0.5)


def test_mean_per_class_accuracy_from_the_accumulator():
  scores = np.eye(4)[[0, 0, 0, 2, 1]]  # predictions 0 0 0 2 1
  acc = metrics.MultiLabelAccumulator()
  acc.update(scores[:3], np.array([0, 0, 1]))
  acc.update(np.concatenate([scores[3:], [[0, 0, 0, 9.0]]]), np.array([2, 2, 3]),
             mask=[1, 1, 0])
  assert acc.results() == {'mean_per_class_accuracy': pytest.approx(0.5)}


def test_real_accuracy_skips_empty_sets_and_padding():
  logits = jnp.array([[3.0, 1.0, 0.0],   # top 0, real {0, 2}: hit
                      [0.0, 2.0, 1.0],   # top 1, real {2}: miss
                      [5.0, 0.0, 0.0],   # real {}: skipped
                      [0.0, 0.0, 4.0],   # top 2, real {1, 2}: hit
                      [9.0, 0.0, 0.0]])  # padding (mask 0)
  real = jnp.array([[1, 0, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1], [1, 0, 0]], jnp.float32)
  targets = jnp.eye(3)[jnp.array([0, 1, 0, 2, 0])]
  mask = jnp.array([1, 1, 1, 1, 0])
  m = metrics.ClassificationMetrics.single_from_model_output(
      logits=logits, targets=targets, loss=jnp.zeros(5), mask=mask, real_labels=real)
  results = metrics.eval_results(m)
  assert results['real_accuracy'] == pytest.approx(2 / 3)
  assert results['accuracy'] == pytest.approx(1.0)  # the original labels: all four right
  plain = metrics.ClassificationMetrics.single_from_model_output(
      logits=logits, targets=targets, loss=jnp.zeros(5), mask=mask)
  assert 'real_accuracy' not in metrics.eval_results(plain.merge(plain))
