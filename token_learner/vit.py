"""ViT (§3.1, Fig. 3) with TokenLearner / TokenFuser as options of one encoder.

Parameter names follow the public ViT checkpoints (`embedding`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/...`,
`Transformer/encoder_norm`, `pre_logits`, `head`), so those checkpoints map onto these models.
TokenLearner and fuser parameters live in `Transformer/tokenlearner_{i}` / `Transformer/fuser_{i}`,
i the encoder layer they precede.

Placement (`config.model.tokenlearner`, laid out by `token_learner.encoder_plan.plan`):
- fuser=False, Fig. 3(a): layers [0, loc) see the patch grid, one TokenLearner (§2.1) runs before
  layer `loc`, every later layer sees S (x T) tokens.
- fuser=True, Fig. 3(b): layers [loc, num_layers) are TokenLearner -> block -> TokenFuser (§2.2,
  or an alternative of §3.5.3) with the block's input grid as residual, so the grid is kept.
- A CLS token (classifier='token') is prepended before the position embedding is added (vit_jax)
  and carried through every block; TokenLearners pool the patch grid only, the CLS token is put
  back in front of the learned tokens, and the classifier reads it. So the blocks of a ViT
  checkpoint loaded before the TokenLearner compute exactly what they computed in the source.

`config.model.scan_layers` runs the blocks of each segment between TokenLearners as one `nn.scan`
(parameters stacked under `Transformer/encoderblock_scan_{k}`) and `config.model.remat` wraps each
block in `nn.remat`; both leave the function unchanged (token_learner/layer_scan.py).
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from token_learner import ablations
from token_learner import activation_sharding
from token_learner import encoder_plan
from token_learner import layer_scan
from token_learner.model_config import ModelConfig
from token_learner.attention import SelfAttention
from token_learner.modules import TokenFuser, TokenLearner, TokenLearnerV11

Dtype = Any


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dropout -> Dense -> Dropout, `[..., C] -> [..., C]`."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.xavier_uniform(),
                                     bias_init=nn.initializers.normal(stddev=1e-6))
    y = nn.gelu(dense(self.mlp_dim, 'Dense_0')(x))
    y = activation_sharding.constrain(y, activation_sharding.MLP)  # Columns over 'model' (TP).
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class _TracedDropPath(nn.Dropout):
  """`nn.Dropout` whose rate may be a traced scalar: the per-layer rate of scanned blocks."""

  def __call__(self, inputs, deterministic=None, rng=None):
    if nn.merge_param('deterministic', self.deterministic, deterministic):
      return inputs
    keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
    shape = [1 if d in self.broadcast_dims else n for d, n in enumerate(inputs.shape)]
    rng = self.make_rng(self.rng_collection) if rng is None else rng
    mask = jnp.broadcast_to(jax.random.bernoulli(rng, keep, shape), inputs.shape)
    return jnp.where(mask, inputs / keep.astype(inputs.dtype), jnp.zeros_like(inputs))


def drop_path(rate, ndim: int) -> nn.Dropout:
  """Stochastic depth on `[B, ...]` (a whole example's branch is dropped): `nn.Dropout` for a
  Python rate, `_TracedDropPath` for the per-layer rate a scan passes in."""
  dims = tuple(range(1, ndim))
  if isinstance(rate, (int, float)):
    return nn.Dropout(rate, broadcast_dims=dims)
  return _TracedDropPath(rate, broadcast_dims=dims)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block on `[B, N, C]`: x + MHSA(LN(x)); x + MLP(LN(x)).

  `droppath_rate` is stochastic depth: each residual branch is dropped for a whole example.
  Attention logits and softmax statistics are float32 whatever `dtype` (`SelfAttention`).
  The residual stream is constrained to batch rows over 'data', whole on every 'model' device
  (`token_learner.activation_sharding`, active only under a trainer's sharding rules).
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  dtype: Optional[Dtype] = None
  attention_implementation: Optional[str] = 'auto'  # SelfAttention.implementation
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    residual = lambda a: activation_sharding.constrain(a, activation_sharding.RESIDUAL)
    droppath = drop_path(self.droppath_rate, x.ndim)
    x = residual(x)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = SelfAttention(self.num_heads, self.dtype, self.attention_dropout_rate,
                      self.attention_implementation, self.fused_qkv,
                      name='MultiHeadDotProductAttention_1')(y, train=train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = residual(x + droppath(y, deterministic=not train))
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_3')(y, train=train)
    return residual(x + droppath(y, deterministic=not train))


class Encoder(nn.Module):
  """Position embeddings, the steps of the encoder plan, final LayerNorm (§3.1, Fig. 3).

  `token_learner.encoder_plan.plan(config)` lays the encoder out (runs of blocks, the Fig. 3(a)
  TokenLearner, Fig. 3(b) TokenLearner -> block -> fuser layers, §3.5.2 pools); this module only
  executes the steps in order.

  Call: `(x [B, N, C], grid_shape (T, H, W), *, train)` where N = T*H*W (+1 with a CLS token in
  front: it stays in front, out of the TokenLearners' pooling). Returns `(x [B, N', C], aux)` with
  aux['attention_maps'] the TokenLearners' maps, in layer order.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x, grid_shape, *, train: bool):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train).astype(dtype)
    grid = tuple(grid_shape)
    num_prefix = x.shape[1] - math.prod(grid)  # The CLS token, kept out of pooling.
    maps, num_scans = [], 0
    for step in encoder_plan.plan(cfg):
      if isinstance(step, encoder_plan.Pool):
        x, grid = ablations.spatial_pool(x, grid, step.k)
      elif isinstance(step, encoder_plan.Learn):
        prefix, patches = _split(x, num_prefix)
        tokens, m = self._token_learner(step)(patches, _map_grid(grid), train=train)
        x = _join(prefix, tokens)
        maps.append(m)
      elif isinstance(step, encoder_plan.LearnAndFuse):
        x, m = self._learn_and_fuse(step, x, grid, num_prefix, train)
        maps.append(m)
      elif step.scanned:
        x = self._scan((num_scans, step.start, step.stop), x, train)
        num_scans += 1
      else:
        for lyr in step.layers:
          x = self._block(lyr, train)(x)
    x = nn.LayerNorm(dtype=dtype, name='encoder_norm')(x)
    return x, {'attention_maps': tuple(maps)}

  def _learn_and_fuse(self, step, x, grid, num_prefix, train):
    """Fig. 3(b): TokenLearner on the grid -> block `step.layer` on the tokens (and the CLS token)
    -> fuser back onto the grid, the block's input grid as residual. Returns `(x, maps)`."""
    block = self._block(step.layer, train)
    prefix, x = _split(x, num_prefix)
    tokens, maps = self._token_learner(step)(x, _map_grid(grid), train=train)
    prefix, tokens = _split(block(_join(prefix, tokens)), num_prefix)
    return _join(prefix, self._fuse(step, tokens, x, maps, _map_grid(grid), train)), maps

  def _block(self, lyr, train):
    """Encoder layer `lyr` as a callable `[B, N, C] -> [B, N, C]` (`encoderblock_{lyr}`)."""
    cfg = self.config
    rate = layer_scan.droppath_rates(cfg, lyr, lyr + 1)[0]
    if cfg.remat == 'none':
      block = encoder_block(cfg, rate, name=f'encoderblock_{lyr}')
      return lambda x: block(x, train=train)
    step = nn.remat(BlockStep, policy=layer_scan.REMAT_POLICIES[cfg.remat])(
        cfg, train, rate, name=f'encoderblock_{lyr}')
    return lambda x: step(x, None)[0]

  def _scan(self, segment, x, train):
    """Layers [start, stop) of `segment` (k, start, stop) as one `nn.scan` over `BlockStep`
    (`encoderblock_scan_{k}`)."""
    cfg = self.config
    k, start, stop = segment
    step = BlockStep
    if cfg.remat != 'none':  # Inside a scan, CSE cannot merge the recomputation away.
      step = nn.remat(step, policy=layer_scan.REMAT_POLICIES[cfg.remat], prevent_cse=False)
    scan = nn.scan(step, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                   in_axes=0, length=stop - start)
    # A Python rate when every layer has rate 0: no random draws for stochastic depth at all.
    rate = None if cfg.stochastic_depth else 0.0
    rates = jnp.asarray(layer_scan.droppath_rates(cfg, start, stop), jnp.float32)
    x, _ = scan(cfg, train, rate, name=f'{layer_scan.SCAN_PREFIX}{k}')(x, rates)
    return x

  def _token_learner(self, step):
    """The TokenLearner (§2.1) of a Learn / LearnAndFuse step (`tokenlearner_{layer}`)."""
    tl, dtype = self.config.tokenlearner, jnp.dtype(self.config.dtype)
    name = f'tokenlearner_{step.layer}'
    if step.version == 'v1':
      return TokenLearner(step.num_tokens, pooling=tl.pooling, dtype=dtype, name=name)
    return TokenLearnerV11(step.num_tokens, tl.bottleneck_dim, tl.dropout_rate, dtype=dtype,
                           name=name)

  def _fuse(self, step, tokens, residual, maps, grid, train):
    """The fuser of a LearnAndFuse step (`fuser_{layer}`): TokenFuser (§2.2, Eq. 2) or §3.5.3's
    unpool / reprojection."""
    cfg, tl = self.config, self.config.tokenlearner
    dtype, name = jnp.dtype(cfg.dtype), f'fuser_{step.layer}'
    if step.fuser_type == 'tokenfuser':
      return TokenFuser(step.fuser_mixing, tl.fuser_mlp_dim, tl.dropout_rate, dtype=dtype,
                        mixing_init=tl.fuser_mixing_init, name=name)(tokens, residual, grid,
                                                                     train=train)
    if step.fuser_type == 'unpool':
      return ablations.Unpool(name=name)(tokens, residual, maps, grid, train=train)
    return ablations.Reprojection(cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate,
                                  cfg.attention_dropout_rate, dtype=dtype,
                                  name=name)(tokens, residual, train=train)


def _split(x, num_prefix):
  """`[B, P + N, C]` -> (the P prefix (CLS) tokens, the N others)."""
  return x[:, :num_prefix], x[:, num_prefix:]


def _join(prefix, x):
  return jnp.concatenate([prefix, x], axis=1) if prefix.shape[1] else x


def _map_grid(grid):
  """The grid a TokenLearner / fuser takes: images `(H, W)` (maps `[B, S, H, W]`), video
  `(T, H, W)` (maps `[B, T, S, H, W]`)."""
  return grid[1:] if grid[0] == 1 else grid


def encoder_block(cfg: ModelConfig, droppath_rate, name: Optional[str] = None) -> EncoderBlock:
  """The encoder block of `cfg` with the given stochastic depth rate."""
  return EncoderBlock(cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate, cfg.attention_dropout_rate,
                      droppath_rate=droppath_rate, dtype=jnp.dtype(cfg.dtype),
                      attention_implementation=cfg.attention_implementation,
                      fused_qkv=cfg.fused_qkv, name=name)


class BlockStep(nn.Module):
  """One encoder block as a step `(x, rate) -> (x, None)` of `nn.scan` / `nn.remat`.

  The block's parameters sit directly in this module's scope (`nn.share_scope`), so a step named
  `encoderblock_{i}` has the unrolled block's parameter names. `droppath_rate` None: the
  stochastic depth rate is the (scanned, per-layer) `rate` argument.
  """
  config: ModelConfig
  train: bool
  droppath_rate: Optional[float] = None

  @nn.compact
  def __call__(self, x, rate):
    cfg = self.config
    rate = rate if self.droppath_rate is None else self.droppath_rate
    block = encoder_block(cfg, rate)
    nn.share_scope(self, block)
    return block(x, train=self.train), None


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `[1, N, C]` to `[B, N, C]` (every patch, before any
  TokenLearner; §3.1 "positional encodings identical to ViT")."""

  @nn.compact
  def __call__(self, x):
    pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]))
    return x + pos.astype(x.dtype)


def encode_and_classify(module, x, grid_shape, *, train):
  """Shared tail of ViT and ViViT, called inside their compact `__call__`.

  CLS token (classifier 'token') -> encoder -> 'token' or 'gap' (mean over the tokens) -> optional
  pre-logits (Dense + tanh) -> head (zero-initialised, bias `head_bias_init`). The submodules are
  created in `module`'s scope, so the names match the checkpoint layout.

  Args:
    module: the calling ViT / ViViT (has `.config`).
    x: `[B, N, C]` embedded patches / tubelets.
    grid_shape: `(T, H, W)` with T*H*W = N.
    train: whether dropout and stochastic depth act.

  Returns:
    `(logits [B, K] float32, aux)`; aux holds 'attention_maps' and 'pre_logits' `[B, D]`.
  """
  cfg = module.config
  if cfg.classifier == 'token':
    cls = module.param('cls', nn.initializers.zeros, (1, 1, x.shape[-1]))
    x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)).astype(x.dtype), x], axis=1)
  x, aux = Encoder(cfg, name='Transformer')(x, grid_shape, train=train)
  x = x[:, 0] if cfg.classifier == 'token' else x.mean(axis=1)
  if cfg.representation_size is not None:
    x = jnp.tanh(nn.Dense(cfg.representation_size, dtype=x.dtype, name='pre_logits')(x))
  # The head in float32 (its kernel and the upcast pre-logits): float32 logits for the loss.
  logits = nn.Dense(cfg.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.constant(cfg.head_bias_init), name='head')(x)
  return logits.astype(jnp.float32), {**aux, 'pre_logits': x}


class ViT(nn.Module):
  """Vision Transformer + TokenLearner for images `[B, H, W, 3]`; returns `(logits, aux)`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, images, *, train: bool):
    cfg, p = self.config, self.config.patch_size
    x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding='VALID',
                dtype=jnp.dtype(cfg.dtype), name='embedding')(images)
    b, h, w, c = x.shape
    return encode_and_classify(self, x.reshape(b, h * w, c), (1, h, w), train=train)
