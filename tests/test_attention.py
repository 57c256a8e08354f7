"""The encoder blocks' SelfAttention: flax-identical parameters, its levers, their config checks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import build_model
from token_learner.model_config import ModelConfig
from token_learner.modules import float32_attention
from token_learner.vit import SelfAttention

LEVERS = [(None, False), (None, True), ('xla', False), ('xla', True)]


def _numpy_attention(params, x, num_heads):
  """Multi-head self-attention written out in float64 numpy from the parameter dict."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  q, k, v = (np.einsum('bnc,chd->bnhd', x, p[n]['kernel']) + p[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  y = np.einsum('bhqk,bkhd->bqhd', w, v)
  return np.einsum('bqhd,hdc->bqc', y, p['out']['kernel']) + p['out']['bias']


@pytest.mark.parametrize('implementation,fused', LEVERS)
def test_self_attention_matches_flax_and_numpy(implementation, fused):
  x = jax.random.normal(jax.random.key(1), (2, 10, 32))
  flax_attn = nn.MultiHeadDotProductAttention(
      num_heads=4, kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False,
      attention_fn=float32_attention, deterministic=True)
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
  if implementation is None and not fused:  # The default path computes what flax computed.
    np.testing.assert_array_equal(got, flax_attn.apply(params, x, x))


def test_xla_attention_keeps_float32_logits_for_bfloat16():
  """bf16 q/k/v: 'xla' equals float32 attention on the bf16-rounded q, k, v (float32_attention)."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 50, 2, 16)) * 4, jnp.bfloat16) for _ in range(3))
  from token_learner.vit import fast_attention  # pylint: disable=g-import-not-at-top
  got = fast_attention(q, k, v, 'xla')
  assert got.dtype == jnp.bfloat16
  want = float32_attention(q, k, v, deterministic=True)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_vit_levers_give_the_same_logits_and_parameters():
  base = ModelConfig(variant='Mu/4', num_classes=5, image_size=(16, 16),
                     tokenlearner={'num_tokens': 4, 'loc': 2})
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
    ({'fused_qkv': 1}, 'config.model.fused_qkv'),
])
def test_bad_attention_config_names_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_dict({'variant': 'Mu/4', 'tokenlearner': {'num_tokens': 0}, **fields},
                          image_size=(16, 16))


def test_cudnn_without_gpu_is_a_value_error_before_compiling():
  if jax.default_backend() == 'gpu':
    pytest.skip('has a GPU')
  cfg = ModelConfig(variant='Mu/4', image_size=(16, 16), dtype='bfloat16',
                    tokenlearner={'num_tokens': 0},
                    attention_implementation='cudnn')
  with pytest.raises(ValueError, match="attention_implementation='cudnn' needs a GPU"):
    jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                 train=False))
