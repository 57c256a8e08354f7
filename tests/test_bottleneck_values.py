"""The §6 bottleneck model by value: every module variant of Tables 12 / 13 / §6.3.3 and the whole
X(2+1)D-M + TokenLearner network against a numpy float64 forward written here from the paper and
the module docstring (token_learner/bottleneck.py), reading only the parameter tree.

Tiny shapes (d = 16, 3 frames of 4 x 4); every parameter randomised (the zero-initialised
TokenFuser mixing, head and last norm of each residual module would hide mistakes).
"""
import math

import jax
import numpy as np
import pytest

from token_learner import bottleneck as bnk
from token_learner.model_config import BottleneckConfig, ModelConfig
from token_learner.models import build_model
from test_modules import (np_conv_same, np_dense, np_gelu, np_layernorm, np_softmax,
                          np_tokenfuser, np_tokenlearner_v1)
from test_whole_models import np_mha, random_params

TINY = dict(stem_width=8, widths=(8, 8, 16, 16), depths=(1, 1, 1, 2), expansion=2.0,
            conv5_width=16, head_width=16, strides=(2, 1, 2, 1, 1), num_tokens=4, num_heads=4,
            fuser_mlp_dim=8, mixer_dim=12, mhsa_dim=8)
relu = lambda x: np.maximum(x, 0)


def np_group_norm(x, p, groups, eps=1e-6):
  """GroupNorm over (T, H, W, the channels of a group) per example; groups=0: LayerNorm."""
  if not groups:
    return np_layernorm(x, p)
  c = x.shape[-1]
  g = math.gcd(c, groups)
  xg = x.reshape(x.shape[0], -1, g, c // g)
  mu = xg.mean((1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean((1, 3), keepdims=True)
  return ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape) * p['scale'] + p['bias']


def np_conv2d(x, kernel, stride=1):
  """3x3 'SAME' conv of every frame of [B, T, H, W, C] (XLA's SAME: the extra pad at the end)."""
  b, t, h, w, c = x.shape
  frames = x.reshape(b * t, h, w, c)
  if stride > 1:
    ho, wo = -(-h // stride), -(-w // stride)
    ph, pw = max((ho - 1) * stride + 3 - h, 0), max((wo - 1) * stride + 3 - w, 0)
    xp = np.pad(frames, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = sum(xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride] @ kernel[i, j]
              for i in range(3) for j in range(3))
  else:
    out = np_conv_same(frames, kernel)
  return out.reshape(b, t, *out.shape[1:])


def np_conv1d(x, kernel, groups=1):
  """k-tap 'SAME' conv over time at every position; kernel [k, C_in / groups, C_out]."""
  k, t = kernel.shape[0], x.shape[1]
  xp = np.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0), (0, 0), (0, 0)))
  if groups == 1:
    return sum(xp[:, i:i + t] @ kernel[i] for i in range(k))
  return sum(xp[:, i:i + t] * kernel[i, 0] for i in range(k))  # channel-wise


def np_prenorm_mhsa(seq, p):
  y = np_layernorm(seq, p['LayerNorm_0'])
  return seq + np_mha(y, y, p['MultiHeadDotProductAttention_0'])


def np_vector_transformer(z, p):
  """Appendix A, Eq. 3: z + sum_j softmax_j(q_i * k_j) * v_j on LN(z), per channel."""
  y = np_layernorm(z, p['LayerNorm_0'])
  q, k, v = (np_dense(y, p[n]) for n in ('query', 'key', 'value'))
  w = np_softmax(q[:, :, None, :] * k[:, None, :, :], axis=2)  # [B, i, j, d]
  return z + np.einsum('bijd,bjd->bid', w, v)


