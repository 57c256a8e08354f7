"""Scanned encoder layers (`config.model.scan_layers`) and rematerialisation (`config.model.remat`).

With `scan_layers=True` the encoder blocks run under `nn.scan`, one scan per *segment*: the
layers between two places where the token set changes. With a TokenLearner of Fig. 3(a) (§3.1)
before layer `loc`, the segments are [0, loc) on the patch grid and [loc, L) on the S (x T)
learned tokens; without one (or with loc 0 or L) a single segment [0, L). The compiled program
then holds one block body per segment instead of L copies, which is what makes deep models
(ViT-L/16 "24+11", §3.3 Table 2) quick to compile.

Parameter layout. Unrolled (the default, and the public vit_jax layout):
`Transformer/encoderblock_{i}/<block params>`, i = 0..L-1. Scanned:
`Transformer/encoderblock_scan_{k}/<block params>` for segment k = 0, 1, every leaf with a
leading layer axis: entry j of segment k is layer `start_k + j`. Segments are contiguous and in
order, so `to_unrolled` needs no config; `to_scanned` takes the segments (`segments(cfg)`).
Checkpoints and `.npz` files of either layout load into either (`token_learner.pretrained`).

`remat` ('none' | 'full' | 'dots') wraps every encoder block in `nn.remat`: 'full' saves only the
block's input and recomputes the rest in the backward pass, 'dots' also keeps the results of
matrix multiplications without batch dimensions (the Dense projections;
`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`).
"""
import re
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from token_learner import encoder_plan

SCAN_PREFIX = 'encoderblock_scan_'
_UNROLLED = re.compile(r'^encoderblock_(\d+)$')
_SCANNED = re.compile(rf'^{SCAN_PREFIX}(\d+)$')
REMAT_POLICIES = {
    'full': None,  # jax.checkpoint's default: nothing saved but the inputs.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def segments(cfg) -> Tuple[Tuple[int, int], ...]:
  """`((start, stop), ...)`: the layer ranges scanned one after the other for a ModelConfig (the
  `Blocks` of its encoder plan, token_learner/encoder_plan.py)."""
  return encoder_plan.segments(encoder_plan.plan(cfg))


def droppath_rates(cfg, start: int, stop: int):
  """Stochastic depth rate of layers [start, stop): linear in depth from 0 to
  `cfg.stochastic_depth` at the last layer."""
  return [cfg.stochastic_depth * lyr / max(cfg.num_layers - 1, 1) for lyr in range(start, stop)]


def _stack(leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def to_scanned(params: Dict[str, Any], segs: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
  """Unrolled -> scanned layout: `Transformer/encoderblock_{i}` stacked per segment into
  `Transformer/encoderblock_scan_{k}` (leading layer axis). Other entries are kept as they are;
  a tree that is already scanned is returned unchanged.

  Raises:
    ValueError: a layer of `segs` is missing, or the tree has layers no segment covers.
  """
  blocks = params.get('Transformer', {})
  layers = {int(m.group(1)): k for k in blocks for m in [_UNROLLED.match(k)] if m}
  if not layers and any(_SCANNED.match(k) for k in blocks):
    return params
  wanted = [i for start, stop in segs for i in range(start, stop)]
  if sorted(layers) != wanted:
    raise ValueError(f'to_scanned: the tree has encoder layers {sorted(layers)}, the scanned '
                     f'model layers {wanted} (segments {tuple(segs)})')
  out = {k: v for k, v in blocks.items() if not _UNROLLED.match(k)}
  for k, (start, stop) in enumerate(segs):
    out[f'{SCAN_PREFIX}{k}'] = jax.tree.map(
        lambda *xs: _stack(xs), *[blocks[f'encoderblock_{i}'] for i in range(start, stop)])
  return {**params, 'Transformer': out}


def to_unrolled(params: Dict[str, Any]) -> Dict[str, Any]:
  """Scanned -> unrolled layout: entry j of `Transformer/encoderblock_scan_{k}` becomes
  `Transformer/encoderblock_{i}`, i = j + the layers of the segments before k. Other entries are
  kept; a tree without scanned layers is returned unchanged."""
  blocks = params.get('Transformer', {})
  scans = sorted((int(m.group(1)), key) for key in blocks for m in [_SCANNED.match(key)] if m)
  if not scans:
    return params
  if [k for k, _ in scans] != list(range(len(scans))):
    raise ValueError(f'to_unrolled: scanned segments {[key for _, key in scans]} are not '
                     f'numbered 0..{len(scans) - 1}')
  out = {k: v for k, v in blocks.items() if not _SCANNED.match(k)}
  first = 0
  for _, key in scans:
    length = jax.tree.leaves(blocks[key])[0].shape[0]
    for j in range(length):
      out[f'encoderblock_{first + j}'] = jax.tree.map(lambda x, j=j: x[j], blocks[key])
    first += length
  return {**params, 'Transformer': out}
