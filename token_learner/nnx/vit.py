"""ViT / ViViT + TokenLearner as Flax NNX models, equal to the linen models of `token_learner.vit`.

    model = ViT(cfg, rngs=nnx.Rngs(0))          # cfg: a ModelConfig, as build_model takes
    logits, aux = model(images, train=False)   # aux['attention_maps'], aux['pre_logits']

The encoder executes the same plan (`token_learner.encoder_plan.plan(cfg)`: blocks, the Fig. 3(a)
TokenLearner, Fig. 3(b) TokenLearner -> block -> TokenFuser layers) and every attribute has the
linen parameter name (`embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/...`, `Transformer/tokenlearner_{i}`, `Transformer/fuser_{i}`,
`pre_logits`, `head`), so `token_learner.nnx.convert.from_linen_params(model, linen_params)` makes
it compute the linen model's logits (tests/test_nnx.py). `config.model.remat` wraps each block in
`nnx.remat`. Not supported here (a ValueError): `scan_layers` (load scanned linen parameters with
`from_linen_params`, which unrolls them), the §3.5 ablations (`spatial_pooling`, fuser_type
'unpool' / 'reprojection').

Beyond the linen model, two options describe the encoders of other codebases exactly:
`gelu_approximate` (False: exact erf GELU in the MLPs, as Hugging Face and timm ViTs; the linen
model and the default use flax's tanh approximation) and `layernorm_epsilon` (1e-6 as flax and
timm; Hugging Face ViTs use 1e-12) of the encoder's LayerNorms.

`insert_tokenlearner(model, rngs=..., num_tokens=8, loc=6, ...)` puts a TokenLearner (and fusers)
into a (pretrained) NNX ViT: a new model with the TokenLearner config, the backbone's parameters
copied, the TokenLearner's freshly initialised.
"""
import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from token_learner import encoder_plan
from token_learner import layer_scan
from token_learner.model_config import ModelConfig
from token_learner.nnx.convert import from_linen_params, to_linen_params
from token_learner.nnx.modules import (TokenFuser, TokenLearner, TokenLearnerV11, dropout,
                                       layer_norm, linear, partitioned)
from token_learner.attention import attention, resolve_attention
from token_learner.vit import _join, _map_grid, _split

Dtype = Any


class MlpBlock(nnx.Module):
  """Dense -> GELU -> Dropout -> Dense -> Dropout (`Dense_0`, `Dense_1`)."""

  def __init__(self, features: int, mlp_dim: int, dropout_rate: float, dtype,
               gelu_approximate: bool, *, rngs: nnx.Rngs):
    init = dict(kernel_init=nnx.initializers.xavier_uniform(),
                bias_init=nnx.initializers.normal(stddev=1e-6))
    self.Dense_0 = linear(features, mlp_dim, ('embed', 'mlp'), dtype, rngs, **init)
    self.Dense_1 = linear(mlp_dim, features, ('mlp', 'embed'), dtype, rngs, **init)
    self.dropout = dropout(dropout_rate, rngs)
    self.gelu_approximate = gelu_approximate

  def __call__(self, x, *, train: bool):
    y = jax.nn.gelu(self.Dense_0(x), approximate=self.gelu_approximate)
    y = self.dropout(y, deterministic=not train)
    return self.dropout(self.Dense_1(y), deterministic=not train)


class _Projection(nnx.Module):
  """`kernel [*in, *out]`, `bias [*out]` of one attention projection (flax DenseGeneral names)."""

  def __init__(self, in_shape, out_shape, axes, *, rngs: nnx.Rngs):
    n_in = len(in_shape)
    flat = (math.prod(in_shape), math.prod(out_shape))
    init = lambda key, shape, dtype=jnp.float32: jnp.reshape(  # As DenseGeneral: a 2-D init.
        nnx.initializers.xavier_uniform()(key, flat, dtype), shape)
    self.kernel = nnx.Param(partitioned(init, axes)(rngs.params(), (*in_shape, *out_shape)))
    self.bias = nnx.Param(partitioned(nnx.initializers.zeros, axes[n_in:])(
        rngs.params(), tuple(out_shape)))