def np_tokenize(kind, x, p, cfg):
  """x [B, T, H, W, C] -> tokens [B, T*S, C] (§6.3.3 tokenizers and the TokenLearner)."""
  b, t, h, w, c = x.shape
  s = cfg.num_tokens
  if kind == 'tokenlearner':  # alpha = one 3x3 conv (§6.1), per frame
    tokens, _ = np_tokenlearner_v1(x.reshape(b * t, h, w, c), p['tokenlearner'],
                                   num_conv=cfg.tl_conv_layers)
    return tokens.reshape(b, t * s, c)
  if kind == 'grid_tokens':  # S = 4: a 2 x 2 grid of mean-pooled regions per frame
    return x.reshape(b, t, 2, h // 2, 2, w // 2, c).mean((3, 5)).reshape(b, t * s, c)
  if kind == 'dense_tokens':  # z[t, s, c] = sum_n W[n, s] x[t, n, c] + b[s, c], then Dense(c)
    z = np.einsum('btnc,ns->btsc', x.reshape(b, t, h * w, c),
                  p['dense_tokens_positions']['kernel']) + p['dense_tokens_bias']
    return np_dense(z, p['dense_tokens_channels']).reshape(b, t * s, c)
  if kind == 'prior_tokens':  # Eq. 1 (sum) with input-independent maps sigmoid(P)
    maps = 1 / (1 + np.exp(-p['prior_maps'].reshape(s, h * w)))
    return np.einsum('sn,btnc->btsc', maps, x.reshape(b, t, h * w, c)).reshape(b, t * s, c)
  z = np_dense(np_gelu(np_dense(x.mean((2, 3)), p['pool_mlp_0'])), p['pool_mlp_1'])
  return z.reshape(b, t * s, c)  # pool_mlp: global average, MLP C -> C -> S*C


def np_module(layers, x, p, cfg, stride=1):
  """The BottleneckModule: the layers replacing the (2+1)D pair, in order."""
  groups = cfg.norm_groups
  for i, kind in enumerate(layers):
    b, t, h, w, c = x.shape
    if kind == 'conv2d':
      x = relu(np_group_norm(np_conv2d(x, p['conv2d']['kernel'], stride if i == 0 else 1),
                             p['conv2d_norm'], groups))
    elif kind == 'conv1d':
      x = relu(np_group_norm(np_conv1d(x, p['conv1d']['kernel']), p['conv1d_norm'], groups))
    elif kind == 'joint':  # all T*H*W positions
      x = np_prenorm_mhsa(x.reshape(b, -1, c), p['joint_mhsa']).reshape(x.shape)
    elif kind == 'spatial':  # the H*W positions of each frame
      x = np_prenorm_mhsa(x.reshape(b * t, h * w, c), p['spatial_mhsa']).reshape(x.shape)
    elif kind == 'temporal':  # the T frames of each position
      seq = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
      seq = np_prenorm_mhsa(seq, p['temporal_mhsa'])
      x = seq.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4)
    elif kind == 'joint_vector':  # Eq. 3 over all T*H*W positions
      x = np_vector_transformer(x.reshape(b, -1, c), p['joint_vector_transformer']).reshape(
          x.shape)
    elif kind == 'mixer':  # temporal token-mixing MLP, then channel MLP, each pre-LN + residual
      y = np_layernorm(x, p['mixer_norm_0']).transpose(0, 2, 3, 4, 1)  # [B, H, W, C, T]
      y = np_dense(np_gelu(np_dense(y, p['mixer_token_0'])), p['mixer_token_1'])
      x = x + y.transpose(0, 4, 1, 2, 3)
      y = np_gelu(np_dense(np_layernorm(x, p['mixer_norm_1']), p['mixer_channel_0']))
      x = x + np_dense(y, p['mixer_channel_1'])
    else:  # a tokenizer -> Vector Transformer (or MHSA) -> TokenFuser with x as residual
      tokens = np_tokenize(kind, x, p, cfg)
      if cfg.transformer == 'vector':
        tokens = np_vector_transformer(tokens, p['vector_transformer'])
      else:
        tokens = np_prenorm_mhsa(tokens, p['token_mhsa'])
      if cfg.fuser == 'broadcast':  # every position of frame t: + the mean of its tokens
        x = x + tokens.reshape(b, t, -1, c).mean(2)[:, :, None, None]
      else:
        x = np_tokenfuser(tokens, x, p['tokenfuser'])
  return x


