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
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from token_learner import ablations
from token_learner import encoder_plan
from token_learner import layer_scan
from token_learner.model_config import ModelConfig
from token_learner.modules import TokenFuser, TokenLearner, TokenLearnerV11, einsum_attention

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
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class _DenseParams(nn.Module):
  """The `kernel [*in, *out]` and `bias [*out]` of a flax `DenseGeneral`, created (same names,
  shapes, initialisation and RNG use) but not applied, so a caller can fuse several of them."""
  in_shape: Tuple[int, ...]
  out_shape: Tuple[int, ...]
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self):
    n_in = len(self.in_shape)

    def kernel_init(rng, shape, dtype=jnp.float32):  # DenseGeneral inits the flattened 2-D kernel.
      flat = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
      return jnp.reshape(self.kernel_init(rng, flat, dtype), shape)

    kernel = self.param('kernel', kernel_init, (*self.in_shape, *self.out_shape))
    return kernel, self.param('bias', nn.initializers.zeros, self.out_shape)


class SelfAttention(nn.Module):
  """Multi-head self-attention on `[B, N, C]`, parameters exactly as flax's
  `nn.MultiHeadDotProductAttention` (`query`/`key`/`value` kernels `[C, H, D]`, biases `[H, D]`;
  `out` kernel `[H, D, C]`, bias `[C]`), so ViT checkpoints load unchanged whatever the
  implementation.

  Precision (every implementation): q, k, v and the output in the compute dtype `dtype`, never
  upcast; the logits q.k and the softmax statistics (max, normaliser) in float32.

  Attributes:
    num_heads: H.
    dtype: compute dtype (parameters stay float32).
    dropout_rate: dropout on the attention weights ('einsum' only; 'auto' picks 'einsum' when it
      acts).
    implementation: one of `IMPLEMENTATIONS` (see `attention`); 'auto' is resolved at trace time
      by `resolve_attention` from `jax.default_backend()`, the dtype, train / eval, the
      sequence length and the dropout rate. None is 'einsum' (the name of that path in configs
      stored before 'auto' existed).
    fused_qkv: one `[C, 3 * H * D]` matmul for q, k, v (the three kernels concatenated in the
      step) instead of three.
  """
  num_heads: int
  dtype: Optional[Dtype] = None
  dropout_rate: float = 0.0
  implementation: Optional[str] = 'auto'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    c = x.shape[-1]
    h, dtype = self.num_heads, self.dtype or x.dtype
    d = c // h
    names = ('query', 'key', 'value')
    params = [_DenseParams((c,), (h, d), name=n)() for n in names]
    x = x.astype(dtype)
    dense = lambda a, k, b, n: jax.lax.dot_general(
        a, k.astype(dtype), (((a.ndim - n,) if n == 1 else (a.ndim - 2, a.ndim - 1),
                              tuple(range(n))), ((), ()))) + b.astype(dtype)
    if self.fused_qkv:
      kernel = jnp.concatenate([k.reshape(c, h * d) for k, _ in params], axis=1)
      bias = jnp.concatenate([b.reshape(h * d) for _, b in params])
      qkv = dense(x, kernel, bias, 1).reshape(*x.shape[:-1], 3, h, d)
      q, k, v = (qkv[..., i, :, :] for i in range(3))
    else:
      q, k, v = (dense(x, kernel, bias, 1) for kernel, bias in params)
    impl = self.implementation
    if impl == 'auto':
      impl = resolve_attention(jax.default_backend(), dtype, train, x.shape[-2],
                               self.dropout_rate)
    deterministic = not train or self.dropout_rate == 0.0
    rng = None if deterministic or impl not in (None, 'einsum') else self.make_rng('dropout')
    y = attention(q, k, v, impl, dropout_rate=self.dropout_rate, deterministic=deterministic,
                  dropout_rng=rng)
    out_kernel, out_bias = _DenseParams((h, d), (c,), name='out')()
    return dense(y, out_kernel, out_bias, 2)


# config.model.attention_implementation; None (configs stored before 'auto') means 'einsum'.
IMPLEMENTATIONS = ('auto', 'einsum', 'xla', 'cudnn', 'pallas')
# 'auto' on TPU: the Pallas flash kernel from this many tokens on (ViViT's 3136; every image
# model here has <= 785 tokens, where XLA's fused attention is fine and the [N, N] logits small).
PALLAS_MIN_TOKENS = 1024


def _pallas_flash_attention():
  """`jax.experimental.pallas.ops.tpu.flash_attention` (the module), or None if this JAX has
  none (it is imported lazily: nothing but the 'pallas' path needs Pallas)."""
  try:
    from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - present in the pinned JAX (0.10.2).
    return None
  return flash_attention


