"""Eq. 1 and Eq. 2 against an independent numpy computation, and the modules' properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import TokenFuser, TokenLearner, TokenLearnerV11

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------- numpy reference
def np_layernorm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_gelu(x):  # tanh approximation, as flax.linen.gelu
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def np_dense(x, p):
  return x @ p['kernel'] + (p['bias'] if 'bias' in p else 0)


def np_conv_same(x, kernel):
  """x [B, H, W, Cin], kernel [kh, kw, Cin, Cout], stride 1, zero 'SAME' padding, no bias."""
  kh, kw = kernel.shape[:2]
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros((b, h, w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += xp[:, i:i + h, j:j + w, :] @ kernel[i, j]
  return out


def np_tokenlearner_v1(x, p, num_conv=4, pooling='sum'):
  """Eq. 1, v1. x [B, H, W, C] -> tokens [B, S, C], maps [B, S, H, W]."""
  a = np_layernorm(x, p['LayerNorm_0'])
  for i in range(num_conv):
    a = np_conv_same(a, p[f'Conv_{i}']['kernel'])
    if i < num_conv - 1:
      a = np_gelu(a)
  maps = np_sigmoid(a)  # [B, H, W, S]
  tokens = np.zeros((x.shape[0], maps.shape[-1], x.shape[-1]))
  for s in range(maps.shape[-1]):  # z_s = rho(X (.) A_s): explicit Hadamard product, then pool
    prod = x * maps[..., s:s + 1]
    tokens[:, s] = prod.sum((1, 2)) if pooling == 'sum' else prod.mean((1, 2))
  return tokens, maps.transpose(0, 3, 1, 2)


def np_tokenlearner_v11(x, p):
  """v1.1: x [B, H, W, C] -> tokens [B, S, C], maps [B, S, H, W] (softmax over positions)."""
  b, h, w, c = x.shape
  a = np_layernorm(x, p['LayerNorm_0'])
  a = np_dense(np_gelu(np_dense(a, p['Dense_0'])), p['Dense_1'])  # [B, H, W, S]
  a = a.reshape(b, h * w, -1).transpose(0, 2, 1)  # [B, S, HW]
  weights = np_softmax(a, axis=-1)
  tokens = np.stack([weights[i] @ x[i].reshape(h * w, c) for i in range(b)])
  return tokens, weights.reshape(b, -1, h, w)


def np_tokenfuser(tokens, residual, p, mixing='global'):
  """Eq. 2. tokens [B, T*S, C], residual [B, T, H, W, C] -> [B, T, H, W, C]."""
  b, t, h, w, c = residual.shape
  s = tokens.shape[1] // t
  y = np_layernorm(tokens, p['LayerNorm_0'])
  m = p['token_mixing']['kernel']
  if mixing == 'global':  # Y = (Y^T M)^T, M in R^{ST x ST}
    y = np.stack([(y[i].T @ m).T for i in range(b)])
  else:  # one S x S matrix for the S tokens of each frame
    y = y.reshape(b, t, s, c)
    y = np.stack([[(y[i, f].T @ m).T for f in range(t)] for i in range(b)]).reshape(b, t * s, c)
  y = np_layernorm(y, p['LayerNorm_1']).reshape(b, t, s, c)
  out = np.zeros_like(residual)
  for f in range(t):
    xt = residual[:, f].reshape(b, h * w, c)
    bw = np_sigmoid(np_dense(np_gelu(np_dense(np_layernorm(xt, p['LayerNorm_2']), p['Dense_0'])),
                             p['Dense_1']))  # B_w in R^{HW x S}
    out[:, f] = (xt + np.einsum('bns,bsc->bnc', bw, y[:, f])).reshape(b, h, w, c)
  return out


# ----------------------------------------------------------------------------- helpers
def _init(module, *args, **kwargs):
  variables = module.init(jax.random.key(0), *args, **kwargs)
  return jax.tree.map(np.asarray, variables['params'])


def _x(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize('pooling', ['sum', 'mean'])
def test_v1_matches_numpy_eq1(pooling, randomise):
  x = _x((2, 5, 7, 6))  # non-square grid
  module = TokenLearner(num_tokens=3, pooling=pooling)
  params = randomise(_init(module, x))
  tokens, maps = module.apply({'params': params}, x)
  want_tokens, want_maps = np_tokenlearner_v1(x.astype(np.float64), params, pooling=pooling)
  assert tokens.shape == (2, 3, 6) and maps.shape == (2, 3, 5, 7)
  np.testing.assert_allclose(maps, want_maps, RTOL, ATOL)
  np.testing.assert_allclose(tokens, want_tokens, RTOL, ATOL)


def test_v11_matches_numpy(randomise):
  x = _x((2, 4, 6, 5))
  module = TokenLearnerV11(num_tokens=3, bottleneck_dim=7)
  params = randomise(_init(module, x))
  tokens, maps = module.apply({'params': params}, x)
  want_tokens, want_maps = np_tokenlearner_v11(x.astype(np.float64), params)
  np.testing.assert_allclose(maps, want_maps, RTOL, ATOL)
  np.testing.assert_allclose(tokens, want_tokens, RTOL, ATOL)


@pytest.mark.parametrize('mixing', ['global', 'per_frame'])
def test_fuser_matches_numpy_eq2(mixing, randomise):
  residual = _x((2, 3, 4, 5, 6))  # [B, T, H, W, C]
  tokens = _x((2, 3 * 2, 6), seed=1)  # S = 2 tokens per frame
  module = TokenFuser(mixing=mixing, mlp_dim=7)
  params = randomise(_init(module, tokens, residual))  # token mixing no longer zero
  out = module.apply({'params': params}, tokens, residual)
  want = np_tokenfuser(tokens.astype(np.float64), residual.astype(np.float64), params, mixing)
  np.testing.assert_allclose(out, want, RTOL, ATOL)


def test_fuser_image_matches_numpy(randomise):
  residual = _x((2, 4, 3, 5))
  tokens = _x((2, 4, 5), seed=1)
  module = TokenFuser(mlp_dim=6)
  params = randomise(_init(module, tokens, residual))
  out = module.apply({'params': params}, tokens, residual)
  want = np_tokenfuser(tokens.astype(np.float64), residual[:, None].astype(np.float64), params)
  np.testing.assert_allclose(out, want[:, 0], RTOL, ATOL)


# ----------------------------------------------------------------------------- properties
def test_v11_weights_sum_to_one_over_positions(randomise):
  x = _x((3, 2, 5, 6, 4))  # video: the sum is over each frame's positions
  module = TokenLearnerV11(num_tokens=4, dropout_rate=0.3)
  params = randomise(_init(module, x))
  for train in (False, True):
    _, maps = module.apply({'params': params}, x, train=train, rngs={'dropout': jax.random.key(3)})
    assert maps.shape == (3, 2, 4, 5, 6)
    np.testing.assert_allclose(maps.sum((-2, -1)), 1.0, rtol=1e-5)


def test_fresh_fuser_returns_residual_exactly():
  residual = _x((2, 3, 4, 5, 8))
  tokens = _x((2, 3 * 4, 8), seed=2)
  for mixing in ('global', 'per_frame'):
    module = TokenFuser(mixing=mixing)
    variables = module.init(jax.random.key(0), tokens, residual)
    np.testing.assert_array_equal(module.apply(variables, tokens, residual), residual)


@pytest.mark.parametrize('cls', [TokenLearner, TokenLearnerV11])
def test_video_equals_per_frame_image(cls, randomise):
  video = _x((2, 3, 4, 5, 6))
  module = cls(num_tokens=2)
  params = randomise(_init(module, video))
  tokens, maps = module.apply({'params': params}, video)
  assert tokens.shape == (2, 3 * 2, 6)
  for t in range(3):
    frame_tokens, frame_maps = module.apply({'params': params}, video[:, t])
    np.testing.assert_allclose(tokens[:, 2 * t:2 * t + 2], frame_tokens, RTOL, ATOL)
    np.testing.assert_allclose(maps[:, t], frame_maps, RTOL, ATOL)


def test_fuser_per_frame_video_equals_per_frame_image(randomise):
  video, tokens = _x((2, 3, 4, 5, 6)), _x((2, 6, 6), seed=3)
  module = TokenFuser(mixing='per_frame')
  params = randomise(_init(module, tokens, video))
  out = module.apply({'params': params}, tokens, video)
  for t in range(3):
    frame = module.apply({'params': params}, tokens[:, 2 * t:2 * t + 2], video[:, t])
    np.testing.assert_allclose(out[:, t], frame, RTOL, ATOL)


@pytest.mark.parametrize('cls', [TokenLearner, TokenLearnerV11])
def test_sequence_input_equals_grid_input(cls, randomise):
  video = _x((2, 3, 4, 5, 6))
  module = cls(num_tokens=2)
  params = randomise(_init(module, video))
  grid_tokens, grid_maps = module.apply({'params': params}, video)
  seq_tokens, seq_maps = module.apply({'params': params}, video.reshape(2, 60, 6), (3, 4, 5))
  np.testing.assert_allclose(seq_tokens, grid_tokens, RTOL, ATOL)
  np.testing.assert_allclose(seq_maps, grid_maps, RTOL, ATOL)
  with pytest.raises(ValueError, match='grid_shape'):
    module.apply({'params': params}, video.reshape(2, 60, 6), (4, 4))


def test_v11_permuting_positions_permutes_nothing_in_tokens(randomise):
  x = _x((2, 6, 6, 5))
  module = TokenLearnerV11(num_tokens=3)
  params = randomise(_init(module, x))
  tokens, maps = module.apply({'params': params}, x)
  perm = np.random.default_rng(0).permutation(36)
  xp = x.reshape(2, 36, 5)[:, perm].reshape(2, 6, 6, 5)
  tokens_p, maps_p = module.apply({'params': params}, xp)
  np.testing.assert_allclose(tokens_p, tokens, RTOL, ATOL)
  np.testing.assert_allclose(maps_p.reshape(2, 3, 36), maps.reshape(2, 3, 36)[..., perm], RTOL,
                             ATOL)


def test_fuser_is_equivariant_to_position_permutations(randomise):
  residual, tokens = _x((2, 4, 4, 5)), _x((2, 3, 5), seed=4)
  module = TokenFuser()
  params = randomise(_init(module, tokens, residual))
  out = module.apply({'params': params}, tokens, residual).reshape(2, 16, 5)
  perm = np.random.default_rng(1).permutation(16)
  rp = residual.reshape(2, 16, 5)[:, perm].reshape(2, 4, 4, 5)
  out_p = module.apply({'params': params}, tokens, rp).reshape(2, 16, 5)
  np.testing.assert_allclose(out_p, out[:, perm], RTOL, ATOL)


def test_tokens_use_unnormalised_input(randomise):
  """Scaling X scales the v1.1 tokens: the LayerNorm feeds only alpha (its maps are unchanged)."""
  x = _x((1, 4, 4, 6))
  module = TokenLearnerV11(num_tokens=2)
  params = randomise(_init(module, x))
  tokens, maps = module.apply({'params': params}, x)
  tokens3, maps3 = module.apply({'params': params}, 3.0 * x)
  np.testing.assert_allclose(maps3, maps, 1e-4, 1e-5)
  np.testing.assert_allclose(tokens3, 3.0 * tokens, 1e-4, 1e-4)


def test_v11_dropout_acts_only_in_training(randomise):
  x = _x((2, 4, 4, 6))
  module = TokenLearnerV11(num_tokens=2, dropout_rate=0.5)
  params = randomise(_init(module, x))
  apply = lambda train, k: module.apply({'params': params}, x, train=train,
                                        rngs={'dropout': jax.random.key(k)})[0]
  np.testing.assert_array_equal(apply(False, 0), apply(False, 1))
  assert not np.allclose(apply(True, 0), apply(False, 0))
  assert not np.allclose(apply(True, 0), apply(True, 1))


def test_fuser_dropout_acts_only_in_training(randomise):
  residual, tokens = _x((2, 4, 4, 5)), _x((2, 3, 5), seed=4)
  module = TokenFuser(dropout_rate=0.5)
  params = randomise(_init(module, tokens, residual))
  apply = lambda train, k: module.apply({'params': params}, tokens, residual, train=train,
                                        rngs={'dropout': jax.random.key(k)})
  np.testing.assert_array_equal(apply(False, 0), apply(False, 1))
  assert not np.allclose(apply(True, 0), apply(True, 1))


@pytest.mark.parametrize('cls', [TokenLearner, TokenLearnerV11])
def test_every_module_parameter_gets_a_gradient(cls, randomise):
  x = _x((2, 4, 4, 6))
  tl, fuser = cls(num_tokens=3), TokenFuser()
  p_tl = randomise(_init(tl, x))
  p_fu = randomise(_init(fuser, jnp.zeros((2, 3, 6)), x))

  def loss(p):
    tokens, _ = tl.apply({'params': p[0]}, x)
    return jnp.sum(fuser.apply({'params': p[1]}, jnp.tanh(tokens), x) ** 2)

  grads = jax.jit(jax.grad(loss))((p_tl, p_fu))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------- initialisation
def _fuser_first_step(mixing_init, lrs=(1e-3, 1e-4)):
  """From the real initialisation (no randomising): a TokenLearner feeding a TokenFuser, loss =
  <fuser output, R> for a fixed random readout R. Returns (gradient wrt the tokens, the fuser's
  gradients, [|fuser(tokens) - residual| / |residual| after one SGD step of lr, per lr])."""
  x, readout = _x((2, 4, 4, 16)), _x((2, 4, 4, 16), seed=5)
  tl, fuser = TokenLearner(num_tokens=4), TokenFuser(mixing_init=mixing_init)
  p_tl = jax.jit(tl.init)(jax.random.key(0), x)['params']
  tokens, _ = jax.jit(tl.apply)({'params': p_tl}, x)
  p_fu = jax.jit(fuser.init)(jax.random.key(0), tokens, x)['params']
  loss = lambda p, z: jnp.sum(fuser.apply({'params': p}, z, x) * readout)
  g_fu, g_tokens = jax.jit(jax.grad(loss, argnums=(0, 1)))(p_fu, tokens)
  apply = jax.jit(lambda p: fuser.apply({'params': p}, tokens, x))
  ratios = [float(np.linalg.norm(apply(jax.tree.map(lambda a, g: a - lr * g, p_fu, g_fu)) - x)
                  / np.linalg.norm(x)) for lr in lrs]
  return np.asarray(g_tokens), g_fu, ratios


def test_fuser_start_measured():
  """From the real init. mixing_init='zeros' (Scenic, the default): zero token gradient at step
  0; LayerNorm_1 sees 0 and multiplies the gradient on M by 1/sqrt(eps) = 1e3 (the beta MLP gets
  none); one SGD step makes the fuser's output about as large as its residual, whatever the
  rate (1e-3 or 1e-4: the LayerNorm rescales M). mixing_init='identity' (M = I behind
  LayerNorm_1's zero scale): the fresh fuser is still the identity, and one step moves the
  output in proportion to the rate."""
  g_tokens, g_fu, ratios = _fuser_first_step('zeros')
  np.testing.assert_array_equal(g_tokens, 0.0)
  for name in ('Dense_0', 'Dense_1', 'LayerNorm_2'):  # beta MLP: y = 0 gives it no gradient
    assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(g_fu[name])), name
  mix = np.linalg.norm(g_fu['token_mixing']['kernel'])
  bias = np.linalg.norm(g_fu['LayerNorm_1']['bias'])  # the same signal, not amplified
  assert mix > 100 * bias and mix > 1e3, (mix, bias)
  assert min(ratios) > 0.5, ratios

  g_tokens, g_fu, gentle = _fuser_first_step('identity')
  np.testing.assert_array_equal(g_tokens, 0.0)  # the gate is closed at step 0
  assert np.linalg.norm(g_fu['LayerNorm_1']['scale']) > 0
  assert gentle[0] < 0.1 * ratios[0], (gentle, ratios)
  assert gentle[1] == pytest.approx(gentle[0] / 10, rel=0.05)  # linear in the rate

  residual, tokens = _x((2, 3, 4, 5, 8)), _x((2, 6, 8), seed=2)
  module = TokenFuser(mixing_init='identity')
  variables = jax.jit(module.init)(jax.random.key(0), tokens, residual)
  np.testing.assert_array_equal(variables['params']['token_mixing']['kernel'], np.eye(6))
  np.testing.assert_array_equal(jax.jit(module.apply)(variables, tokens, residual), residual)
  with pytest.raises(ValueError, match='mixing_init'):
    TokenFuser(mixing_init='small').init(jax.random.key(0), tokens, residual)