class SelfAttention(nnx.Module):
  """Multi-head self-attention on `[B, N, C]` with the parameters of flax's
  `MultiHeadDotProductAttention` (`query`/`key`/`value` `[C, H, D]`, `out` `[H, D, C]`); the
  linen model's implementations (`token_learner.attention.attention`, 'auto' resolved the same way),
  logits and softmax in float32; attention dropout through the einsums."""

  def __init__(self, features: int, num_heads: int, dtype, dropout_rate: float,
               implementation: Optional[str], *, rngs: nnx.Rngs):
    d = features // num_heads
    for name in ('query', 'key', 'value'):
      setattr(self, name, _Projection((features,), (num_heads, d), ('embed', 'heads', 'kv'),
                                      rngs=rngs))
    self.out = _Projection((num_heads, d), (features,), ('heads', 'kv', 'embed'), rngs=rngs)
    self.dtype, self.implementation = dtype, implementation
    self.dropout = dropout(dropout_rate, rngs)

  def __call__(self, x, *, train: bool):
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    proj = lambda p: jnp.einsum('bnc,chd->bnhd', x, p.kernel[...].astype(dtype)) + \
        p.bias[...].astype(dtype)
    q, k, v = proj(self.query), proj(self.key), proj(self.value)
    impl = self.implementation
    if impl == 'auto':
      impl = resolve_attention(jax.default_backend(), dtype, train, x.shape[-2], self.dropout.rate)
    with_dropout = train and self.dropout.rate > 0
    if not (impl in (None, 'einsum') and with_dropout):
      y = attention(q, k, v, impl)
    else:  # Attention dropout on the weights, as flax's.
      f32 = lambda a: a.astype(jnp.float32)
      q = f32(q) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
      weights = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, f32(k)), axis=-1)
      weights = self.dropout(weights, deterministic=not train)
      y = jnp.einsum('bhqk,bkhd->bqhd', weights, f32(v)).astype(v.dtype)
    return jnp.einsum('bnhd,hdc->bnc', y, self.out.kernel[...].astype(dtype)) + \
        self.out.bias[...].astype(dtype)


class EncoderBlock(nnx.Module):
  """Pre-LayerNorm block: x + MHSA(LN(x)); x + MLP(LN(x)); stochastic depth `droppath_rate`."""

  def __init__(self, cfg: ModelConfig, droppath_rate: float, *, gelu_approximate: bool = True,
               layernorm_epsilon: float = 1e-6, rngs: nnx.Rngs):
    c, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
    self.LayerNorm_0 = layer_norm(c, dtype, rngs, layernorm_epsilon)
    self.MultiHeadDotProductAttention_1 = SelfAttention(
        c, cfg.num_heads, dtype, cfg.attention_dropout_rate, cfg.attention_implementation,
        rngs=rngs)
    self.LayerNorm_2 = layer_norm(c, dtype, rngs, layernorm_epsilon)
    self.MlpBlock_3 = MlpBlock(c, cfg.mlp_dim, cfg.dropout_rate, dtype, gelu_approximate,
                               rngs=rngs)
    self.dropout = dropout(cfg.dropout_rate, rngs)
    self.droppath = dropout(droppath_rate, rngs, broadcast_dims=(1, 2))

  def __call__(self, x, *, train: bool):
    y = self.MultiHeadDotProductAttention_1(self.LayerNorm_0(x), train=train)
    x = x + self.droppath(self.dropout(y, deterministic=not train), deterministic=not train)
    y = self.MlpBlock_3(self.LayerNorm_2(x), train=train)
    return x + self.droppath(y, deterministic=not train)


class _PositionEmbedding(nnx.Module):

  def __init__(self, num_positions: int, features: int, *, rngs: nnx.Rngs):
    self.pos_embedding = nnx.Param(partitioned(nnx.initializers.normal(stddev=0.02),
                                               (None, None, 'embed'))(
                                                   rngs.params(), (1, num_positions, features)))


