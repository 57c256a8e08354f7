"""The §6 video model: an X(2+1)D-M backbone whose last stage is a TokenLearner bottleneck.

`config.model.name='bottleneck'`, options in `config.model.bottleneck` (BottleneckConfig). Input
`[B, T, H, W, 3]`, output `(logits [B, K], aux)` like the ViT / ViViT models.

Backbone, X(2+1)D-M (§6.1): X3D-M (Feichtenhofer, "X3D", CVPR 2020, Table 1) with every 3D XYT
convolution replaced by a 2D spatial 1x3x3 conv followed by a 1D temporal 3x1x1 conv, and no
squeeze-excitation and no swish. The numbers (all `BottleneckConfig` defaults):
- stem: 1x3x3 conv 3 -> 24 (spatial stride 2), then X3D's channel-wise 5x1x1 temporal conv (24).
- res2..res5: output widths 24 / 48 / 96 / 192, depths 3 / 5 / 11 / 7 residual modules,
  inverted bottleneck with expansion 2.25 -> inner widths d = 54 / 108 / 216 / 432; the first
  module of each stage has spatial stride 2 (total stride 32: 224 -> 7x7, 256 -> 8x8 at res5).
- residual module: 1x1x1 conv (width -> d), norm, ReLU; the (2+1)D pair [1x3x3 conv d -> d
  (stride), norm, ReLU, 3x1x1 conv d -> d, norm, ReLU]; 1x1x1 conv (d -> width), norm with a
  zero-initialised scale (a fresh module is the identity); + shortcut (1x1x1 conv + norm when
  the shape changes); ReLU.
- conv5: 1x1x1 conv 192 -> 432, norm, ReLU; global average pool over T, H, W; fc 432 -> 2048,
  ReLU (no norm, as X3D); dropout 0.5; fc 2048 -> classes (zero-initialised).
The (2+1)D convolutions are full (not channel-wise as X3D's 3x3x3): the paper's per-module counts
fit only full ones (Conv2D + Conv1D at d = 432 has 9 * 432^2 + 3 * 432^2 = 2.24M parameters,
Table 13). No temporal stride anywhere: T frames in, T frames at res5. The 1x3x3 / 3x1x1 convs
run as 2D convs over B*T frames / 1D convs over B*H*W positions (kernels [3, 3, C, C'] and
[3, C, C']), 1x1x1 convs as Dense layers: the same maps, much faster on XLA:CPU than 3D convs.

Activation: ReLU everywhere in the backbone (X3D's non-swish activation; the paper removes swish).
Normalisation: GroupNorm with gcd(channels, 8) groups (`norm_groups`), statistics per example
over (T, H, W, channels of the group); `norm_groups=0` is a LayerNorm over each position's
channels. X3D uses BatchNorm; GroupNorm needs no batch statistics,
so the model fits the project's trainer (no `batch_stats` collection), behaves the same in train
and eval and does not depend on the per-device batch (4 clips per core in B.3).

The bottleneck (Fig. 9): in the last stage (`module_stages=(3,)`), the (2+1)D pair of every
residual module is replaced by `module` (Tables 12, 13, §6.3.3), which keeps the [B, T, H, W, d]
shape:
- 'conv2d_tokenlearner' (the final model): 1x3x3 conv, norm, ReLU, then TokenLearner (alpha = one
  3x3 conv2d, S = 8 tokens per frame: 8 x 64 = 512 tokens for 64 frames) -> Vector Transformer
  (Eq. 3, below) -> TokenFuser (Eq. 2) with the conv output as residual.
- 'tokenlearner': the same without the conv2d.
- 'joint_mhsa' / 'conv2d_joint_mhsa': joint space-time MHSA (8 heads) over all T*H*W positions.
- 'conv2d_conv1d': the backbone's own (2+1)D pair (the backbone / Conv1D baseline).
- 'conv2d_mixer': conv2d, then an MLP-Mixer layer: a temporal token-mixing MLP (T -> T -> T per
  position) and a channel MLP (d -> mixer_dim (default d) -> d), each pre-LayerNorm with a
  residual.
- 'conv2d_temporal': conv2d, then MHSA over the T frames of each position.
- 'spatial_temporal' / 'conv2d_spatial_temporal': MHSA over the H*W positions of each frame,
  then over time (TimeSformer-style divided attention).
- 'spatial_tokenlearner': spatial MHSA, then TokenLearner -> Vector Transformer -> TokenFuser.
- §6.3.3 tokenizers, each conv2d -> tokens -> Vector Transformer -> TokenFuser:
  'conv2d_grid_tokens' (the frame split into a fixed 2 x 4 grid of regions, mean-pooled: 8
  tokens), 'conv2d_dense_tokens' (tokens straight from a dense layer over the positions,
  z[t, s, c] = sum_n W[n, s] x[t, n, c] + b[s, c], then a dense layer over channels),
  'conv2d_pool_mlp' (global average pool per frame, then an MLP C -> C -> S*C).
MHSA layers are x + MHSA(LayerNorm(x)) (`num_heads` heads, qkv width `mhsa_dim`, default d;
`mhsa_dim=176` gives the paper's 0.30M parameters per MHSA). Without a conv2d, the stride of a
stage's first module moves to its 1x1x1 expansion conv.

Vector Transformer (Appendix A, Eq. 3): z + VT(LayerNorm(z)) with
    y_i = sum_j softmax_j(f_q(z_i) (.) f_k(z_j)) (.) f_v(z_j),
f_q, f_k, f_v dense d -> d; gamma is the softmax over j alone (the projections keep the channel
size, Appendix A). The attention tensor is [ST, ST, d] per example (512 x 512 x 432 floats = 453
MB at the paper's setting); `query_chunk=c` computes it c queries at a time (`jax.lax.map` over
chunks, each rematerialised in the backward pass), so only [c, ST, d] is live, forward and
backward. `transformer='mhsa'` uses 8-head MHSA instead (Table 14).

Per-module FLOPs (`module_cost`, `python -m token_learner.flops --module`) lower one module alone
on the paper's [1, 64, 8, 8, 432] input.
"""
import math
from typing import Any, Optional, Sequence, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from token_learner.model_config import BottleneckConfig, ModelConfig
from token_learner.modules import TokenFuser, TokenLearner

