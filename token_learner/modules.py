"""TokenLearner (§2.1, Eq. 1) and TokenFuser (§2.2, Eq. 2), channels-last Flax modules.

Inputs are grids `[B, H, W, C]` (an image) or `[B, T, H, W, C]` (a video: one set of S tokens per
frame, §2.1), or token sequences `[B, H*W, C]` / `[B, T*H*W, C]` with `grid_shape=(H, W)` or
`(T, H, W)` given. Any H x W, square or not.

    tokens, maps = TokenLearner(num_tokens=8)(x)          # x [B, H, W, C] -> [B, 8, C], [B, 8, H, W]
    x = TokenFuser()(block(tokens), residual=x)           # -> [B, H, W, C]
"""
import functools
from typing import Any, Optional, Sequence, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def to_frames(x, grid_shape: Optional[Sequence[int]] = None):
  """Brings a grid or a sequence to `[B, T, H*W, C]`.

  Args:
    x: `[B, H, W, C]`, `[B, T, H, W, C]`, or `[B, N, C]` with `grid_shape` given.
    grid_shape: `(H, W)` or `(T, H, W)` of a sequence input; ignored for grid inputs.

  Returns:
    `([B, T, H*W, C] array, (T, H, W), is_video)`.
  """
  if x.ndim == 4:
    return einops.rearrange(x, 'b h w c -> b 1 (h w) c'), (1, *x.shape[1:3]), False
  if x.ndim == 5:
    return einops.rearrange(x, 'b t h w c -> b t (h w) c'), tuple(x.shape[1:4]), True
  if x.ndim == 3:
    if grid_shape is None or len(grid_shape) not in (2, 3):
      raise ValueError(f'a sequence input {x.shape} needs grid_shape=(H, W) or (T, H, W), got '
                       f'{grid_shape}')
    t, h, w = (1, *grid_shape) if len(grid_shape) == 2 else tuple(grid_shape)
    if t * h * w != x.shape[1]:
      raise ValueError(f'grid_shape={tuple(grid_shape)} does not match {x.shape[1]} positions')
    return x.reshape(x.shape[0], t, h * w, x.shape[2]), (t, h, w), len(grid_shape) == 3
  raise ValueError(f'expected a [B, (T,) H, W, C] grid or a [B, N, C] sequence, got {x.shape}')


def from_frames(frames, like):
  """Inverse of `to_frames`: `[B, T, H*W, C]` back to the layout (shape) of `like`."""
  return frames.reshape(like.shape[:-1] + frames.shape[-1:])


def _maps_layout(maps, grid, is_video):
  """`[B, T, S, H*W]` weights -> `[B, S, H, W]` (image) or `[B, T, S, H, W]` (video)."""
  maps = einops.rearrange(maps, 'b t s (h w) -> b t s h w', h=grid[1], w=grid[2])
  return maps if is_video else maps[:, 0]


def _pool(maps, frames, pooling):
  """rho of Eq. 1 as one einsum: tokens[b,t,s] = sum_n maps[b,t,s,n] * x[b,t,n] (or the mean)."""
  tokens = jnp.einsum('btsn,btnc->btsc', maps, frames)
  if pooling == 'mean':
    tokens = tokens / frames.shape[2]
  elif pooling != 'sum':
    raise ValueError(f"pooling={pooling!r} is not one of ['sum', 'mean']")
  return einops.rearrange(tokens, 'b t s c -> b (t s) c')


class TokenLearner(nn.Module):
  """TokenLearner v1 (§2.1, §3.1): conv attention maps with a sigmoid, Eq. 1.

  alpha = LayerNorm -> (num_conv_layers - 1) x [3x3 conv to S channels, GELU] -> 3x3 conv to S,
  no biases; A_i = sigmoid(alpha_i(X_t)); z_i = rho(X_t (.) A_i), rho = sum (default) or mean over
  the positions of the *un-normalised* input (the LayerNorm feeds only alpha).

  Attributes:
    num_tokens: S, tokens learned per frame.
    num_conv_layers: convolutions in alpha (4 in §3.1; 1 in the §6 bottleneck model).
    kernel_size: spatial size of each convolution.
    pooling: 'sum' or 'mean' (rho of Eq. 1).
    dtype: compute dtype.

  Call: `(x, grid_shape=None, *, train=False)` with x as in the module docstring. Returns
  `(tokens [B, S, C] or [B, T*S, C], maps [B, S, H, W] or [B, T, S, H, W])`.
  """
  num_tokens: int = 8
  num_conv_layers: int = 4
  kernel_size: Tuple[int, int] = (3, 3)
  pooling: str = 'sum'
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, grid_shape=None, *, train: bool = False):
    del train  # No stochastic parts; the argument keeps the TokenLearner versions interchangeable.
    frames, grid, is_video = to_frames(x, grid_shape)
    b, t = frames.shape[:2]
    alpha = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(frames)
    alpha = einops.rearrange(alpha, 'b t (h w) c -> (b t) h w c', h=grid[1], w=grid[2])
    for i in range(self.num_conv_layers):
      alpha = nn.Conv(self.num_tokens, self.kernel_size, padding='SAME', use_bias=False,
                      dtype=self.dtype, name=f'Conv_{i}')(alpha)
      if i < self.num_conv_layers - 1:
        alpha = nn.gelu(alpha)
    alpha = einops.rearrange(alpha, '(b t) h w s -> b t s (h w)', b=b, t=t)
    maps = nn.sigmoid(alpha)
    return _pool(maps, frames, self.pooling), _maps_layout(maps, grid, is_video)