def _check(cfg: ModelConfig):
  if cfg.name not in ('vit', 'vivit'):
    raise ValueError(f"token_learner.nnx builds config.model.name 'vit' or 'vivit', got "
                     f'{cfg.name!r}')
  if cfg.scan_layers:
    raise ValueError('token_learner.nnx: config.model.scan_layers=True is not supported; build '
                     'with scan_layers=False (from_linen_params unrolls scanned parameters)')
  if cfg.spatial_pooling or (cfg.uses_tokenlearner and cfg.tokenlearner.fuser and
                             cfg.tokenlearner.fuser_type != 'tokenfuser'):
    raise ValueError('token_learner.nnx: the §3.5 ablations (config.model.spatial_pooling, '
                     "fuser_type 'unpool' / 'reprojection') are linen-only")


class Encoder(nnx.Module):
  """Position embedding, the steps of the encoder plan, `encoder_norm` (`Transformer`)."""

  def __init__(self, cfg: ModelConfig, *, gelu_approximate: bool = True,
               layernorm_epsilon: float = 1e-6, rngs: nnx.Rngs):
    _check(cfg)
    c, dtype, tl = cfg.hidden_size, jnp.dtype(cfg.dtype), cfg.tokenlearner
    self.config, self.plan = cfg, encoder_plan.plan(cfg)
    num_prefix = int(cfg.classifier == 'token')
    self.posembed_input = _PositionEmbedding(num_prefix + math.prod(cfg.grid_shape), c,
                                             rngs=rngs)
    self.dropout = dropout(cfg.dropout_rate, rngs)
    for step in self.plan:
      if isinstance(step, (encoder_plan.Learn, encoder_plan.LearnAndFuse)):
        if step.version == 'v1':
          learner = TokenLearner(c, step.num_tokens, pooling=tl.pooling, dtype=dtype, rngs=rngs)
        else:
          learner = TokenLearnerV11(c, step.num_tokens, tl.bottleneck_dim, tl.dropout_rate,
                                    dtype=dtype, rngs=rngs)
        setattr(self, f'tokenlearner_{step.layer}', learner)
      for lyr in step.layers:
        rate = layer_scan.droppath_rates(cfg, lyr, lyr + 1)[0]
        setattr(self, f'encoderblock_{lyr}', EncoderBlock(
            cfg, rate, gelu_approximate=gelu_approximate, layernorm_epsilon=layernorm_epsilon,
            rngs=rngs))
      if isinstance(step, encoder_plan.LearnAndFuse):
        setattr(self, f'fuser_{step.layer}', TokenFuser(
            c, step.num_tokens, cfg.grid_shape[0], step.fuser_mixing, tl.fuser_mlp_dim,
            tl.dropout_rate, dtype=dtype, rngs=rngs))
    self.encoder_norm = layer_norm(c, dtype, rngs, layernorm_epsilon)

  def _block(self, lyr, x, train):
    block = getattr(self, f'encoderblock_{lyr}')
    if self.config.remat == 'none':
      return block(x, train=train)
    policy = layer_scan.REMAT_POLICIES[self.config.remat]
    return nnx.remat(lambda b, y: b(y, train=train), policy=policy)(block, x)

  def __call__(self, x, grid_shape, *, train: bool):
    x = x + self.posembed_input.pos_embedding[...].astype(x.dtype)
    x = self.dropout(x, deterministic=not train).astype(jnp.dtype(self.config.dtype))
    grid = tuple(grid_shape)
    num_prefix = x.shape[1] - math.prod(grid)
    maps = []
    for step in self.plan:
      if isinstance(step, encoder_plan.Learn):
        prefix, patches = _split(x, num_prefix)
        tokens, m = getattr(self, f'tokenlearner_{step.layer}')(patches, _map_grid(grid),
                                                                 train=train)
        x = _join(prefix, tokens)
        maps.append(m)
      elif isinstance(step, encoder_plan.LearnAndFuse):
        prefix, patches = _split(x, num_prefix)
        tokens, m = getattr(self, f'tokenlearner_{step.layer}')(patches, _map_grid(grid),
                                                                 train=train)
        prefix, tokens = _split(self._block(step.layer, _join(prefix, tokens), train),
                                num_prefix)
        fused = getattr(self, f'fuser_{step.layer}')(tokens, patches, _map_grid(grid),
                                                      train=train)
        x = _join(prefix, fused)
        maps.append(m)
      else:
        for lyr in step.layers:
          x = self._block(lyr, x, train)
    return self.encoder_norm(x), {'attention_maps': tuple(maps)}