Dtype = Any

# module name -> the layers that replace the (2+1)D pair, in order.
MODULE_LAYERS = {
    'conv2d_tokenlearner': ('conv2d', 'tokenlearner'),
    'tokenlearner': ('tokenlearner',),
    'joint_mhsa': ('joint',),
    'conv2d_joint_mhsa': ('conv2d', 'joint'),
    'conv2d_conv1d': ('conv2d', 'conv1d'),
    'conv2d_mixer': ('conv2d', 'mixer'),
    'conv2d_temporal': ('conv2d', 'temporal'),
    'spatial_temporal': ('spatial', 'temporal'),
    'conv2d_spatial_temporal': ('conv2d', 'spatial', 'temporal'),
    'spatial_tokenlearner': ('spatial', 'tokenlearner'),
    'conv2d_grid_tokens': ('conv2d', 'grid_tokens'),
    'conv2d_dense_tokens': ('conv2d', 'dense_tokens'),
    'conv2d_pool_mlp': ('conv2d', 'pool_mlp'),
}
TOKENIZERS = ('tokenlearner', 'grid_tokens', 'dense_tokens', 'pool_mlp')
# The paper's per-module numbers at T x H x W x d = 64 x 8 x 8 x 432: (GFLOPs, params in M),
# Tables 12 and 13 (GFLOPs there are 2 x multiply-adds, see `module_cost`).
PAPER_MODULE_COST = {
    'joint_mhsa': (22.0, 0.30), 'conv2d_joint_mhsa': (35.8, 1.98),
    'tokenlearner': (3.4, 0.81), 'conv2d_tokenlearner': (17.2, 2.49),
    'conv2d_conv1d': (18.3, 2.24), 'conv2d_mixer': (13.8, 2.06),
    'conv2d_temporal': (16.5, 1.98), 'spatial_temporal': (5.5, 0.59),
    'conv2d_spatial_temporal': (19.2, 2.27), 'spatial_tokenlearner': (6.2, 1.11),
}


