"""The encoder blocks' SelfAttention: flax-identical parameters, every attention implementation
against a float64 reference, the precision of each path, 'auto' resolution, config checks.

Checked on CPU: 'einsum', 'xla', 'auto' (as it resolves on CPU) and 'pallas' (the Pallas TPU
flash kernel in Pallas' TPU interpret mode, forward and gradients). 'cudnn' needs a GPU: its test
skips on other backends (that is a platform fact, the kernel exists only in cuDNN), and 'pallas'
compiled for a real TPU (Mosaic) is only checked on a TPU.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import build_model
from token_learner import attention as attention_lib
from token_learner.model_config import ModelConfig
from token_learner.modules import einsum_attention
from token_learner.attention import SelfAttention

LEVERS = [('einsum', False), ('einsum', True), ('xla', False), ('xla', True), ('auto', False),
          (None, False)]
BF16_RTOL = 2e-2  # relative to the largest output: a few bfloat16 ulps (2^-8) of rounding.


def _numpy_attention(params, x, num_heads):
  """Multi-head self-attention written out in float64 numpy from the parameter dict."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  q, k, v = (np.einsum('bnc,chd->bnhd', x, p[n]['kernel']) + p[n]['bias']
             for n in ('query', 'key', 'value'))
  y = _numpy_sdpa(q, k, v)
  return np.einsum('bqhd,hdc->bqc', y, p['out']['kernel']) + p['out']['bias']


def _numpy_sdpa(q, k, v):
  """softmax(q k^T / sqrt(D)) v on `[B, N, H, D]`, float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', w, v)


def _qkv(shape, dtype, seed=0, scale=2.0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=shape) * scale, dtype) for _ in range(3))


def _pallas(q, k, v):
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  with pltpu.force_tpu_interpret_mode():
    return attention_lib.pallas_attention(q, k, v)


def _run(implementation, q, k, v):
  if implementation == 'pallas':
    return _pallas(q, k, v)
  return attention_lib.attention(q, k, v, implementation)


@pytest.mark.parametrize('implementation,fused', LEVERS)
def test_self_attention_matches_flax_and_numpy(implementation, fused):
  x = jax.random.normal(jax.random.key(1), (2, 10, 32))
  flax_attn = nn.MultiHeadDotProductAttention(
      num_heads=4, kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False,
      deterministic=True)
  ref_params = flax_attn.init(jax.random.key(0), x, x)
  attn = SelfAttention(4, implementation=implementation, fused_qkv=fused)
  params = attn.init(jax.random.key(0), x, train=False)
  # Same names, shapes and initial values as flax's module: checkpoints and default runs unchanged.
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  # Non-zero biases so the bias handling of every projection is checked.
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                        params)
  got = attn.apply(params, x, train=False)
  np.testing.assert_allclose(got, _numpy_attention(params['params'], x, 4), atol=1e-5)
  np.testing.assert_allclose(got, flax_attn.apply(params, x, x), atol=1e-5)
  if implementation in ('einsum', None) and not fused:  # Flax's own attention, bit for bit.
    np.testing.assert_array_equal(got, flax_attn.apply(params, x, x))
    np.testing.assert_array_equal(got, attn.apply(params, x, train=True))  # No dropout rate.


@pytest.mark.parametrize('implementation', ['einsum', 'xla', 'pallas'])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_each_implementation_matches_a_float64_reference(implementation, dtype):
  """q/k/v of N = 200 tokens (Pallas pads them to 256 and masks the padding), against float64
  numpy on the same (rounded) inputs: float32 to 1e-5, bfloat16 to BF16_RTOL of the largest
  output. The output keeps the input dtype."""
  q, k, v = _qkv((1, 200, 2, 32), dtype)
  got = _run(implementation, q, k, v)
  assert got.dtype == jnp.dtype(dtype) and got.shape == q.shape
  want = _numpy_sdpa(q, k, v)
  if dtype == 'float32':
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-5, rtol=1e-5)
  else:
    tol = BF16_RTOL * np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tol)


def test_pallas_gradients_match_einsum():
  """The Pallas kernel's custom backward (the TPU train step) against autodiff of 'einsum'."""
  q, k, v = _qkv((1, 136, 1, 32), 'float32', seed=3, scale=1.0)
  ct = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  with pltpu.force_tpu_interpret_mode():
    got = jax.grad(loss(attention_lib.pallas_attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(lambda *a: attention_lib.attention(*a, 'einsum')), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


def test_cudnn_matches_a_float64_reference():
  if jax.default_backend() != 'gpu':
    pytest.skip('accelerator-only: cuDNN flash attention needs a GPU backend')
  q, k, v = _qkv((2, 200, 2, 64), 'bfloat16')
  got = attention_lib.attention(q, k, v, 'cudnn')
  want = _numpy_sdpa(q, k, v)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float64), want,
                             atol=BF16_RTOL * np.abs(want).max())


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations (pjit, custom_vjp, ...)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(getattr(sub, 'jaxpr', sub), 'eqns'):
          yield from _eqns(sub)