class ViT(nnx.Module):
  """ViT (`cfg.name='vit'`, images `[B, H, W, 3]`) or ViViT (`'vivit'`, clips `[B, T, H, W, 3]`,
  t x p x p tubelets) + TokenLearner; `model(x, train=...)` returns `(logits, aux)` as the linen
  models (dropout and stochastic depth draw from `rngs` when train=True).

  Args:
    cfg: the ModelConfig (as `token_learner.build_model`).
    gelu_approximate: GELU of the encoder MLPs; True (flax's tanh form) as the linen model.
    layernorm_epsilon: epsilon of the encoder LayerNorms (1e-6 as the linen model).
    rngs: `nnx.Rngs` for the initialisation (and dropout).
  """

  def __init__(self, cfg: ModelConfig, *, gelu_approximate: bool = True,
               layernorm_epsilon: float = 1e-6, rngs: nnx.Rngs):
    _check(cfg)
    c, p, dtype = cfg.hidden_size, cfg.patch_size, jnp.dtype(cfg.dtype)
    self.config = cfg
    self.gelu_approximate, self.layernorm_epsilon = gelu_approximate, layernorm_epsilon
    patch = (cfg.tubelet_size, p, p) if cfg.name == 'vivit' else (p, p)
    self.embedding = nnx.Conv(
        3, c, patch, strides=patch, padding='VALID', dtype=dtype, rngs=rngs,
        kernel_init=partitioned(nnx.initializers.lecun_normal(),
                                (None,) * (len(patch) + 1) + ('embed',)),
        bias_init=partitioned(nnx.initializers.zeros, ('embed',)))
    if cfg.classifier == 'token':
      self.cls = nnx.Param(partitioned(nnx.initializers.zeros, (None, None, 'embed'))(
          rngs.params(), (1, 1, c)))
    self.Transformer = Encoder(cfg, gelu_approximate=gelu_approximate,
                               layernorm_epsilon=layernorm_epsilon, rngs=rngs)
    if cfg.representation_size is not None:
      self.pre_logits = linear(c, cfg.representation_size, ('embed', 'mlp'), dtype, rngs)
    width = cfg.representation_size or c
    self.head = linear(width, cfg.num_classes, ('embed', None), None, rngs,
                       kernel_init=nnx.initializers.zeros,
                       bias_init=nnx.initializers.constant(cfg.head_bias_init))

  def __call__(self, x, *, train: bool = False):
    cfg = self.config
    x = self.embedding(x)
    b, *grid, c = x.shape
    grid = (1, *grid) if len(grid) == 2 else tuple(grid)
    x = x.reshape(b, math.prod(grid), c)
    if cfg.classifier == 'token':
      cls = jnp.tile(self.cls[...], (b, 1, 1)).astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=1)
    x, aux = self.Transformer(x, grid, train=train)
    x = x[:, 0] if cfg.classifier == 'token' else x.mean(axis=1)
    if cfg.representation_size is not None:
      x = jnp.tanh(self.pre_logits(x))  # As the linen model: in the compute dtype.
    logits = self.head(x)
    return logits.astype(jnp.float32), {**aux, 'pre_logits': x}


def insert_tokenlearner(model: ViT, *, rngs: nnx.Rngs, **tokenlearner) -> ViT:
  """A new NNX ViT: `model`'s config with `config.model.tokenlearner` fields `tokenlearner`
  (num_tokens, loc, version, fuser, ...), `model`'s parameters copied, the TokenLearner (and
  fuser) parameters freshly initialised from `rngs`. The blocks before `loc` then compute
  exactly what they computed in `model`; with classifier='token' the CLS token rides along.

  Raises:
    ValueError: for an invalid TokenLearner config (ModelConfig's message), or when a copied
      parameter's shape differs.
  """
  cfg = model.config
  tl = dataclasses.replace(cfg.tokenlearner, **tokenlearner)
  new_cfg = dataclasses.replace(cfg, tokenlearner=tl)
  new = ViT(new_cfg, gelu_approximate=model.gelu_approximate,
            layernorm_epsilon=model.layernorm_epsilon, rngs=rngs)
  return from_linen_params(new, to_linen_params(model), strict=False)
