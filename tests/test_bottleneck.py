"""The §6 bottleneck model: Eq. 3, chunking, the (2+1)D pair, the module variants, FLOPs, configs.

Tiny sizes only; the paper's sizes are only lowered (module FLOPs, config FLOPs), never run.
"""
import dataclasses
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import bottleneck as bnk
from token_learner import experiment
from token_learner import flops
from token_learner.model_config import BottleneckConfig, ModelConfig
from token_learner.models import build_model

TINY = dict(stem_width=8, widths=(8, 8, 16, 16), depths=(1, 1, 1, 2), expansion=2.0,
            conv5_width=16, head_width=16, strides=(2, 1, 2, 1, 1), num_tokens=4, num_heads=4,
            fuser_mlp_dim=8)


def numpy_vector_attention(q, k, v):
  """Eq. 3 by the letter: y_i = sum_j softmax_j(q_i * k_j) * v_j, per channel, loops over i."""
  b, n, d = q.shape
  y = np.zeros((b, n, d))
  for bi in range(b):
    for i in range(n):
      logits = q[bi, i][None, :] * k[bi]  # [N_j, d]
      e = np.exp(logits - logits.max(axis=0, keepdims=True))
      w = e / e.sum(axis=0, keepdims=True)  # softmax over j, separately for each channel
      y[bi, i] = (w * v[bi]).sum(axis=0)
  return y


def test_vector_attention_is_eq3():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 7, 5)) for _ in range(3))
  got = bnk.vector_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)))
  np.testing.assert_allclose(np.asarray(got), numpy_vector_attention(q, k, v), atol=1e-5)


def test_vector_transformer_module_matches_numpy():
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  vt = bnk.VectorTransformer()
  params = vt.init(jax.random.key(0), z)['params']
  y = np.asarray(vt.apply({'params': params}, z))
  zn = np.asarray(nn.LayerNorm().apply({'params': params['LayerNorm_0']}, z))
  proj = {n: zn @ np.asarray(params[n]['kernel']) + np.asarray(params[n]['bias'])
          for n in ('query', 'key', 'value')}
  want = np.asarray(z) + numpy_vector_attention(proj['query'], proj['key'], proj['value'])
  np.testing.assert_allclose(y, want, atol=1e-5)


@pytest.mark.parametrize('chunk', [1, 4, 5, 16])
def test_chunked_equals_unchunked(chunk):
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 10, 6)), jnp.float32) for _ in range(3))
  full = bnk.vector_attention(q, k, v)
  np.testing.assert_allclose(bnk.vector_attention(q, k, v, chunk), full, atol=1e-6)
  loss = lambda c: lambda *a: (bnk.vector_attention(*a, c) ** 2).sum()
  g_full = jax.grad(loss(0), argnums=(0, 1, 2))(q, k, v)
  g_chunk = jax.grad(loss(chunk), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_chunk, g_full):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunking_bounds_memory():
  """The compiled forward + backward keeps ~[B, chunk, N, d] live, not [B, N, N, d]."""
  n, d, chunk = 256, 32, 32
  x = jax.ShapeDtypeStruct((1, n, d), jnp.float32)
  def temp_bytes(c):
    f = jax.jit(jax.grad(lambda q, k, v: bnk.vector_attention(q, k, v, c).sum(), (0, 1, 2)))
    return f.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes
  full_tensor, chunk_tensor = n * n * d * 4, chunk * n * d * 4  # 8 MiB, 1 MiB
  # Measured: 48 MiB unchunked (~6 copies of the attention tensor with its gradient), 5 MiB
  # with chunks of 32 queries: the same ~5 copies, of [chunk, N, d] only.
  assert temp_bytes(0) > 4 * full_tensor
  assert temp_bytes(chunk) < 6 * chunk_tensor < full_tensor


def _no_norm(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.GroupNorm) and context.method_name == '__call__':
    return args[0]
  return next_fun(*args, **kwargs)