def resolve_attention(backend: str, dtype, train: bool, seq_len: int,
                      attention_dropout: float = 0.0, pallas_available: Optional[bool] = None
                      ) -> str:
  """What `attention_implementation='auto'` runs for one attention call.

  - attention dropout acting (train and rate > 0): 'einsum', the only path with it.
  - 'gpu': 'cudnn' (cuDNN flash attention) in bfloat16 / float16; 'xla' in float32 (cuDNN's
    fused attention takes half precision only).
  - 'tpu': 'pallas' (the Pallas TPU flash kernel, no [N, N] logits in HBM) from
    `PALLAS_MIN_TOKENS` tokens on, when this JAX has it; below that (or without it) 'xla' for
    forward passes and 'einsum' for training (XLA fuses both alike; 'einsum''s backward keeps
    every dot in the compute dtype, the autodiff of 'xla' dots float32 logit cotangents with
    k and q).
  - anything else (CPU): 'xla' for forward passes (1.19x the einsums, ViT-B/16, BENCHMARKS.md),
    'einsum' for training (its backward: 'xla' was 0.95x in the train step).

  Args:
    backend: `jax.default_backend()`: 'cpu', 'gpu' (also 'cuda' / 'rocm'), 'tpu'.
    dtype: the compute dtype of q, k, v.
    train: a training call (dropout acts).
    seq_len: N, the tokens attended over.
    attention_dropout: the attention dropout rate.
    pallas_available: whether the Pallas TPU kernel can be imported (None: try).
  """
  if train and attention_dropout > 0:
    return 'einsum'
  if backend in ('gpu', 'cuda', 'rocm'):
    return 'cudnn' if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else 'xla'
  if backend == 'tpu':
    if pallas_available is None:
      pallas_available = _pallas_flash_attention() is not None
    if pallas_available and seq_len >= PALLAS_MIN_TOKENS:
      return 'pallas'
  return 'einsum' if train else 'xla'


def attention(query, key, value, implementation: Optional[str], *, dropout_rate: float = 0.0,
              deterministic: bool = True, dropout_rng=None):
  """Softmax attention on `[B, N, H, D]` q, k, v in their own dtype; float32 logits and softmax
  statistics in every implementation; the result has `value`'s dtype.

  - 'einsum' (or None): `token_learner.modules.einsum_attention`, two einsums with float32
    accumulation; materialises the [B, H, N, N] logits; the only one with attention dropout.
  - 'xla': `jax.nn.dot_product_attention(implementation='xla')` (jax/_src/nn/functions.py:
    logits with `preferred_element_type` float32, softmax in float32, weights cast to v's dtype
    and a compute-dtype second einsum). Its gradient is JAX's autodiff, which dots the float32
    logit cotangent with k / q (mixed operands), so 'auto' trains with 'einsum' instead.
  - 'cudnn': cuDNN flash attention (GPU, bfloat16 / float16; float32 accumulation and softmax
    statistics inside cuDNN).
  - 'pallas': the Pallas TPU flash-attention kernel (`pallas_attention`; TPU only).
  """
  if implementation in (None, 'einsum'):
    return einsum_attention(query, key, value, broadcast_dropout=False, dropout_rng=dropout_rng,
                            dropout_rate=dropout_rate, deterministic=deterministic)
  if dropout_rate > 0 and not deterministic:
    raise ValueError(f'attention implementation {implementation!r} has no attention dropout: '
                     "use 'einsum' or 'auto'")
  backend = jax.default_backend()
  if implementation == 'cudnn':
    if backend != 'gpu':
      raise ValueError("config.model.attention_implementation='cudnn' needs a GPU backend, got "
                       f'{backend!r}')
    return jax.nn.dot_product_attention(query, key, value, implementation='cudnn')
  if implementation == 'pallas':
    if backend != 'tpu':
      raise ValueError("config.model.attention_implementation='pallas' needs a TPU backend, got "
                       f"{backend!r} (use 'auto')")
    return pallas_attention(query, key, value)
  if implementation == 'xla':
    return jax.nn.dot_product_attention(query, key, value, implementation='xla')
  raise ValueError(f'attention implementation {implementation!r} is not one of '
                   f'{IMPLEMENTATIONS}')


def pallas_attention(query, key, value, block: int = 128):
  """The Pallas TPU flash-attention kernel on `[B, N, H, D]` q, k, v (their own dtype): the
  logits of one `block` x `block` tile at a time in float32 (`preferred_element_type`), running
  max and normaliser in float32 VMEM scratch, no [N, N] array in HBM, forward and backward.

  The kernel tiles the keys in multiples of 128, so N is padded up to a multiple of `block`; the
  padded positions get segment id 1 (the real ones 0), so no real query attends to them, and the
  padded rows of the output are dropped. No backend check: on CPU it runs under
  `jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (the tests do).
  """
  fa = _pallas_flash_attention()
  if fa is None:  # pragma: no cover
    raise ValueError("attention_implementation='pallas': this JAX has no "
                     'jax.experimental.pallas.ops.tpu.flash_attention')
  b, n, _, d = query.shape
  pad = -n % block
  to_heads = lambda a: jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  segment_ids = None
  if pad:
    ids = jnp.broadcast_to((jnp.arange(n + pad) >= n).astype(jnp.int32), (b, n + pad))
    segment_ids = fa.SegmentIds(q=ids, kv=ids)
  sizes = fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                        block_q_dkv=block, block_k_major_dq=block, block_k_dq=block,
                        block_q_dq=block)
  out = fa.flash_attention(to_heads(query), to_heads(key), to_heads(value), None, segment_ids,
                           sm_scale=float(1.0 / math.sqrt(d)), block_sizes=sizes)
  return out.transpose(0, 2, 1, 3)[:, :n].astype(value.dtype)


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
    droppath = drop_path(self.droppath_rate, x.ndim)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = SelfAttention(self.num_heads, self.dtype, self.attention_dropout_rate,
                      self.attention_implementation, self.fused_qkv,
                      name='MultiHeadDotProductAttention_1')(y, train=train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + droppath(y, deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_3')(y, train=train)
    return x + droppath(y, deterministic=not train)


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
                        name=name)(tokens, residual, grid, train=train)
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
