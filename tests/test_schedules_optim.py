"""token_learner.train.optim by value: the learning-rate schedules, AdamW / Adam / momentum / SGD
updates, the weight-decay mask and global-norm clipping, each against numpy float64 written here.

The optimizers are optax's; what is tested is how the config drives them: the schedule's values
at the steps the optimizer actually uses, b1 = 0.9, b2 = 0.999, eps = 1e-8 (optax's Adam
defaults; the config has no fields for them), decoupled weight decay for adamw and L2 for the
others, the decay mask (config.weight_decay_regex), and the clip before everything.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner.train import optim
from token_learner.train.config import TrainConfig

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam / adamw defaults


def _cfg(**kw):
  base = dict(num_train_steps=10, learning_rate=0.5, warmup_steps=0)
  return TrainConfig(**{**base, **kw})


def _np_schedule(step, peak, warmup, total, kind):
  """The documented schedule: linear 0 -> peak over `warmup` steps, then cosine / linear to 0
  over the remaining total - warmup steps (at least 1)."""
  if step < warmup:
    return peak * step / warmup
  decay = max(total - warmup, 1)
  frac = min(step - warmup, decay) / decay
  if kind == 'cosine':
    return peak * 0.5 * (1.0 + np.cos(np.pi * frac))
  return peak * (1.0 - frac)


@pytest.mark.parametrize('kind', ['cosine', 'linear'])
@pytest.mark.parametrize('warmup', [0, 4])
def test_schedule_values_at_chosen_steps(kind, warmup):
  total, peak = 20, 0.3
  fn = optim.learning_rate_fn(_cfg(num_train_steps=total, learning_rate=peak,
                                   warmup_steps=warmup, lr_schedule=kind))
  mid = warmup + (total - warmup) // 2
  steps = [0, 1, warmup - 1, warmup, warmup + 1, mid, total - 1, total, total + 5]
  for s in sorted({s for s in steps if s >= 0}):
    assert float(fn(s)) == pytest.approx(_np_schedule(s, peak, warmup, total, kind),
                                         abs=1e-7), s
  # Landmarks written out: warmup starts at 0 and ends at the peak; the decay is half-way at
  # mid (both kinds) and 0 at the end.
  assert float(fn(0)) == pytest.approx(0.0 if warmup else peak, rel=1e-6, abs=1e-8)
  assert float(fn(warmup)) == pytest.approx(peak)
  assert float(fn(mid)) == pytest.approx(peak / 2, rel=1e-5)
  assert float(fn(total)) == pytest.approx(0.0, abs=1e-8)
  if warmup:
    assert float(fn(1)) == pytest.approx(peak / warmup)


def _tree(rng):
  """Params / grads with a kernel, a bias and a LayerNorm scale (only the kernel decays)."""
  return {'Dense_0': {'kernel': rng.standard_normal((3, 2)), 'bias': rng.standard_normal(2)},
          'LayerNorm_0': {'scale': rng.standard_normal(2)}}


def _run(cfg, params, grads_seq):
  """Applies the config's optimizer (with its own schedule) for len(grads_seq) updates."""
  tx = optim.create_optimizer(cfg, optim.learning_rate_fn(cfg))
  p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  state = tx.init(p)
  for g in grads_seq:
    updates, state = tx.update(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), g), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  return jax.tree.map(np.asarray, p)


def _np_clip(grads, max_norm):
  leaves = jax.tree.leaves(grads)
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in leaves))
  scale = 1.0 if max_norm <= 0 or norm <= max_norm else max_norm / norm
  return jax.tree.map(lambda g: g * scale, grads)


def _np_optimizer(cfg, params, grads_seq):
  """numpy float64 AdamW / Adam / momentum / SGD with the kernel-only decay mask and clipping."""
  decays = {('Dense_0', 'kernel')}
  p = {k: dict(v) for k, v in params.items()}
  m = {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in params.items()}
  v2 = {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in params.items()}
  for t, grads in enumerate(grads_seq):
    lr = _np_schedule(t, cfg.learning_rate, cfg.warmup_steps, cfg.num_train_steps,
                      cfg.lr_schedule)
    grads = _np_clip(grads, cfg.grad_clip_norm)
    for mod in p:
      for name in p[mod]:
        g, w = grads[mod][name], p[mod][name]
        wd = cfg.weight_decay if (mod, name) in decays else 0.0
        if cfg.optimizer != 'adamw':
          g = g + wd * w  # L2
        if cfg.optimizer in ('adamw', 'adam'):
          m[mod][name] = B1 * m[mod][name] + (1 - B1) * g
          v2[mod][name] = B2 * v2[mod][name] + (1 - B2) * g * g
          mhat = m[mod][name] / (1 - B1 ** (t + 1))
          vhat = v2[mod][name] / (1 - B2 ** (t + 1))
          step = mhat / (np.sqrt(vhat) + EPS)
          if cfg.optimizer == 'adamw':
            step = step + wd * w  # decoupled, scaled by the learning rate like the update
        elif cfg.optimizer == 'momentum':
          m[mod][name] = g + cfg.momentum * m[mod][name]
          step = m[mod][name]
        else:
          step = g
        p[mod][name] = w - lr * step
  return p


