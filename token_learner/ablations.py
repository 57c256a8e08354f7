"""The paper's baselines and TokenFuser alternatives.

- `spatial_pool`: token reduction by k x k average pooling of the token grid (§3.5.2, Table 6).
- `Unpool`: tokens spread back with the TokenLearner's own maps (§3.5.3, Fig. 7 "unpool").
- `Reprojection`: one transformer layer mapping the S*T tokens back to the T*H*W grid positions
  (§3.5.3, Fig. 7 "reprojection"): the grid positions attend to the tokens.
"""
from typing import Any, Optional

import einops
import flax.linen as nn
import jax.numpy as jnp

from token_learner.modules import einsum_attention, from_frames, to_frames

Dtype = Any


def spatial_pool(x, grid_shape, k):
  """k x k average pooling of each frame's token grid.

  Args:
    x: `[B, T*H*W, C]` tokens.
    grid_shape: `(T, H, W)`; H and W must be divisible by k.
    k: window and stride.

  Returns:
    `([B, T*(H/k)*(W/k), C], (T, H/k, W/k))`.
  """
  t, h, w = grid_shape
  grid = einops.rearrange(x, 'b (t h w) c -> (b t) h w c', t=t, h=h, w=w)
  pooled = nn.avg_pool(grid, (k, k), strides=(k, k))
  return (einops.rearrange(pooled, '(b t) h w c -> b (t h w) c', t=t), (t, h // k, w // k))


class Unpool(nn.Module):
  """X_t + sum_i A_i(X_t) LN(y_i): each processed token goes back where its map attended (Fig. 7).

  The tokens are layer-normalised first: a sum-pooled token (Eq. 1, rho = sum) carries the mass of
  up to H*W positions, and spreading it back unnormalised multiplies the activations by ~H*W*S at
  every fused layer. Scenic's TokenFuser normalises its input for this reason ("needed when using
  sum pooling"); the TokenFuser here does the same (its LayerNorm_0).

  Call: `(tokens [B, T*S, C], residual, maps [B, (T,) S, H, W], grid_shape=None, *, train=False)`.
  """

  @nn.compact
  def __call__(self, tokens, residual, maps, grid_shape=None, *, train: bool = False):
    del train
    frames, (t, _, _), _ = to_frames(residual, grid_shape)
    maps = maps.reshape(frames.shape[0], t, -1, frames.shape[2])  # [B, T, S, H*W]
    tokens = nn.LayerNorm(name='LayerNorm_0')(tokens)
    tokens = einops.rearrange(tokens, 'b (t s) c -> b t s c', t=t)
    return from_frames(frames + jnp.einsum('btsn,btsc->btnc', maps, tokens), residual)


class Reprojection(nn.Module):
  """A transformer layer whose queries are the residual's positions and keys/values the tokens.

  out = X + MHA(LN(X), LN(Y)); out = out + MLP(LN(out)). Maps S*T tokens back to T*H*W positions.

  Call: `(tokens [B, T*S, C], residual [B, N, C] or a grid, *, train=False)`.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, tokens, residual, *, train: bool = False):
    x = residual.reshape(residual.shape[0], -1, residual.shape[-1])
    q = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    kv = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(tokens)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attention_dropout_rate,
        kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False,
        attention_fn=einsum_attention, deterministic=not train,
        name='MultiHeadDotProductAttention_2')(q, kv)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_3')(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name='Dense_0')(y)
    y = nn.Dropout(self.dropout_rate)(nn.gelu(y), deterministic=not train)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name='Dense_1')(y)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x.reshape(residual.shape)