def dots(fn, *args):
  """The dot_general equations of `fn(*args)`, as (operand dtypes, preferred dtype, out aval)."""
  return [(tuple(v.aval.dtype for v in e.invars), e.params.get('preferred_element_type'),
           e.outvars[0].aval) for e in _eqns(jax.make_jaxpr(fn)(*args))
          if e.primitive.name == 'dot_general']


@pytest.mark.parametrize('implementation,train', [('einsum', True), ('xla', False),
                                                   ('auto', True), ('auto', False)])
def test_bfloat16_attention_never_upcasts_qkv(implementation, train):
  """The policy, read off the program: with bfloat16 q/k/v every dot of the attention (and of
  its gradient, for the paths that train) takes bfloat16 operands (no float32 copy of q, k, v),
  and the logits [B, H, N, N] are formed as float32 (`preferred_element_type`). ('xla''s
  gradient is JAX's autodiff, float32 cotangents times bfloat16 q / k: 'auto' does not train
  with it.)"""
  q, k, v = _qkv((1, 48, 2, 16), 'bfloat16')
  impl = (attention_lib.resolve_attention(jax.default_backend(), q.dtype, train, q.shape[1])
          if implementation == 'auto' else implementation)
  fn = lambda q, k, v: jnp.sum(attention_lib.attention(q, k, v, impl).astype(jnp.float32))
  for f in (fn, jax.grad(fn, argnums=(0, 1, 2))) if train else (fn,):
    found = dots(f, q, k, v)
    assert found and all(d == (jnp.bfloat16, jnp.bfloat16) for d, _, _ in found), found
    logits = [a for _, p, a in found if a.shape.count(48) == 2]  # [B, H, (1,) N, N]
    assert logits and all(a.dtype == jnp.float32 for a in logits[:1]), found
  upcasts = [e for e in _eqns(jax.make_jaxpr(lambda *a: attention_lib.attention(*a, impl))(q, k, v))
             if e.primitive.name == 'convert_element_type' and e.invars[0].aval.shape == q.shape
             and e.outvars[0].aval.dtype == jnp.float32]
  assert not upcasts


def test_einsum_attention_dropout_is_flax_s():
  """The same keep-mask as flax's `dot_product_attention` for the same key (float32)."""
  q, k, v = _qkv((2, 12, 2, 8), 'float32')
  kw = dict(dropout_rng=jax.random.key(3), dropout_rate=0.3, deterministic=False,
            broadcast_dropout=False)
  np.testing.assert_array_equal(einsum_attention(q, k, v, **kw),
                                nn.dot_product_attention(q, k, v, **kw))


# ------------------------------------------------------------------------- 'auto' resolution
@pytest.mark.parametrize('backend,dtype,train,n,rate,want', [
    ('gpu', 'bfloat16', True, 197, 0.0, 'cudnn'),
    ('gpu', 'float16', False, 3136, 0.0, 'cudnn'),
    ('gpu', 'float32', True, 197, 0.0, 'xla'),  # cuDNN fused attention is half precision only.
    ('gpu', 'bfloat16', True, 197, 0.1, 'einsum'),  # Attention dropout: only 'einsum' has it.
    ('gpu', 'bfloat16', False, 197, 0.1, 'cudnn'),  # ... and it acts in training only.
    ('cuda', 'bfloat16', True, 197, 0.0, 'cudnn'),
    ('tpu', 'bfloat16', True, 3136, 0.0, 'pallas'),  # ViViT's long sequences.
    ('tpu', 'bfloat16', True, 1024, 0.0, 'pallas'),
    ('tpu', 'bfloat16', False, 577, 0.0, 'xla'),  # Images (<= 785 tokens here) ...
    ('tpu', 'bfloat16', True, 577, 0.0, 'einsum'),  # ... trained with a bf16-only backward.
    ('tpu', 'float32', False, 3136, 0.0, 'pallas'),
    ('tpu', 'bfloat16', True, 3136, 0.1, 'einsum'),
    ('cpu', 'float32', False, 197, 0.0, 'xla'),  # 1.19x the einsums forward (BENCHMARKS.md).
    ('cpu', 'float32', True, 197, 0.0, 'einsum'),  # 'xla' was 0.95x in the train step.
    ('cpu', 'bfloat16', False, 3136, 0.0, 'xla'),
    ('cpu', 'float32', True, 197, 0.1, 'einsum'),
])
def test_resolve_attention(backend, dtype, train, n, rate, want):
  assert attention_lib.resolve_attention(backend, jnp.dtype(dtype), train, n, rate,
                               pallas_available=True) == want


