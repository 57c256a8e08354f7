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
- Table 14 (Appendix D.1, components on Conv2D + transformer; the paper names the rows only, the
  readings here are this project's): 'conv2d_joint_mhsa' = "Standard transformer (MHSA)";
  'conv2d_vector' = "Vector transformer (VectT)", Eq. 3 over all T*H*W positions (chunk it with
  `query_chunk`); 'conv2d_prior_tokens' + `fuser='broadcast'` = "Prior-only-attention +
  broadcasting": S tokens pooled (Eq. 1, sum) with learned maps sigmoid(P), P in R^{S x H x W} a
  parameter that ignores the input (so the module is tied to its training grid), then VectT,
  then broadcasting; 'conv2d_grid_tokens' + `fuser='broadcast'` = "VectT + broadcasting" and
  'conv2d_grid_tokens' = "VectT + TokenFuser" (tokens without a TokenLearner: the fixed grid);
  'conv2d_tokenlearner' with `transformer='mhsa'` / 'vector' = "TokenLearner + MHSA / VectT +
  TokenFuser". `fuser='broadcast'`: every position of frame t gets x + mean_s y_{t,s}, instead
  of the TokenFuser.
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

Per-module and whole-network costs (Tables 11-13) live in `token_learner.flops` (`module_cost`,
`module_table`, `network_table`; `python -m token_learner.flops --module`): they lower one module
alone on the paper's [1, 64, 8, 8, 432] input.
"""
import math
from typing import Any, Optional, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from token_learner.model_config import BottleneckConfig, ModelConfig
from token_learner.modules import TokenFuser, TokenLearner, einsum_attention

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
    # Table 14 (Appendix D.1) rows that are not above:
    'conv2d_vector': ('conv2d', 'joint_vector'),
    'conv2d_prior_tokens': ('conv2d', 'prior_tokens'),
}
TOKENIZERS = ('tokenlearner', 'grid_tokens', 'dense_tokens', 'pool_mlp', 'prior_tokens')


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


class PreNormMHSA(nn.Module):
  """A residual pre-norm MHSA layer, x + MHSA(LayerNorm(x)), on `[B, N, d]` (qkv width
  `qkv_features`, default d). Not the ViT's `token_learner.attention.SelfAttention` (no residual, no
  norm, its own levers); callers name it explicitly ('joint_mhsa', 'token_mhsa', ...)."""
  num_heads: int = 8
  qkv_features: Optional[int] = None  # None: the input width
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    # einsum_attention: float32 logits and softmax on compute-dtype q, k, v (flax's default
    # attention would form bfloat16 logits in a bfloat16 model).
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        qkv_features=self.qkv_features,
                                        attention_fn=einsum_attention,
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
        seq = PreNormMHSA(cfg.num_heads, cfg.mhsa_dim or None, dtype,
                            name=f'{kind}_mhsa')(seq)
        x = einops.rearrange(seq, f'{pattern[1]} -> {pattern[0]}', b=b, t=t, h=h, w=w)
      elif kind == 'joint_vector':  # Table 14 "VectT": Eq. 3 over all T*H*W positions
        seq = einops.rearrange(x, 'b t h w c -> b (t h w) c')
        seq = VectorTransformer(cfg.query_chunk, dtype, name='joint_vector_transformer')(seq)
        x = einops.rearrange(seq, 'b (t h w) c -> b t h w c', t=t, h=h, w=w)
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
          tokens = PreNormMHSA(cfg.num_heads, cfg.mhsa_dim or None, dtype,
                                 name='token_mhsa')(tokens)
        if cfg.fuser == 'broadcast':  # Table 14: each frame's mean token added everywhere
          y = einops.rearrange(tokens, 'b (t s) c -> b t s c', t=t).mean(axis=2)
          x = x + y[:, :, None, None, :].astype(x.dtype)
        else:
          x = TokenFuser(mixing='global', mlp_dim=cfg.fuser_mlp_dim, dtype=dtype,
                         mixing_init=cfg.fuser_mixing_init, name='tokenfuser')(tokens, x,
                                                                               train=train)
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
    if kind == 'prior_tokens':  # Table 14 "prior-only attention": maps that ignore the input
      prior = self.param('prior_maps', nn.initializers.normal(1.0), (s, h, w))
      maps = nn.sigmoid(prior.astype(jnp.float32)).astype(x.dtype).reshape(s, h * w)
      z = jnp.einsum('sn,btnc->btsc', maps, x.reshape(b, t, h * w, c))
      return einops.rearrange(z, 'b t s c -> b (t s) c'), None
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
    logits = nn.Dense(cfg.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.constant(cfg.head_bias_init), name='head')(x)
    return logits.astype(jnp.float32), {'attention_maps': tuple(maps), 'pre_logits': x}