@pytest.mark.parametrize('kw', [
    dict(optimizer='adamw', weight_decay=0.3),
    dict(optimizer='adamw', weight_decay=0.3, warmup_steps=1, grad_clip_norm=0.5),
    dict(optimizer='adam', weight_decay=0.2),
    dict(optimizer='momentum', momentum=0.8, weight_decay=0.1, lr_schedule='linear'),
    dict(optimizer='sgd', weight_decay=0.1, grad_clip_norm=1.0, warmup_steps=2),
], ids=['adamw', 'adamw_warmup_clip', 'adam_l2', 'momentum_l2_linear', 'sgd_clip_warmup'])
def test_three_updates_match_numpy(kw):
  rng = np.random.default_rng(0)
  cfg = _cfg(num_train_steps=6, **kw)
  params = _tree(rng)
  grads_seq = [jax.tree.map(lambda a: 2.0 * a, _tree(rng)) for _ in range(3)]  # norms > clip
  got = _run(cfg, params, grads_seq)
  want = _np_optimizer(cfg, params, grads_seq)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5), got, want)
  # Every parameter moved (a zero learning rate or a frozen leaf would not).
  jax.tree.map(lambda a, b: np.testing.assert_array_less(1e-4, np.abs(a - b)), got, params)


def test_clip_by_global_norm_by_value():
  """One SGD step at lr 1: the update is -g * c / ||g|| over all leaves together (not per leaf),
  and gradients under the norm pass unchanged."""
  cfg = _cfg(optimizer='sgd', grad_clip_norm=1.0, num_train_steps=1, learning_rate=1.0,
             lr_schedule='linear')
  params = {'a': np.zeros(2), 'b': np.zeros(1)}
  big = {'a': np.array([3.0, 0.0]), 'b': np.array([4.0])}  # global norm 5
  got = _run(cfg, params, [big])
  np.testing.assert_allclose(got['a'], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(got['b'], [-0.8], rtol=1e-6)
  small = {'a': np.array([0.3, 0.0]), 'b': np.array([0.4])}  # norm 0.5: unchanged
  got = _run(cfg, params, [small])
  np.testing.assert_allclose(got['a'], [-0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(got['b'], [-0.4], rtol=1e-6)


def test_adamw_decay_is_decoupled_and_masked():
  """With zero gradients Adam's step is 0, so the update is exactly -lr * wd * w on kernels and
  nothing elsewhere; L2 (adam) instead sends wd * w through Adam's normalisation (~ -lr sign(w))."""
  params = {'Dense_0': {'kernel': np.array([[2.0, -0.5]]), 'bias': np.array([1.0])},
            'LayerNorm_0': {'scale': np.array([3.0])}}
  zeros = jax.tree.map(np.zeros_like, params)
  cfg = _cfg(optimizer='adamw', weight_decay=0.1, learning_rate=0.5, num_train_steps=1)
  got = _run(cfg, params, [zeros])
  np.testing.assert_allclose(got['Dense_0']['kernel'], [[2.0 - 0.05 * 2.0, -0.5 + 0.05 * 0.5]],
                             rtol=1e-6)
  np.testing.assert_array_equal(got['Dense_0']['bias'], [1.0])
  np.testing.assert_array_equal(got['LayerNorm_0']['scale'], [3.0])
  l2 = _run(_cfg(optimizer='adam', weight_decay=0.1, learning_rate=0.5, num_train_steps=1),
            params, [zeros])
  np.testing.assert_allclose(l2['Dense_0']['kernel'], [[1.5, 0.0]], atol=1e-5)
  np.testing.assert_array_equal(l2['Dense_0']['bias'], [1.0])