def test_2plus1d_pair_shapes_and_receptive_field():
  cfg = BottleneckConfig(**TINY)
  mod = bnk.BottleneckModule(bnk.MODULE_LAYERS['conv2d_conv1d'], cfg, stride=1)
  x = jnp.ones((1, 7, 7, 7, 4))
  params = mod.init(jax.random.key(0), x)['params']
  assert params['conv2d']['kernel'].shape == (3, 3, 4, 4)  # 1x3x3 spatial
  assert params['conv1d']['kernel'].shape == (3, 4, 4)  # 3x1x1 temporal
  params = jax.tree.map(jnp.abs, params)  # positive weights: the ReLUs pass everything
  def centre(v):
    with nn.intercept_methods(_no_norm):  # the GroupNorms couple all positions: take them out
      return mod.apply({'params': params}, v)[0][0, 3, 3, 3].sum()
  support = np.asarray(jax.grad(centre)(x + 1.0)[0].sum(-1)) != 0
  want = np.zeros((7, 7, 7), bool)
  want[2:5, 2:5, 2:5] = True  # 3 frames x 3 x 3 pixels: the 3x3x3 field of the XYT conv
  np.testing.assert_array_equal(support, want)
  strided = bnk.BottleneckModule(bnk.MODULE_LAYERS['conv2d_conv1d'], cfg, stride=2)
  y, _ = strided.apply(strided.init(jax.random.key(0), x), x)
  assert y.shape == (1, 7, 4, 4, 4)


@pytest.mark.parametrize('module', ['conv2d_tokenlearner', 'conv2d_conv1d'])
def test_tiny_model_trains_a_step(module):
  cfg = ModelConfig.from_dict({'name': 'bottleneck', 'num_classes': 5,
                               'bottleneck': dict(TINY, module=module, query_chunk=16)},
                              image_size=16, num_frames=4)
  assert cfg.is_video and cfg.input_shape == (4, 16, 16, 3)
  model = build_model(cfg)
  x = jax.random.normal(jax.random.key(0), (2, *cfg.input_shape))
  params = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(1))['params']
  def loss(p):
    logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.key(2)})
    return ((logits - 1.0) ** 2).mean()
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value) and all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  logits, aux = jax.jit(lambda p: model.apply({'params': p}, x, train=False))(params)
  assert logits.shape == (2, 5)
  assert len(aux['attention_maps']) == (2 if 'tokenlearner' in module else 0)


def test_config_section():
  cfg = ModelConfig.from_dict({'name': 'bottleneck', 'variant': 'not-a-vit'}, image_size=224,
                              num_frames=64)
  bn = cfg.bottleneck  # X3D-M (Feichtenhofer 2020, Table 1), §6.1 "identical to X3D-M"
  assert (bn.stem_width, bn.widths, bn.depths, bn.conv5_width, bn.head_width) == (
      24, (24, 48, 96, 192), (3, 5, 11, 7), 432, 2048)
  assert [bn.inner_width(s) for s in range(4)] == [54, 108, 216, 432]  # d = 432 in res5 (§6.1)
  assert (bn.module, bn.num_tokens, bn.tl_conv_layers, bn.transformer) == (
      'conv2d_tokenlearner', 8, 1, 'vector')  # §6.1's final module
  assert cfg.num_layers == sum(bn.depths) == 26
  with pytest.raises(ValueError, match='config.model.bottleneck.tokens'):
    ModelConfig.from_dict({'name': 'bottleneck', 'bottleneck': {'tokens': 8}})
  with pytest.raises(ValueError, match='config.model.bottleneck.module'):
    ModelConfig.from_dict({'name': 'bottleneck', 'bottleneck': {'module': 'conv3d'}})
  with pytest.raises(ValueError, match='num_heads'):
    BottleneckConfig(module='joint_mhsa', num_heads=7)
  with pytest.raises(ValueError, match=r"config.model.bottleneck.fuser='broadcast' needs a "
                                       'module with tokens'):
    ModelConfig.from_dict({'name': 'bottleneck',
                           'bottleneck': {'module': 'conv2d_conv1d', 'fuser': 'broadcast'}})
  with pytest.raises(ValueError, match='config.model.bottleneck.fuser_mixing_init'):
    ModelConfig.from_dict({'name': 'bottleneck', 'bottleneck': {'fuser_mixing_init': 'small'}})
  assert isinstance(bnk.group_norm(16, BottleneckConfig(norm_groups=0).norm_groups), nn.LayerNorm)
  assert bnk.group_norm(54, 8).num_groups == 2  # gcd(54, 8)
  with pytest.raises(ValueError, match='variant'):  # ViT models still need a variant
    ModelConfig.from_dict({'name': 'vit', 'variant': 'not-a-vit'})