class TokenLearnerV11(nn.Module):
  """TokenLearner v1.1: MLP attention maps with a softmax over the positions.

  alpha = LayerNorm -> Dense(bottleneck_dim) -> GELU -> Dropout -> Dense(S) -> Dropout; for each
  token the weights are a softmax over the H*W positions of its frame (they sum to 1), and
  tokens = einsum(weights, un-normalised input).

  Attributes:
    num_tokens: S, tokens learned per frame.
    bottleneck_dim: hidden width of the alpha MLP.
    dropout_rate: dropout after each Dense of the alpha MLP (training only).
    dtype: compute dtype.

  Call: `(x, grid_shape=None, *, train=False)`; returns `(tokens, maps)` as TokenLearner.
  """
  num_tokens: int = 8
  bottleneck_dim: int = 64
  dropout_rate: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, grid_shape=None, *, train: bool = False):
    frames, grid, is_video = to_frames(x, grid_shape)
    alpha = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(frames)
    alpha = nn.Dense(self.bottleneck_dim, dtype=self.dtype, name='Dense_0')(alpha)
    alpha = nn.gelu(alpha)
    alpha = nn.Dropout(self.dropout_rate)(alpha, deterministic=not train)
    alpha = nn.Dense(self.num_tokens, dtype=self.dtype, name='Dense_1')(alpha)
    alpha = nn.Dropout(self.dropout_rate)(alpha, deterministic=not train)
    alpha = einops.rearrange(alpha, 'b t n s -> b t s n')
    # Softmax in float32: the weights of one token must sum to 1 over all positions.
    maps = nn.softmax(alpha.astype(jnp.float32), axis=-1).astype(frames.dtype)
    return _pool(maps, frames, 'sum'), _maps_layout(maps, grid, is_video)


MIXING_INITS = ('zeros', 'identity')  # TokenFuser.mixing_init


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(*shape, dtype=dtype)