def np_network(video, p, cfg):
  """X(2+1)D-M + the bottleneck (§6.1): stem, res2..res5 inverted bottlenecks, conv5, head."""
  bn, g = cfg.bottleneck, cfg.bottleneck.norm_groups
  x = np_conv2d(video, p['stem_xy']['kernel'], bn.strides[0])
  x = relu(np_group_norm(np_conv1d(x, p['stem_t']['kernel'], groups=bn.stem_width),
                         p['stem_norm'], g))
  for stage in range(4):
    layers = bnk.MODULE_LAYERS[bn.module if stage in bn.module_stages else 'conv2d_conv1d']
    for i in range(bn.depths[stage]):
      q = p[f'res{stage + 2}_{i}']
      s = bn.strides[stage + 1] if i == 0 else 1
      sub = lambda a: a[:, :, ::s, ::s]
      shortcut = x
      if s > 1 or x.shape[-1] != bn.widths[stage]:
        shortcut = np_group_norm(sub(x) @ q['shortcut']['kernel'], q['shortcut_norm'], g)
      conv_first = layers[0] == 'conv2d'  # else the stride moves to the expansion conv
      y = (x if conv_first else sub(x)) @ q['conv_a']['kernel']
      y = np_module(layers, relu(np_group_norm(y, q['conv_a_norm'], g)), q['module'],
                    bn, s if conv_first else 1)
      y = np_group_norm(y @ q['conv_c']['kernel'], q['conv_c_norm'], g)
      x = relu(shortcut + y)
  x = relu(np_group_norm(x @ p['conv5']['kernel'], p['conv5_norm'], g)).mean((1, 2, 3))
  return np_dense(relu(np_dense(x, p['fc1'])), p['head'])


_VARIANTS = [(m, 'vector', 'tokenfuser') for m in sorted(bnk.MODULE_LAYERS)] + [
    ('conv2d_tokenlearner', 'mhsa', 'tokenfuser'),  # Table 14: TokenLearner + MHSA + TokenFuser
    ('conv2d_grid_tokens', 'vector', 'broadcast'),  # Table 14: VectT + broadcasting
    ('conv2d_prior_tokens', 'vector', 'broadcast')]  # Table 14: prior-only + broadcasting


@pytest.mark.parametrize('module, transformer, fuser', _VARIANTS)
def test_module_matches_numpy(module, transformer, fuser, randomise):
  cfg = BottleneckConfig(**dict(TINY, module=module, transformer=transformer, fuser=fuser))
  mod = bnk.BottleneckModule(bnk.MODULE_LAYERS[module], cfg)
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 4, 16)).astype(np.float32)
  shapes = jax.eval_shape(mod.init, jax.random.key(0), x)['params']
  base = jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, float(path[-1].key == 'scale'), np.float32), shapes)
  params = randomise(base, scale=0.3)
  got, maps = jax.jit(lambda p: mod.apply({'params': p}, x))(params)
  if 'tokenlearner' in module:  # [B, T, S, H, W]
    assert maps.shape == (2, 3, cfg.num_tokens, 4, 4)
  else:
    assert maps is None
  want = np_module(bnk.MODULE_LAYERS[module], x.astype(np.float64),
                   jax.tree.map(lambda a: np.asarray(a, np.float64), params), cfg)
  assert np.abs(want - x).max() > 0.1  # the module does something
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_whole_network_matches_numpy(randomise):
  """Stem (strided conv2d + channel-wise 5-tap conv1d), the strided first modules, the
  shortcuts, the Conv2D + TokenLearner modules of res5, conv5, pooling and head."""
  cfg = ModelConfig.from_dict({'name': 'bottleneck', 'num_classes': 5,
                               'bottleneck': TINY},
                              image_size=(16, 12), num_frames=3)
  model = build_model(cfg)
  x = np.random.default_rng(1).standard_normal((2, *cfg.input_shape)).astype(np.float32)
  params = random_params(model, x, randomise)
  logits, aux = jax.jit(lambda p: model.apply({'params': p}, x, train=False))(params)
  want = np_network(x.astype(np.float64),
                    jax.tree.map(lambda a: np.asarray(a, np.float64), params), cfg)
  assert len(aux['attention_maps']) == 2 and np.abs(want).max() > 0.1
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