def group_norm(channels: int, groups: int, dtype=None, zero: bool = False, name=None):
  """GroupNorm with gcd(channels, groups) groups, or (groups=0) a LayerNorm over the channels of
  each position; `zero` initialises its scale to 0."""
  scale_init = nn.initializers.zeros if zero else nn.initializers.ones
  if not groups:
    return nn.LayerNorm(dtype=dtype, name=name, scale_init=scale_init)
  return nn.GroupNorm(num_groups=math.gcd(channels, groups), dtype=dtype, name=name,
                      scale_init=scale_init)


def conv2d(x, features: int, stride: int = 1, *, dtype=None, name=None, kernel: int = 3):
  """The spatial half of a (2+1)D pair: a k x k conv of every frame of `[B, T, H, W, C]` ('SAME',
  no bias; run as a 2D conv on B*T frames, which XLA executes much faster than a 1xkxk 3D conv)."""
  b, t = x.shape[:2]
  frames = einops.rearrange(x, 'b t h w c -> (b t) h w c')
  y = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME',
              use_bias=False, dtype=dtype, name=name)(frames)
  return einops.rearrange(y, '(b t) h w c -> b t h w c', b=b, t=t)


def conv1d(x, features: int, kernel: int, *, groups: int = 1, dtype=None, name=None):
  """The temporal half of a (2+1)D pair: a k-tap conv over time at every position of
  `[B, T, H, W, C]` ('SAME', no bias; `groups=C` is channel-wise)."""
  b, _, h, w, _ = x.shape
  y = nn.Conv(features, (kernel,), padding='SAME', feature_group_count=groups, use_bias=False,
              dtype=dtype, name=name)(einops.rearrange(x, 'b t h w c -> (b h w) t c'))
  return einops.rearrange(y, '(b h w) t c -> b t h w c', b=b, h=h, w=w)


def pointwise(x, features: int, stride: int = 1, *, dtype=None, name=None):
  """A 1x1x1 conv (a Dense over channels, no bias), after spatial subsampling by `stride`."""
  if stride > 1:
    x = x[:, :, ::stride, ::stride]
  return nn.Dense(features, use_bias=False, dtype=dtype, name=name)(x)


def vector_attention(q, k, v, query_chunk: int = 0):
  """Eq. 3: y_i = sum_j softmax_j(q_i (.) k_j) (.) v_j, one attention weight per channel.

  Args:
    q, k, v: `[B, N, d]` projected tokens.
    query_chunk: queries per chunk; 0 (or >= N) builds the whole `[B, N, N, d]` tensor at once.
      Otherwise the queries are padded to a multiple of the chunk and mapped over sequentially
      (`jax.lax.map`), each chunk under `jax.checkpoint`, so at most `[B, chunk, N, d]` is live.

  Returns:
    `[B, N, d]`.
  """
  def attend(qc):  # [B, c, d] -> [B, c, d]
    logits = qc[:, :, None, :].astype(jnp.float32) * k[:, None, :, :].astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=2).astype(v.dtype)  # softmax over j, per channel
    return jnp.einsum('bcnd,bnd->bcd', weights, v)

  b, n, d = q.shape
  if not query_chunk or query_chunk >= n:
    return attend(q)
  pad = -n % query_chunk
  chunks = jnp.pad(q, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, query_chunk, d)
  out = jax.lax.map(jax.checkpoint(attend), chunks.swapaxes(0, 1))  # [chunks, B, c, d]
  return out.swapaxes(0, 1).reshape(b, -1, d)[:, :n]


class VectorTransformer(nn.Module):
  """z + VT(LayerNorm(z)) on tokens `[B, N, d]` (Appendix A, Eq. 3); see `vector_attention`."""
  query_chunk: int = 0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    del train
    d = z.shape[-1]
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(z)
    q, k, v = (nn.Dense(d, dtype=self.dtype, name=n)(y) for n in ('query', 'key', 'value'))
    return z + vector_attention(q, k, v, self.query_chunk).astype(z.dtype)