class TokenFuser(nn.Module):
  """TokenFuser (§2.2, Eq. 2): mixes the tokens and maps them back onto the residual's grid.

  Y -> LayerNorm -> Y = (Y^T M)^T with M in R^{ST x ST} over the token axis (zero-initialised, no
  bias; `mixing='per_frame'` uses one S x S matrix for the S tokens of each frame) -> LayerNorm.
  Per frame t: B_w = sigmoid(MLP(LayerNorm(X_t))) in R^{HW x S}, MLP = Dense(mlp_dim) -> GELU ->
  Dense(S); output X_t + Dropout(B_w Y_t). With M = 0 a fresh fuser returns its residual exactly.

  Initialisation (`mixing_init`; measured by tests/test_modules.py::test_fuser_start_measured and,
  in a whole Fig. 3(b) ViT, tests/test_models.py::test_fig3b_gradients_from_the_real_init):
  - 'zeros' (default, as Scenic): M = 0. The fresh fuser is the identity, but at step 0 the
    tokens (so the TokenLearner and the block before the fuser) get exactly zero gradient, and
    LayerNorm_1 sees a zero input, so it multiplies the gradient reaching M by 1/sqrt(eps) = 1e3.
    Since LayerNorm_1 rescales any M != 0 to unit size, after a single optimizer step (even
    1e-3) the fuser adds an output about as large as its residual. A small random M would not
    help: the LayerNorm removes its scale.
  - 'identity': M = I and LayerNorm_1's scale 0 (a gate after the normalisation). The fresh fuser
    is still the identity, the gate's gradient is O(1), and the fuser's output grows from zero
    with the gate, in proportion to the learning rate.

  Attributes:
    mixing: 'global' (R^{ST} -> R^{ST}, as Eq. 2) or 'per_frame'.
    mlp_dim: hidden width of the beta MLP.
    dropout_rate: dropout on B_w Y_t (training only).
    dtype: compute dtype.

  Call: `(tokens [B, T*S, C], residual, grid_shape=None, *, train=False)`; `residual` is the input of
  the matching TokenLearner (layouts as in the module docstring). Returns an array shaped like it.
  """
  mixing: str = 'global'
  mlp_dim: int = 64
  dropout_rate: float = 0.0
  dtype: Optional[Dtype] = None
  mixing_init: str = 'zeros'  # MIXING_INITS: 'zeros' (Scenic) or 'identity' (gated, above)

  @nn.compact
  def __call__(self, tokens, residual, grid_shape=None, *, train: bool = False):
    if self.mixing_init not in MIXING_INITS:
      raise ValueError(f'mixing_init={self.mixing_init!r} is not one of {list(MIXING_INITS)}')
    frames, _, _ = to_frames(residual, grid_shape)
    b, t, _, c = frames.shape
    if tokens.ndim != 3 or tokens.shape[1] % t or tokens.shape[2] != c:
      raise ValueError(f'tokens {tokens.shape} do not fit a residual of {t} frame(s) and {c} '
                       'channels')
    s = tokens.shape[1] // t
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(tokens)
    gated = self.mixing_init == 'identity'
    mix = nn.Dense(s * t if self.mixing == 'global' else s, use_bias=False,
                   kernel_init=_identity_init if gated else nn.initializers.zeros,
                   dtype=self.dtype, name='token_mixing')
    if self.mixing == 'global':
      y = einops.rearrange(mix(einops.rearrange(y, 'b m c -> b c m')), 'b c m -> b m c')
    elif self.mixing == 'per_frame':
      y = einops.rearrange(y, 'b (t s) c -> b t c s', t=t)
      y = einops.rearrange(mix(y), 'b t c s -> b (t s) c')
    else:
      raise ValueError(f"mixing={self.mixing!r} is not one of ['global', 'per_frame']")
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1',
                     scale_init=nn.initializers.zeros if gated else nn.initializers.ones)(y)
    y = einops.rearrange(y, 'b (t s) c -> b t s c', t=t)

    beta = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(frames)
    beta = nn.Dense(self.mlp_dim, dtype=self.dtype, name='Dense_0')(beta)
    beta = nn.Dense(s, dtype=self.dtype, name='Dense_1')(nn.gelu(beta))
    weights = nn.sigmoid(beta)  # B_w: [B, T, H*W, S].
    fused = jnp.einsum('btns,btsc->btnc', weights, y)
    fused = nn.Dropout(self.dropout_rate)(fused, deterministic=not train)
    return from_frames(frames + fused, residual)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _half_einsum(spec, a, b, precision):
  """`einsum(spec, a, b)` of half-precision operands with a float32 result (float32
  accumulation); its backward takes the cotangent in the operands' dtype, so every dot of the
  gradient has half-precision operands too (autodiff would dot the float32 cotangent with the
  half operand: a float32 copy of q, k or v)."""
  return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


def _half_einsum_fwd(spec, a, b, precision):
  return _half_einsum(spec, a, b, precision), (a, b)


def _half_einsum_bwd(spec, precision, residuals, g):
  a, b = residuals
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b, precision=precision), a, b)
  return vjp(g.astype(jnp.result_type(a, b)))


_half_einsum.defvjp(_half_einsum_fwd, _half_einsum_bwd)


def _f32_einsum(spec, a, b, precision):
  """`einsum` with a float32 result: plain for float32 operands (flax's program, bit for bit),
  `_half_einsum` for half-precision ones."""
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)
  return _half_einsum(spec, a, b, precision)


def einsum_attention(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                     dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
                     precision=None, module=None):
  """Dot-product attention as two einsums, on `[B, N, H, D]` q, k, v in their own (compute)
  dtype, with the precision policy of the project: the logits q.k are accumulated and kept in
  float32, the softmax (max-subtraction, normaliser) runs in float32, and the weights are cast
  to `value`'s dtype for the second einsum, again accumulated in float32; the result has
  `value`'s dtype. q, k, v are never upcast, forward or backward (`_half_einsum`), so a
  bfloat16 model moves bfloat16 q/k/v and weights; with float32 q, k, v this is exactly flax's
  `dot_product_attention` (same operations in the same order, the same dropout mask for the
  same key).

  A drop-in `attention_fn` of `nn.MultiHeadDotProductAttention` (`dtype` is ignored: the
  dtype is that of the inputs). The only attention implementation here with attention dropout
  (`dropout_rate`, masks drawn as flax's).
  """
  del dtype
  depth = query.shape[-1]
  if query.dtype == jnp.float32:  # Flax's order: scale the query, then the product.
    query = query / jnp.sqrt(depth).astype(query.dtype)
    logits = _f32_einsum('...qhd,...khd->...hqk', query, key, precision)
  else:  # A half-precision query is not rounded once more: scale the float32 logits.
    logits = _f32_einsum('...qhd,...khd->...hqk', query, key, precision)
    logits = logits / jnp.sqrt(depth).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits)
  if module:
    module.sow('intermediates', 'attention_weights', weights)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    shape = ((1,) * (key.ndim - 2) + weights.shape[-2:]) if broadcast_dropout else weights.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    weights = weights * (keep.astype(jnp.float32) / jnp.asarray(keep_prob, jnp.float32))
  out = _f32_einsum('...hqk,...khd->...qhd', weights.astype(value.dtype), value, precision)
  return out.astype(value.dtype)
