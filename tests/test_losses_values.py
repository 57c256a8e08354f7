"""token_learner.train.losses against numpy float64: softmax cross-entropy with label smoothing,
sigmoid cross-entropy (Charades, §6.1.1), their gradients, mixup, dense targets and top-1 hits.

Shapes are non-square ([B, K] with B != K) so that a reduction over the wrong axis cannot pass,
and label smoothing is large enough (0.3) that a flipped sign changes the values by far more
than the tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner.train import losses

LS = 0.3


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_log_sigmoid(z):
  z = np.asarray(z, np.float64)
  return -np.logaddexp(0.0, -z)


def _with_grad(loss_fn, logits, targets, ls):
  """(per-example loss, d sum(loss) / d logits), one compiled program."""
  def f(z, t):
    per_example = loss_fn(z, t, ls)
    return per_example.sum(), per_example
  (_, per_example), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(
      jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
  return np.asarray(per_example), np.asarray(grad)


def _case(b=5, k=7, seed=0):
  rng = np.random.default_rng(seed)
  logits = 3.0 * rng.standard_normal((b, k))
  labels = rng.integers(0, k, size=b)
  return logits.astype(np.float32), labels, np.eye(k)[labels]


@pytest.mark.parametrize('ls', [0.0, LS])
def test_softmax_xent_and_its_gradient_match_numpy(ls):
  logits, _, onehot = _case()
  k = onehot.shape[-1]
  smoothed = onehot * (1 - ls) + ls / k  # every class gets ls / K, the label 1 - ls + ls / K
  want = -(smoothed * _np_log_softmax(logits)).sum(-1)
  got, grad = _with_grad(losses.softmax_xent, logits, onehot, ls)
  assert got.shape == (5,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # d loss / d logits = softmax(logits) - smoothed targets (rows sum to 0).
  np.testing.assert_allclose(grad, np.exp(_np_log_softmax(logits)) - smoothed, atol=1e-6)


def test_label_smoothing_direction():
  """Smoothing pulls the target towards uniform: a confident correct prediction costs more
  with smoothing, a uniform prediction costs exactly log K either way."""
  k = 4
  onehot = np.eye(k)[[2, 2]]
  logits = np.array([[0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # confident, uniform
  plain, _ = _with_grad(losses.softmax_xent, logits, onehot, 0.0)
  smooth, _ = _with_grad(losses.softmax_xent, logits, onehot, 0.2)
  lp = _np_log_softmax(logits[0])
  assert smooth[0] == pytest.approx(-(0.85 * lp[2] + 0.05 * (lp[0] + lp[1] + lp[3])), rel=1e-5)
  assert smooth[0] > plain[0] + 1.0
  np.testing.assert_allclose([plain[1], smooth[1]], np.log(k), rtol=1e-6)


@pytest.mark.parametrize('ls', [0.0, LS])
def test_sigmoid_xent_and_its_gradient_match_numpy(ls):
  rng = np.random.default_rng(1)
  logits = (4.0 * rng.standard_normal((3, 6))).astype(np.float32)
  targets = (rng.random((3, 6)) < 0.4).astype(np.float32)
  t = targets * (1 - ls) + ls / 2
  want = -(t * _np_log_sigmoid(logits) + (1 - t) * _np_log_sigmoid(-logits)).sum(-1)
  got, grad = _with_grad(losses.sigmoid_xent, logits, targets, ls)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(grad, 1 / (1 + np.exp(-logits.astype(np.float64))) - t, atol=1e-6)
  # Saturated logits stay finite and exact: log(1 + e^-50) ~ 2e-22, log(1 + e^50) = 50.
  far, _ = _with_grad(losses.sigmoid_xent, [[50.0, -50.0]], [[1.0, 1.0]], 0.0)
  np.testing.assert_allclose(far, [50.0], rtol=1e-6)


def test_dense_targets_and_top1_hits():
  hits = jax.jit(lambda z, labels: losses.top1_hits(z, losses.dense_targets(labels, 4)))
  np.testing.assert_array_equal(jax.jit(losses.dense_targets, static_argnums=1)(
      jnp.array([2, 0, 1]), 4), np.eye(4)[[2, 0, 1]])
  multi = np.array([[0.0, 1.0, 1.0, 0.0]], np.float32)
  np.testing.assert_array_equal(losses.dense_targets(multi, 4), multi)  # passes through
  logits = jnp.array([[0.0, 0.0, 5.0, 0.0],   # top 2 = label 2: hit
                      [0.0, 5.0, 0.0, 0.0],   # top 1, label 0: miss
                      [0.0, 5.0, 0.0, 9.0]])  # top 3, label 1: miss
  np.testing.assert_array_equal(hits(logits, jnp.array([2, 0, 1])), [1.0, 0.0, 0.0])
  # Mixed targets: the hit is the higher-weighted class.
  mixed = jnp.array([[0.7, 0.3, 0.0, 0.0]] * 3)
  np.testing.assert_array_equal(hits(logits[:, [3, 1, 2, 0]], mixed), [0.0, 0.0, 1.0])


def test_mixup_is_a_convex_mix_with_the_previous_row_and_beta_weights():
  """inputs and targets mixed with the same lam and the batch rolled by one; over many keys
  lam ~ Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))."""
  alpha = 0.2
  rng = np.random.default_rng(2)
  x = rng.standard_normal((6, 3, 2)).astype(np.float32)
  y = np.eye(5)[[0, 1, 2, 3, 4, 0]].astype(np.float32)
  mix = jax.jit(jax.vmap(lambda k: losses.mixup(k, jnp.asarray(x), jnp.asarray(y), alpha)))
  mx, my = jax.device_get(mix(jax.random.split(jax.random.key(0), 1000)))
  lam = my[:, 1, 1].astype(np.float64)  # row 1: its own label 1 with weight lam...
  np.testing.assert_allclose(my[:, 1, 0], 1 - lam, atol=1e-6)  # ...row 0's label 0 with 1 - lam
  partner = [5, 0, 1, 2, 3, 4]
  for i in (0, 1, 2, 999):
    np.testing.assert_allclose(mx[i], lam[i] * x + (1 - lam[i]) * x[partner], atol=1e-5)
    np.testing.assert_allclose(my[i], lam[i] * y + (1 - lam[i]) * y[partner], atol=1e-6)
  np.testing.assert_allclose(my.sum(-1), 1.0, rtol=1e-5)
  assert 0.0 <= lam.min() and lam.max() <= 1.0
  assert lam.mean() == pytest.approx(0.5, abs=0.05)
  assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)