class SelfAttention(nn.Module):
  """x + MHSA(LayerNorm(x)) on `[B, N, d]` (qkv width d)."""
  num_heads: int = 8
  qkv_features: Optional[int] = None  # None: the input width
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        qkv_features=self.qkv_features,
                                        name='MultiHeadDotProductAttention_0')(y, y)
    return x + y


def fixed_grid_tokens(x, num_tokens: int):
  """§6.3.3 (1): each frame of `[B, T, H, W, C]` split into a fixed a x b grid of regions (a*b =
  num_tokens, a the largest divisor <= sqrt), each mean-pooled: `[B, T*S, C]`. Uneven splits use
  floor boundaries, so any H >= a, W >= b works."""
  a = max(i for i in range(1, int(math.isqrt(num_tokens)) + 1) if num_tokens % i == 0)
  b_ = num_tokens // a
  h, w = x.shape[2:4]
  if h < a or w < b_:
    raise ValueError(f'a {h}x{w} frame cannot be split into a {a}x{b_} grid of tokens')
  rows = [(i * h // a, (i + 1) * h // a) for i in range(a)]
  cols = [(j * w // b_, (j + 1) * w // b_) for j in range(b_)]
  tokens = [x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for r0, r1 in rows for c0, c1 in cols]
  return einops.rearrange(jnp.stack(tokens, axis=2), 'b t s c -> b (t s) c')


class BottleneckModule(nn.Module):
  """The module replacing the (2+1)D pair: `[B, T, H, W, d] -> [B, T, H/stride, W/stride, d]`.

  Attributes:
    layers: the layer kinds (`MODULE_LAYERS[name]`).
    config: BottleneckConfig (tokens, heads, chunking, norm groups, kernels).
    stride: spatial stride, applied by a leading 'conv2d' (else by the caller).
    dtype: compute dtype.

  Returns `(x, maps)`, maps the TokenLearner's attention maps `[B, T, S, H, W]` (or None).
  """
  layers: Tuple[str, ...]
  config: BottleneckConfig
  stride: int = 1
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    cfg, dtype, maps = self.config, self.dtype, None
    d = x.shape[-1]
    norm = lambda name: group_norm(d, cfg.norm_groups, dtype, name=name)
    for i, kind in enumerate(self.layers):
      b, t, h, w, _ = x.shape
      if kind == 'conv2d':
        s = self.stride if i == 0 else 1
        x = conv2d(x, d, s, dtype=dtype, name='conv2d')
        x = nn.relu(norm('conv2d_norm')(x))
      elif kind == 'conv1d':
        x = conv1d(x, d, cfg.temporal_kernel, dtype=dtype, name='conv1d')
        x = nn.relu(norm('conv1d_norm')(x))
      elif kind in ('joint', 'spatial', 'temporal'):
        pattern = {'joint': ('b t h w c', 'b (t h w) c'),
                   'spatial': ('b t h w c', '(b t) (h w) c'),
                   'temporal': ('b t h w c', '(b h w) t c')}[kind]
        seq = einops.rearrange(x, f'{pattern[0]} -> {pattern[1]}')
        seq = SelfAttention(cfg.num_heads, cfg.mhsa_dim or None, dtype,
                            name=f'{kind}_mhsa')(seq)
        x = einops.rearrange(seq, f'{pattern[1]} -> {pattern[0]}', b=b, t=t, h=h, w=w)
      elif kind == 'mixer':
        y = einops.rearrange(nn.LayerNorm(dtype=dtype, name='mixer_norm_0')(x),
                             'b t h w c -> b h w c t')
        y = nn.Dense(t, dtype=dtype, name='mixer_token_1')(
            nn.gelu(nn.Dense(t, dtype=dtype, name='mixer_token_0')(y)))
        x = x + einops.rearrange(y, 'b h w c t -> b t h w c')
        y = nn.LayerNorm(dtype=dtype, name='mixer_norm_1')(x)
        y = nn.gelu(nn.Dense(cfg.mixer_dim or d, dtype=dtype,
                             name='mixer_channel_0')(y))
        x = x + nn.Dense(d, dtype=dtype, name='mixer_channel_1')(y)
      elif kind in TOKENIZERS:
        tokens, maps = self._tokenize(kind, x)
        if cfg.transformer == 'vector':
          tokens = VectorTransformer(cfg.query_chunk, dtype, name='vector_transformer')(tokens)
        else:
          tokens = SelfAttention(cfg.num_heads, cfg.mhsa_dim or None, dtype,
                                 name='token_mhsa')(tokens)
        x = TokenFuser(mixing='global', mlp_dim=cfg.fuser_mlp_dim, dtype=dtype,
                       name='tokenfuser')(tokens, x, train=train)
      else:
        raise ValueError(f'unknown bottleneck layer {kind!r}')
    return x, maps

  def _tokenize(self, kind, x):
    """`[B, T, H, W, C]` -> (tokens `[B, T*S, C]`, maps or None)."""
    cfg, dtype = self.config, self.dtype
    s, (b, t, h, w, c) = cfg.num_tokens, x.shape
    if kind == 'tokenlearner':
      return TokenLearner(s, num_conv_layers=cfg.tl_conv_layers, dtype=dtype,
                          name='tokenlearner')(x)
    if kind == 'grid_tokens':
      return fixed_grid_tokens(x, s), None
    if kind == 'dense_tokens':
      frames = einops.rearrange(x, 'b t h w c -> b t c (h w)')
      z = nn.Dense(s, use_bias=False, dtype=dtype, name='dense_tokens_positions')(frames)
      z = einops.rearrange(z, 'b t c s -> b t s c')
      z = z + self.param('dense_tokens_bias', nn.initializers.zeros, (s, c)).astype(z.dtype)
      z = nn.Dense(c, dtype=dtype, name='dense_tokens_channels')(z)
      return einops.rearrange(z, 'b t s c -> b (t s) c'), None
    # 'pool_mlp'
    z = x.mean(axis=(2, 3))
    z = nn.Dense(s * c, dtype=dtype, name='pool_mlp_1')(
        nn.gelu(nn.Dense(c, dtype=dtype, name='pool_mlp_0')(z)))
    return z.reshape(b, t * s, c), None


class XResidual(nn.Module):
  """One inverted-bottleneck residual module of X(2+1)D (see the module docstring)."""
  width: int
  inner: int
  stride: int
  layers: Tuple[str, ...]
  config: BottleneckConfig
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    cfg, dtype, s = self.config, self.dtype, self.stride
    groups = cfg.norm_groups
    shortcut = x
    if s > 1 or x.shape[-1] != self.width:
      shortcut = pointwise(x, self.width, s, dtype=dtype, name='shortcut')
      shortcut = group_norm(self.width, groups, dtype, name='shortcut_norm')(shortcut)
    s_in = 1 if self.layers[0] == 'conv2d' else s
    y = pointwise(x, self.inner, s_in, dtype=dtype, name='conv_a')
    y = nn.relu(group_norm(self.inner, groups, dtype, name='conv_a_norm')(y))
    y, maps = BottleneckModule(self.layers, cfg, s if s_in == 1 else 1, dtype,
                               name='module')(y, train=train)
    y = pointwise(y, self.width, dtype=dtype, name='conv_c')
    y = group_norm(self.width, groups, dtype, zero=True, name='conv_c_norm')(y)
    return nn.relu(shortcut + y), maps


class XBottleneck(nn.Module):
  """X(2+1)D-M + the §6 bottleneck for clips `[B, T, H, W, 3]`; returns `(logits, aux)`.

  aux: 'attention_maps' (the TokenLearners' maps `[B, T, S, H, W]`, one per module that has one)
  and 'pre_logits' `[B, head_width]`.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, video, *, train: bool):
    cfg = self.config
    bn, dtype = cfg.bottleneck, jnp.dtype(cfg.dtype)
    s0 = bn.strides[0]
    x = conv2d(video.astype(dtype), bn.stem_width, s0, dtype=dtype, name='stem_xy')
    if bn.stem_temporal_kernel:
      x = conv1d(x, bn.stem_width, bn.stem_temporal_kernel, groups=bn.stem_width, dtype=dtype,
                 name='stem_t')
    x = nn.relu(group_norm(bn.stem_width, bn.norm_groups, dtype, name='stem_norm')(x))
    maps = []
    for stage in range(4):
      layers = MODULE_LAYERS[bn.module if stage in bn.module_stages else 'conv2d_conv1d']
      for i in range(bn.depths[stage]):
        x, m = XResidual(bn.widths[stage], bn.inner_width(stage),
                         bn.strides[stage + 1] if i == 0 else 1, layers, bn, dtype,
                         name=f'res{stage + 2}_{i}')(x, train=train)
        if m is not None:
          maps.append(m)
    x = pointwise(x, bn.conv5_width, dtype=dtype, name='conv5')
    x = nn.relu(group_norm(bn.conv5_width, bn.norm_groups, dtype, name='conv5_norm')(x))
    x = x.mean(axis=(1, 2, 3))
    x = nn.relu(nn.Dense(bn.head_width, dtype=dtype, name='fc1')(x))
    x = nn.Dropout(bn.head_dropout)(x, deterministic=not train)
    logits = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.constant(cfg.head_bias_init), name='head')(x)
    return logits.astype(jnp.float32), {'attention_maps': tuple(maps), 'pre_logits': x}


def stage_grids(model_cfg: ModelConfig):
  """[(T, H, W, d)] at the input of each stage's modules (after its stride), res2..res5."""
  bn = model_cfg.bottleneck
  h, w = model_cfg.image_size
  h, w = -(-h // bn.strides[0]), -(-w // bn.strides[0])
  out = []
  for stage in range(4):
    h, w = -(-h // bn.strides[stage + 1]), -(-w // bn.strides[stage + 1])
    out.append((model_cfg.num_frames, h, w, bn.inner_width(stage)))
  return out


def module_cost(bn: BottleneckConfig, module: Optional[str] = None,
                shape: Sequence[int] = (64, 8, 8, 432)):
  """`(gmacs, params)` of one bottleneck module alone on a `[1, *shape]` (T, H, W, d) input.

  The paper's per-module setting (Tables 12, 13) is T x H x W x d = 64 x 8 x 8 x 432. gmacs are
  multiply-adds / 1e9 (XLA cost analysis flops / 2, the project's convention); the paper's
  module GFLOPs are 2 x gmacs (Conv2D + Conv1D = 9.17 GMACs = 18.3 GFLOPs, Table 13). Lowered
  with query_chunk=0 (XLA's cost analysis counts a loop body once), nothing is executed.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  bn = dataclasses.replace(bn, query_chunk=0, module=module or bn.module)
  mod = BottleneckModule(MODULE_LAYERS[bn.module], bn)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  params = jax.eval_shape(lambda: mod.init(jax.random.key(0), jnp.zeros(x.shape)))['params']
  fwd = jax.jit(lambda p, v: mod.apply({'params': p}, v)[0])
  cost = fwd.lower(params, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  return float(cost['flops']) / 2 / 1e9, n


def analytic_module_cost(bn: BottleneckConfig, module: Optional[str] = None,
                         shape: Sequence[int] = (64, 8, 8, 432)):
  """The per-layer count of one module by formula: `[(layer, macs, params)]`.

  Only multiplications of weights or of two activations are counted (convolutions over all
  k x k taps, the zero padding included; dense layers; attention products; the TokenLearner's
  pooling and the TokenFuser's combination); no norms, activations, softmaxes or biases' adds.
  N = T*H*W positions, M = T*S tokens; params include biases and norm scales / offsets.
  """
  module = module or bn.module
  t, h, w, d = shape
  n, s = t * h * w, bn.num_tokens
  m = t * s
  dq = bn.mhsa_dim or d  # MHSA qkv width
  gn = 2 * d  # a norm's scale + offset
  rows = []
  for kind in MODULE_LAYERS[module]:
    if kind == 'conv2d':
      rows.append(('conv2d 3x3', n * 9 * d * d, 9 * d * d + gn))
    elif kind == 'conv1d':
      k = bn.temporal_kernel
      rows.append((f'conv1d {k}-tap', n * k * d * d, k * d * d + gn))
    elif kind in ('joint', 'spatial', 'temporal'):
      length = {'joint': n, 'spatial': h * w, 'temporal': t}[kind]
      rows.append((f'{kind} MHSA q,k,v,out (width {dq})', 4 * n * d * dq,
                   4 * d * dq + 3 * dq + d + gn))
      rows.append((f'{kind} MHSA QK^T + AV ({length} tokens)', 2 * n * length * dq, 0))
    elif kind == 'mixer':
      md = bn.mixer_dim or d
      rows.append(('mixer token MLP (T -> T -> T)', 2 * h * w * d * t * t, 2 * (t * t + t) + gn))
      rows.append((f'mixer channel MLP (d -> {md} -> d)', 2 * n * d * md,
                   2 * d * md + md + d + gn))
    elif kind in TOKENIZERS:
      if kind == 'tokenlearner':
        convs = [(d, s)] + [(s, s)] * (bn.tl_conv_layers - 1)
        rows.append(('TokenLearner alpha conv(s) 3x3 -> S', sum(n * 9 * a * b for a, b in convs),
                     sum(9 * a * b for a, b in convs) + gn))
        rows.append(('TokenLearner pooling (maps x input)', n * s * d, 0))
      elif kind == 'dense_tokens':
        rows.append(('dense tokens (positions, channels)', t * d * h * w * s + m * d * d,
                     h * w * s + s * d + d * d + d))
      elif kind == 'pool_mlp':
        rows.append(('pool + MLP d -> d -> S*d', t * (d * d + d * s * d),
                     d * d + d + d * s * d + s * d))
      else:  # grid_tokens: averages only
        rows.append(('fixed grid tokens (averages)', 0, 0))
      if bn.transformer == 'vector':
        rows.append(('Vector Transformer q,k,v', 3 * m * d * d, 3 * (d * d + d) + gn))
        rows.append(('Vector Transformer [M, M, d] products (q.k, weights.v)', 2 * m * m * d, 0))
      else:
        rows.append((f'token MHSA q,k,v,out (width {dq})', 4 * m * d * dq,
                     4 * d * dq + 3 * dq + d + gn))
        rows.append(('token MHSA QK^T + AV', 2 * m * m * dq, 0))
      f = bn.fuser_mlp_dim
      rows.append(('TokenFuser token mixing M x M', m * m * d, m * m + 2 * gn))
      rows.append((f'TokenFuser beta MLP d -> {f} -> S', n * (d * f + f * s),
                   d * f + f + f * s + s + gn))
      rows.append(('TokenFuser B_w x tokens', n * s * d, 0))
    else:
      raise ValueError(f'unknown bottleneck layer {kind!r}')
  return rows


def analytic_network_cost(model_cfg: ModelConfig, module: Optional[str] = None) -> float:
  """Multiply-adds of the whole network at batch 1 by formula (the counting of
  `analytic_module_cost`: every tap of every conv, no norms / activations), for Table 11."""
  bn = model_cfg.bottleneck
  module = module or bn.module
  t, (h, w) = model_cfg.num_frames, model_cfg.image_size
  up = lambda a, s: -(-a // s)
  h, w = up(h, bn.strides[0]), up(w, bn.strides[0])
  macs = t * h * w * (9 * 3 * bn.stem_width + bn.stem_temporal_kernel * bn.stem_width)
  c = bn.stem_width
  for stage in range(4):
    layers_of = module if stage in bn.module_stages else 'conv2d_conv1d'
    d, width = bn.inner_width(stage), bn.widths[stage]
    for i in range(bn.depths[stage]):
      s = bn.strides[stage + 1] if i == 0 else 1
      n_in = t * h * w
      h, w = up(h, s), up(w, s)
      n = t * h * w
      if s > 1 or c != width:
        macs += n * c * width  # shortcut
      macs += (n_in if MODULE_LAYERS[layers_of][0] == 'conv2d' else n) * c * d  # conv_a
      macs += sum(r[1] for r in analytic_module_cost(bn, layers_of, (t, h, w, d)))
      macs += n * d * width  # conv_c
      c = width
  macs += t * h * w * c * bn.conv5_width
  return macs + bn.conv5_width * bn.head_width + bn.head_width * model_cfg.num_classes


# Table 11 (AViD, whole network, GFLOPs x views at 256 x 256 x 64): our module for each row.
PAPER_NETWORK_GFLOPS = {'conv2d_tokenlearner': ('Ours', 487.0),
                        'conv2d_conv1d': ('Backbone (X(2+1)D-M)', 532.0),
                        'spatial_temporal': ('X(2+1)D-M, disjoint space+time', 493.0)}


def network_table(model_cfg: ModelConfig) -> str:
  """Table 11's rows: whole-network GFLOPs (2 x GMACs) by XLA and by formula, beside the paper."""
  from token_learner import flops  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  lines = [f'whole network, {model_cfg.num_frames} x {model_cfg.image_size[0]} x '
           f'{model_cfg.image_size[1]}, {model_cfg.num_classes} classes (Table 11)',
           f'{"module":24s} {"XLA":>6s} {"formula":>7s} {"paper":>6s} {"diff":>6s}  row']
  for name, (row, paper) in PAPER_NETWORK_GFLOPS.items():
    cfg = dataclasses.replace(model_cfg, bottleneck=dataclasses.replace(
        model_cfg.bottleneck, module=name, query_chunk=0))
    formula = 2 * analytic_network_cost(cfg) / 1e9
    xla = 2 * flops.count_flops_and_params(cfg)[0]
    lines.append(f'{name:24s} {xla:6.1f} {formula:7.1f} {paper:6.1f} {_pct(formula, paper)}  '
                 f'{row}')
  return '\n'.join(lines)


def _pct(ours: float, paper: float) -> str:
  return f'{100 * (ours / paper - 1):+5.0f}%' if paper == paper else '     '


def module_table(bn: BottleneckConfig, modules: Optional[Sequence[str]] = None,
                 shape: Sequence[int] = (64, 8, 8, 432), breakdown: bool = False) -> str:
  """A text table of each module's cost under two countings, beside the paper's numbers.

  'XLA': `module_cost` (XLA's count: only the taps that touch the input, so a 3x3 'SAME' conv on
  8 x 8 counts 22^2 / 24^2 = 84 % of its taps; norms, softmax and activations included).
  'formula': `analytic_module_cost` (all taps, multiplies only). GFLOPs = 2 x GMACs, the unit of
  Tables 12 / 13 (Conv2D + Conv1D = 2 x 12 x 432^2 x 4096 = 18.3). `breakdown` adds the formula's
  per-layer rows.
  """
  lines = [f'per-module cost on T x H x W x d = {" x ".join(map(str, shape))} '
           '(GFLOPs = 2 x GMACs, the convention of Tables 12 / 13)',
           f'{"module":24s} {"XLA":>6s} {"formula":>7s} {"paper":>6s} {"diff":>6s} '
           f'{"params":>7s} {"paper":>6s} {"diff":>6s}']
  for name in modules or MODULE_LAYERS:
    gmacs, n = module_cost(bn, name, shape)
    rows = analytic_module_cost(bn, name, shape)
    formula = 2 * sum(r[1] for r in rows) / 1e9
    pf, pp = PAPER_MODULE_COST.get(name, (float('nan'), float('nan')))
    lines.append(f'{name:24s} {2 * gmacs:6.2f} {formula:7.2f} {pf:6.1f} {_pct(formula, pf)} '
                 f'{n / 1e6:6.2f}M {pp:5.2f}M {_pct(n / 1e6, pp)}')
    if breakdown:
      for layer, macs, params in rows:
        lines.append(f'    {layer:52s} {2 * macs / 1e9:7.3f} GFLOPs {params / 1e6:6.3f}M')
  return '\n'.join(lines)