def test_resolve_attention_without_pallas_is_xla_on_tpu():
  assert attention_lib.resolve_attention('tpu', jnp.bfloat16, False, 3136, 0.0,
                               pallas_available=False) == 'xla'
  assert attention_lib._pallas_flash_attention() is not None  # pylint: disable=protected-access  # JAX 0.10.2


def test_auto_is_the_default_and_none_means_einsum():
  assert ModelConfig().attention_implementation == 'auto'
  assert SelfAttention(2).implementation == 'auto'
  x = jax.random.normal(jax.random.key(0), (1, 6, 8))
  params = SelfAttention(2).init(jax.random.key(1), x, train=False)
  np.testing.assert_array_equal(SelfAttention(2, implementation=None).apply(params, x, train=True),
                                SelfAttention(2, implementation='einsum').apply(params, x,
                                                                                train=True))


def test_vit_levers_give_the_same_logits_and_parameters():
  base = ModelConfig(variant='Mu/4', num_classes=5, image_size=(16, 16),
                     tokenlearner={'num_tokens': 4, 'loc': 2}, attention_implementation='einsum')
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  params = build_model(base).init(jax.random.key(1), images, train=False)
  params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape),
                        params)  # Also a non-zero head.
  want = build_model(base).apply(params, images, train=False)[0]
  for impl, fused in LEVERS[1:]:
    cfg = ModelConfig(variant='Mu/4', num_classes=5, image_size=(16, 16),
                      tokenlearner={'num_tokens': 4, 'loc': 2},
                      attention_implementation=impl, fused_qkv=fused)
    model = build_model(cfg)
    assert jax.tree.structure(model.init(jax.random.key(1), images, train=False)) == (
        jax.tree.structure(params))
    np.testing.assert_allclose(model.apply(params, images, train=False)[0], want, atol=1e-5)


@pytest.mark.parametrize('fields,match', [
    ({'attention_implementation': 'flash'}, 'config.model.attention_implementation'),
    ({'attention_implementation': 'cudnn'}, "attention_implementation='cudnn' needs"),
    ({'attention_implementation': 'xla', 'attention_dropout_rate': 0.1},
     'config.model.attention_implementation'),
    ({'attention_implementation': 'pallas', 'attention_dropout_rate': 0.1},
     'config.model.attention_implementation'),
    ({'fused_qkv': 1}, 'config.model.fused_qkv'),
])
def test_bad_attention_config_names_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_dict({'variant': 'Mu/4', 'tokenlearner': {'num_tokens': 0}, **fields},
                          image_size=(16, 16))


@pytest.mark.parametrize('impl', ['auto', 'einsum', None])
def test_attention_dropout_with_auto_or_einsum_is_valid(impl):
  cfg = ModelConfig.from_dict({'variant': 'Mu/4', 'tokenlearner': {'num_tokens': 0},
                               'attention_dropout_rate': 0.1, 'attention_implementation': impl},
                              image_size=(16, 16))
  assert cfg.attention_implementation == impl


@pytest.mark.parametrize('impl,backend', [('cudnn', 'gpu'), ('pallas', 'tpu')])
def test_accelerator_kernel_elsewhere_is_a_value_error_before_compiling(impl, backend):
  if jax.default_backend() == backend:
    pytest.skip(f'has a {backend}')
  cfg = ModelConfig(variant='Mu/4', image_size=(16, 16), dtype='bfloat16',
                    tokenlearner={'num_tokens': 0}, attention_implementation=impl)
  with pytest.raises(ValueError, match=f"attention_implementation='{impl}' needs a "
                     f'{backend.upper()}'):
    jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                 train=False))