# Paper (Tables 12, 13): Conv2D + TokenLearner = 17.2 GFLOPs, 2.49M params on 64 x 8 x 8 x 432.
_SHAPE = (64, 8, 8, 432)


def _padded_conv2d_correction():
  """GFLOPs XLA leaves out of a 3x3 'SAME' conv on 8 x 8 (the taps on the zero padding), which
  the paper's count includes: 2 * d^2 * T * (9 * 64 - 22 * 22)."""
  t, h, w, d = _SHAPE
  return 2 * d * d * t * (9 * h * w - (3 * h - 2) * (3 * w - 2)) / 1e9


def test_module_flops_of_the_final_module():
  gmacs, params = flops.module_cost(BottleneckConfig(), 'conv2d_tokenlearner', _SHAPE)
  assert abs(params / 2.49e6 - 1) < 0.05  # ours 2.57M: +3.2 %
  assert abs(2 * gmacs / 17.2 - 1) < 0.25  # ours 13.7 GFLOPs: -20 % (XLA skips padding taps)
  corrected = 2 * gmacs + _padded_conv2d_correction()
  assert abs(corrected / 17.2 - 1) < 0.10  # 15.9 GFLOPs: -7.6 %
  # The Conv2D + Conv1D baseline is exact in parameters (9 + 3) * 432^2 (+ 2 GroupNorms).
  gmacs, params = flops.module_cost(BottleneckConfig(), 'conv2d_conv1d', _SHAPE)
  assert params == 12 * 432 ** 2 + 4 * 432
  t, h, w, d = _SHAPE
  conv1d_taps = h * w * (3 * t - 2)
  want = d * d * t * (3 * h - 2) * (3 * w - 2) + d * d * conv1d_taps  # MACs on real taps
  assert abs(gmacs * 1e9 / want - 1) < 0.01


@pytest.mark.parametrize('module', sorted(bnk.MODULE_LAYERS))
def test_formula_counts_the_model(module):
  """The per-layer formula (`analytic_module_cost`) has the model's exact parameters, and its
  Conv2D + Conv1D multiply-adds are Table 13's 12 d^2 N (its conv taps against XLA's count:
  test_formula_conv_taps_against_xla)."""
  bn = BottleneckConfig(**{**TINY, 'fuser_mlp_dim': 8, 'mixer_dim': 12, 'mhsa_dim': 8},
                        module=module)
  rows = flops.analytic_module_cost(bn, module, (4, 4, 4, 16))
  assert sum(r[2] for r in rows) == flops.module_cost(bn, module, (4, 4, 4, 16))[1]
  t, h, w, d = _SHAPE
  conv = flops.analytic_module_cost(BottleneckConfig(), 'conv2d_conv1d', _SHAPE)
  assert sum(r[1] for r in conv) == 12 * d * d * t * h * w  # 18.35 GFLOPs, Table 13: 18.3


def test_formula_conv_taps_against_xla():
  bn = BottleneckConfig(**TINY)
  for module, shape in (('conv2d_conv1d', (1, 1, 1, 16)), ('conv2d_mixer', (1, 1, 1, 16))):
    formula = sum(r[1] for r in flops.analytic_module_cost(bn, module, shape))
    # 1 x 1 x 1: only the centre tap of each conv touches the input.
    centre = formula - (9 - 1) * 16 * 16 - (3 - 1) * 16 * 16 * (module == 'conv2d_conv1d')
    xla = flops.module_cost(bn, module, shape)[0] * 1e9
    assert centre <= xla < centre * 1.3 + 200  # XLA adds the norms' / activations' work


@pytest.mark.parametrize('name', ['charades_bottleneck', 'avid_bottleneck',
                                  'moving_digits_bottleneck'])
