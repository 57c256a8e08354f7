"""Multi-head self-attention of the encoder blocks and its implementations (§3, the ViT encoder).

`SelfAttention` keeps the parameters of flax's `nn.MultiHeadDotProductAttention` whatever the
implementation, so public ViT checkpoints load unchanged; `attention` runs one of
`IMPLEMENTATIONS` on `[B, N, H, D]` q, k, v, and `resolve_attention` is what 'auto' picks for
a backend, dtype, mode and sequence length. The precision policy: q, k, v in the compute dtype,
never upcast; logits and softmax statistics in float32.
"""
import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from token_learner import activation_sharding
from token_learner.modules import einsum_attention

Dtype = Any


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
    fused_qkv: one matmul for q, k, v (the three kernels stacked in the step to `[C, 3, H, D]`,
      so a kernel split by heads over devices stays split) instead of three.

  q, k, v and the attention output are constrained to their heads' devices under
  `token_learner.activation_sharding.use` (tensor parallelism).
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
    if self.fused_qkv:  # [C, 3, H, D]: stacked on a new axis, so a split by heads stays local.
      kernel = jnp.stack([k for k, _ in params], axis=1)
      bias = jnp.stack([b for _, b in params])
      qkv = dense(x, kernel, bias, 1)  # [B, N, 3, H, D]
      q, k, v = (qkv[..., i, :, :] for i in range(3))
    else:
      q, k, v = (dense(x, kernel, bias, 1) for kernel, bias in params)
    q, k, v = (activation_sharding.constrain(a, activation_sharding.HEADS) for a in (q, k, v))
    impl = self.implementation
    if impl == 'auto':
      impl = resolve_attention(jax.default_backend(), dtype, train, x.shape[-2],
                               self.dropout_rate)
    deterministic = not train or self.dropout_rate == 0.0
    rng = None if deterministic or impl not in (None, 'einsum') else self.make_rng('dropout')
    y = attention(q, k, v, impl, dropout_rate=self.dropout_rate, deterministic=deterministic,
                  dropout_rng=rng)
    y = activation_sharding.constrain(y, activation_sharding.HEADS)
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
