"""TokenLearner (§2.1, Eq. 1) and TokenFuser (§2.2, Eq. 2) as Flax NNX modules.

The same math, inputs, outputs and attention maps as the linen modules of
`token_learner.modules`; the attributes carry the linen parameter names (`LayerNorm_0`, `Conv_0`,
`Dense_0`, `token_mixing`, ...), so `nnx.state(module, nnx.Param)` as a pure dict *is* the linen
`params` tree (`token_learner.nnx.convert`). NNX needs the input width at construction:

    learner = TokenLearner(in_features=C, num_tokens=8, rngs=nnx.Rngs(0))
    tokens, maps = learner(x)                        # x [B, H, W, C] -> [B, 8, C], [B, 8, H, W]
    fuser = TokenFuser(in_features=C, num_tokens=8, rngs=nnx.Rngs(1))
    x = fuser(block(tokens), residual=x)             # -> [B, H, W, C]

Every parameter carries logical sharding axes (`out_sharding` metadata, names in `AXES`):
`nnx.get_partition_spec(nnx.state(m))` under `flax.linen.logical_axis_rules(...)` gives its
PartitionSpec. The parameters are sharded when created only inside a mesh context
(`jax.sharding.use_mesh`) with eager sharding on; elsewhere the metadata is kept and the arrays
are left where they are.
"""
from typing import Any, Optional, Sequence, Tuple

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from token_learner.modules import _maps_layout, _pool, from_frames, to_frames

Dtype = Any
# Logical axis names of the parameters: channels, hidden MLP widths, attention heads and their
# features (the ViT), learned-token axes are left unsharded (None).
AXES = ('embed', 'mlp', 'heads', 'kv')


def partitioned(init, axes: Tuple[Optional[str], ...]):
  """`init` annotated with logical sharding `axes`; sharded eagerly only under a mesh."""
  eager = nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty
  return nnx.with_partitioning(init, axes, eager_sharding=eager)


def layer_norm(features: int, dtype, rngs, epsilon: float = 1e-6) -> nnx.LayerNorm:
  """flax's LayerNorm (eps 1e-6 as `flax.linen.LayerNorm`), scale and bias on 'embed'."""
  return nnx.LayerNorm(features, epsilon=epsilon, dtype=dtype,
                       scale_init=partitioned(nnx.initializers.ones, ('embed',)),
                       bias_init=partitioned(nnx.initializers.zeros, ('embed',)), rngs=rngs)