def test_configs_build_and_report_flops(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model_cfg, _ = experiment.model_and_data(config)
  assert model_cfg.name == 'bottleneck'
  text = flops.summary(model_cfg)
  gflops = float(text.split('gflops=')[1].split()[0])
  if name != 'moving_digits_bottleneck':
    assert model_cfg.input_shape == (64, 224, 224, 3)
    assert 170 < gflops < 190  # 181.9 GMACs at 224 x 224 x 64 (476 GFLOPs at 256, Table 11: 487)
  unchunked = dataclasses.replace(model_cfg.bottleneck, query_chunk=0)
  assert flops.count_flops_and_params(dataclasses.replace(model_cfg, bottleneck=unchunked))[0] == (
      pytest.approx(gflops, rel=1e-3))


def test_multi_label_moving_digits():
  from token_learner.data import digits  # pylint: disable=g-import-not-at-top
  one = digits.MovingDigits('test', directions=4)
  two = digits.MovingDigits('test', directions=4, digits_per_video=2)
  for i in (0, 7, 100):
    assert one.labels(i) == [one.label(i)]
    assert one.label(i) in two.labels(i) and 1 <= len(two.labels(i)) <= 2
    np.testing.assert_array_equal(np.maximum(two.video(i), one.video(i)), two.video(i))
  assert any(len(two.labels(i)) == 2 and (two.video(i) != one.video(i)).any()
             for i in range(20))
  from token_learner import data  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='digits_per_video'):
    data.from_dict({'name': 'moving_digits', 'digits_per_video': 2})


def test_fuser_mixing_init_reaches_the_module():
  """config.model.bottleneck.fuser_mixing_init='identity': the TokenFuser's M starts at I behind
  a zero LayerNorm scale (the default 'zeros': M = 0, scale 1)."""
  from token_learner import model_config, modules  # pylint: disable=g-import-not-at-top
  assert model_config.MIXING_INITS == modules.MIXING_INITS  # the config accepts what exists
  x = jnp.zeros((1, 2, 2, 2, 16))
  for init, kernel, scale in (('zeros', np.zeros((8, 8)), 1.0), ('identity', np.eye(8), 0.0)):
    cfg = BottleneckConfig(**dict(TINY, fuser_mixing_init=init))
    mod = bnk.BottleneckModule(bnk.MODULE_LAYERS['tokenlearner'], cfg)
    fuser = jax.jit(mod.init)(jax.random.key(0), x)['params']['tokenfuser']
    np.testing.assert_array_equal(fuser['token_mixing']['kernel'], kernel)
    np.testing.assert_array_equal(fuser['LayerNorm_1']['scale'], scale)


def test_mhsa_layers_keep_their_parameter_names():
  """The bottleneck's pre-norm MHSA layer (`PreNormMHSA`) is named by its callers, so renaming
  the class leaves checkpoints' parameter trees as they were."""
  cfg = BottleneckConfig(**dict(TINY, module='joint_mhsa'))
  x = jnp.zeros((1, 2, 2, 2, 16))
  params = jax.eval_shape(bnk.BottleneckModule(bnk.MODULE_LAYERS['joint_mhsa'], cfg).init,
                          jax.random.key(0), x)['params']
  assert set(params) == {'joint_mhsa'}
  assert set(params['joint_mhsa']) == {'LayerNorm_0', 'MultiHeadDotProductAttention_0'}
  assert set(params['joint_mhsa']['MultiHeadDotProductAttention_0']) == {
      'query', 'key', 'value', 'out'}
  cfg = BottleneckConfig(**dict(TINY, module='spatial_tokenlearner', transformer='mhsa'))
  params = jax.eval_shape(bnk.BottleneckModule(bnk.MODULE_LAYERS['spatial_tokenlearner'], cfg).init,
                          jax.random.key(0), x)['params']
  assert {'spatial_mhsa', 'token_mhsa', 'tokenlearner', 'tokenfuser'} <= set(params)


def test_tokenlearner_properties_of_the_bottleneck_model():
  """config.model.tokenlearner does not apply to the bottleneck model; its maps come from its
  TokenLearner module."""
  make = lambda **bn: ModelConfig.from_dict({'name': 'bottleneck', 'bottleneck': bn},
                                            image_size=224, num_frames=4)
  final = make()
  assert final.tokenlearner.num_tokens > 0 and not final.uses_tokenlearner
  assert final.has_attention_maps
  assert not make(module='conv2d_conv1d').has_attention_maps
  assert not make(module_stages=()).has_attention_maps
  vit = ModelConfig.from_dict({'variant': 'Mu/4', 'tokenlearner': {'num_tokens': 4, 'loc': 1}},
                              image_size=16)
  assert vit.uses_tokenlearner and vit.has_attention_maps
  vit = ModelConfig.from_dict({'variant': 'Mu/4', 'tokenlearner': {'num_tokens': 0}},
                              image_size=16)
  assert not vit.uses_tokenlearner and not vit.has_attention_maps
