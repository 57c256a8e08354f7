"""Parameters between the linen and the NNX modules, both ways.

The NNX modules and models of `token_learner.nnx` name their attributes as the linen modules name
their parameters, so the pure-dict form of an NNX module's `nnx.Param` state is the linen
`params` tree. These functions check that the two trees have the same keys and shapes and name
the first difference.

    linen_params = to_linen_params(nnx_module)            # {'LayerNorm_0': {'scale': ...}, ...}
    from_linen_params(nnx_module, linen_params)           # in place; returns the module
"""
from typing import Any, Dict

import jax
import numpy as np
from flax import nnx

from token_learner import layer_scan
from token_learner.tree import flatten, unflatten


def _flat_state(module) -> Dict[str, Any]:
  return flatten(nnx.state(module, nnx.Param).to_pure_dict())


def to_linen_params(module) -> Dict[str, Any]:
  """The linen `params` tree (nested dict of arrays, string keys) of an NNX module here."""
  return unflatten(_flat_state(module))


def from_linen_params(module, params, *, strict: bool = True):
  """Writes a linen `params` tree into the NNX `module` in place and returns the module.

  A scanned linen tree (`encoderblock_scan_{k}`, config.model.scan_layers) is unrolled first.

  Args:
    module: an NNX module of this package (TokenLearner, TokenFuser, ViT, ...).
    params: the linen parameters (`variables['params']`), arrays or numpy arrays.
    strict: every parameter of the module must be in `params` and every entry of `params` must
      be used; False: only the common keys are written (shapes must still match).

  Raises:
    ValueError: naming the first missing / unused key or shape mismatch.
  """
  params = params.get('params', params) if isinstance(params, dict) else params
  target = _flat_state(module)
  source = flatten(layer_scan.to_unrolled(jax.device_get(params)))
  if strict:
    missing, unused = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    if missing:
      raise ValueError(f'{missing[0]}: in the NNX module (shape {np.shape(target[missing[0]])})'
                       ' but not in the linen params')
    if unused:
      raise ValueError(f'{unused[0]}: in the linen params but not in the NNX module')
  update = {}
  for key, value in source.items():
    if key not in target:
      continue
    if np.shape(value) != np.shape(target[key]):
      raise ValueError(f'{key}: linen shape {np.shape(value)} does not match NNX shape '
                       f'{np.shape(target[key])}')
    update[key] = jax.numpy.asarray(value, target[key].dtype)
  pure = flatten(nnx.state(module, nnx.Param).to_pure_dict())
  pure.update(update)
  state = nnx.state(module, nnx.Param)
  state.replace_by_pure_dict(unflatten(pure))
  nnx.update(module, state)
  return module