def linear(in_features: int, out_features: int, axes, dtype, rngs, *, use_bias=True,
           kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros):
  """`nnx.Linear` (the init defaults of `flax.linen.Dense`) with logical axes `(in, out)`."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                    kernel_init=partitioned(kernel_init, axes),
                    bias_init=partitioned(bias_init, axes[1:]), rngs=rngs)


def dropout(rate: float, rngs: nnx.Rngs, **kwargs) -> nnx.Dropout:
  """`nnx.Dropout`; without an RNG stream at rate 0 (an identity: fewer graph nodes, so a
  faster `nnx.jit` call)."""
  return nnx.Dropout(rate, rngs=rngs if rate else None, **kwargs)


class TokenLearner(nnx.Module):
  """TokenLearner v1 (§2.1, §3.1): conv attention maps with a sigmoid, Eq. 1.

  alpha = LayerNorm -> (num_conv_layers - 1) x [3x3 conv to S channels, GELU] -> 3x3 conv to S,
  no biases; A_i = sigmoid(alpha_i(X_t)); z_i = rho(X_t (.) A_i), rho = sum (default) or mean over
  the positions of the un-normalised input. As `token_learner.modules.TokenLearner`.

  Call: `(x, grid_shape=None, *, train=False)`, x `[B, H, W, C]`, `[B, T, H, W, C]` or `[B, N, C]`
  with `grid_shape`. Returns `(tokens [B, (T*)S, C], maps [B, S, H, W] or [B, T, S, H, W])`.
  """

  def __init__(self, in_features: int, num_tokens: int = 8, num_conv_layers: int = 4,
               kernel_size: Sequence[int] = (3, 3), pooling: str = 'sum',
               dtype: Optional[Dtype] = None, *, rngs: nnx.Rngs):
    if pooling not in ('sum', 'mean'):
      raise ValueError(f"pooling={pooling!r} is not one of ['sum', 'mean']")
    self.num_tokens, self.num_conv_layers, self.pooling = num_tokens, num_conv_layers, pooling
    self.LayerNorm_0 = layer_norm(in_features, dtype, rngs)
    for i in range(num_conv_layers):
      setattr(self, f'Conv_{i}', nnx.Conv(
          in_features if i == 0 else num_tokens, num_tokens, tuple(kernel_size), padding='SAME',
          use_bias=False, dtype=dtype, rngs=rngs,
          kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, None, 'embed', None)
                                  if i == 0 else (None, None, None, None))))

  def __call__(self, x, grid_shape=None, *, train: bool = False):
    del train  # No stochastic parts; kept so the TokenLearner versions are interchangeable.
    frames, grid, is_video = to_frames(x, grid_shape)
    b, t = frames.shape[:2]
    alpha = self.LayerNorm_0(frames)
    alpha = einops.rearrange(alpha, 'b t (h w) c -> (b t) h w c', h=grid[1], w=grid[2])
    for i in range(self.num_conv_layers):
      alpha = getattr(self, f'Conv_{i}')(alpha)
      if i < self.num_conv_layers - 1:
        alpha = jax.nn.gelu(alpha)  # approximate=True, as flax.linen.gelu.
    alpha = einops.rearrange(alpha, '(b t) h w s -> b t s (h w)', b=b, t=t)
    maps = jax.nn.sigmoid(alpha)
    return _pool(maps, frames, self.pooling), _maps_layout(maps, grid, is_video)


class TokenLearnerV11(nnx.Module):
  """TokenLearner v1.1: MLP attention maps with a softmax over the positions of each frame.

  alpha = LayerNorm -> Dense(bottleneck_dim) -> GELU -> Dropout -> Dense(S) -> Dropout; softmax
  (float32) over the H*W positions; tokens = einsum(weights, un-normalised input). As
  `token_learner.modules.TokenLearnerV11`. Call and returns as `TokenLearner`; dropout acts when
  `train=True` and draws from `rngs.dropout` (or the default stream).
  """

  def __init__(self, in_features: int, num_tokens: int = 8, bottleneck_dim: int = 64,
               dropout_rate: float = 0.0, dtype: Optional[Dtype] = None, *, rngs: nnx.Rngs):
    self.num_tokens = num_tokens
    self.LayerNorm_0 = layer_norm(in_features, dtype, rngs)
    self.Dense_0 = linear(in_features, bottleneck_dim, ('embed', 'mlp'), dtype, rngs)
    self.Dense_1 = linear(bottleneck_dim, num_tokens, ('mlp', None), dtype, rngs)
    self.dropout = dropout(dropout_rate, rngs)

  def __call__(self, x, grid_shape=None, *, train: bool = False):
    frames, grid, is_video = to_frames(x, grid_shape)
    alpha = jax.nn.gelu(self.Dense_0(self.LayerNorm_0(frames)))
    alpha = self.dropout(alpha, deterministic=not train)
    alpha = self.dropout(self.Dense_1(alpha), deterministic=not train)
    alpha = einops.rearrange(alpha, 'b t n s -> b t s n')
    maps = jax.nn.softmax(alpha.astype(jnp.float32), axis=-1).astype(frames.dtype)
    return _pool(maps, frames, 'sum'), _maps_layout(maps, grid, is_video)


class TokenFuser(nnx.Module):
  """TokenFuser (§2.2, Eq. 2): mixes the tokens and maps them back onto the residual's grid.

  Y -> LayerNorm -> linear map over the token axis (zero-initialised, no bias; R^{ST} for
  mixing='global', R^S per frame for 'per_frame') -> LayerNorm; per frame X_t + Dropout(B_w Y_t)
  with B_w = sigmoid(Dense(S)(GELU(Dense(mlp_dim)(LayerNorm(X_t))))). A fresh fuser returns its
  residual exactly. As `token_learner.modules.TokenFuser`.

  Args:
    in_features: C.
    num_tokens: S, tokens per frame (the output width of the beta MLP).
    num_frames: T, the frames (temporal slices) of the residual; global mixing acts on S*T tokens.
    mixing / mlp_dim / dropout_rate / dtype: as the linen module.

  Call: `(tokens [B, T*S, C], residual, grid_shape=None, *, train=False)`.
  """

  def __init__(self, in_features: int, num_tokens: int = 8, num_frames: int = 1,
               mixing: str = 'global', mlp_dim: int = 64, dropout_rate: float = 0.0,
               dtype: Optional[Dtype] = None, *, rngs: nnx.Rngs):
    if mixing not in ('global', 'per_frame'):
      raise ValueError(f"mixing={mixing!r} is not one of ['global', 'per_frame']")
    self.num_tokens, self.num_frames, self.mixing = num_tokens, num_frames, mixing
    m = num_tokens * num_frames if mixing == 'global' else num_tokens
    self.LayerNorm_0 = layer_norm(in_features, dtype, rngs)
    self.token_mixing = linear(m, m, (None, None), dtype, rngs, use_bias=False,
                               kernel_init=nnx.initializers.zeros)
    self.LayerNorm_1 = layer_norm(in_features, dtype, rngs)
    self.LayerNorm_2 = layer_norm(in_features, dtype, rngs)
    self.Dense_0 = linear(in_features, mlp_dim, ('embed', 'mlp'), dtype, rngs)
    self.Dense_1 = linear(mlp_dim, num_tokens, ('mlp', None), dtype, rngs)
    self.dropout = dropout(dropout_rate, rngs)

  def __call__(self, tokens, residual, grid_shape=None, *, train: bool = False):
    frames, _, _ = to_frames(residual, grid_shape)
    b, t, _, c = frames.shape
    s = self.num_tokens
    if tokens.ndim != 3 or tokens.shape[1] != s * t or tokens.shape[2] != c or (
        self.mixing == 'global' and t != self.num_frames):
      raise ValueError(f'tokens {tokens.shape} do not fit a residual of {t} frame(s) and {c} '
                       f'channels (this fuser: num_tokens={s}, num_frames={self.num_frames})')
    y = self.LayerNorm_0(tokens)
    if self.mixing == 'global':
      y = einops.rearrange(self.token_mixing(einops.rearrange(y, 'b m c -> b c m')),
                           'b c m -> b m c')
    else:
      y = einops.rearrange(y, 'b (t s) c -> b t c s', t=t)
      y = einops.rearrange(self.token_mixing(y), 'b t c s -> b (t s) c')
    y = einops.rearrange(self.LayerNorm_1(y), 'b (t s) c -> b t s c', t=t)
    beta = self.Dense_0(self.LayerNorm_2(frames))
    weights = jax.nn.sigmoid(self.Dense_1(jax.nn.gelu(beta)))  # B_w: [B, T, H*W, S].
    fused = jnp.einsum('btns,btsc->btnc', weights, y)
    fused = self.dropout(fused, deterministic=not train)
    return from_frames(frames + fused, residual)
