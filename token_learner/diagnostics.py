"""Token diagnostics of TokenLearner attention maps (§6.4, Fig. 10): are the tokens spread out?

`token_stats(maps)` summarises the maps alpha_i(x) of one TokenLearner (Eq. 1), each normalised
to a distribution over the positions of its frame:
- `entropy`: mean entropy of a map, divided by log(H*W): 1 = uniform over the frame (the token
  averages everything), 0 = one position.
- `overlap`: mean histogram intersection sum_p min(a_i(p), a_j(p)) over pairs of distinct tokens
  of the same frame: 1 = two tokens attend identically (collapsed), 0 = disjoint.
"""
import numpy as np


def _distributions(maps) -> np.ndarray:
  """`[B, S, H, W]` or `[B, T, S, H, W]` -> `[B*T, S, H*W]`, each map summing to 1."""
  maps = np.asarray(maps, np.float64)
  if maps.ndim == 4:
    maps = maps[:, None]
  if maps.ndim != 5:
    raise ValueError(f'attention maps must be [B, S, H, W] or [B, T, S, H, W], got {maps.shape}')
  b, t, s, h, w = maps.shape
  flat = np.maximum(maps.reshape(b * t, s, h * w), 0.0)
  return flat / np.maximum(flat.sum(-1, keepdims=True), 1e-12)


def token_stats(maps) -> dict:
  """{'entropy', 'overlap'} of one TokenLearner's maps (see the module docstring)."""
  p = _distributions(maps)
  positions = p.shape[-1]
  entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
  entropy = float(entropy.mean() / np.log(positions)) if positions > 1 else 0.0
  s = p.shape[1]
  if s < 2:
    return {'entropy': entropy, 'overlap': float('nan')}
  pairwise = np.minimum(p[:, :, None], p[:, None, :]).sum(-1)  # [N, S, S]
  off_diagonal = ~np.eye(s, dtype=bool)
  return {'entropy': entropy, 'overlap': float(pairwise[:, off_diagonal].mean())}


def all_token_stats(attention_maps) -> dict:
  """Flat {'tokenlearner_<k>/entropy', ...} for every TokenLearner of a model (aux maps)."""
  out = {}
  for k, maps in enumerate(attention_maps):
    for name, value in token_stats(maps).items():
      out[f'tokenlearner_{k}/{name}'] = value
  return out
