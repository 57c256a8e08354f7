"""Sharding constraints on activations: the model names their axes, the trainer maps the names.

The encoder names the axes of what it computes (`RESIDUAL` for the residual stream `[B, N, C]`,
`HEADS` for q, k, v and the attention output `[B, N, H, D]`, `MLP` for the MLP's hidden
activations `[B, N, M]`: the logical names of the NNX parameters' metadata plus 'batch' and
'length'). `constrain(x, names)` pins `x` with `jax.lax.with_sharding_constraint` to the mesh
axes that the active rules give those names; a name without a rule is replicated. So under
tensor parallelism XLA keeps the residual stream whole on every 'model' device and splits heads
and MLP columns, as the Megatron weight layout intends, instead of re-sharding activations.

Outside `use(mesh, rules)` (a model applied without a trainer, or a rule set without activation
rules) `constrain` returns `x` unchanged, and so does it for an array whose dimensions the mesh
axes do not divide (the batch of 1 that initialises the parameters).
"""
import contextlib
import threading
from typing import Mapping, Sequence

import jax

RESIDUAL = ('batch', 'length', 'embed')
HEADS = ('batch', 'length', 'heads', 'kv')
MLP = ('batch', 'length', 'mlp')

_active = threading.local()


@contextlib.contextmanager
def use(mesh: jax.sharding.Mesh, rules: Mapping[str, str]):
  """Within the block (while a step is traced), `constrain` maps logical names to the axes of
  `mesh` by `rules` ({logical name: mesh axis}); empty rules: no constraints."""
  previous = getattr(_active, 'value', None)
  _active.value = (mesh, dict(rules)) if rules else None
  try:
    yield
  finally:
    _active.value = previous


def constrain(x: jax.Array, names: Sequence[str]) -> jax.Array:
  """`x` constrained to the mesh axes of its axis `names` (one per dimension) under `use`."""
  active = getattr(_active, 'value', None)
  if active is None:
    return x
  mesh, rules = active
  spec = []
  for size, name in zip(x.shape, names):
    axis = rules.get(name)
    if axis is not None and size % mesh.shape[axis]:
      return x  # Not divisible (e.g. the init's batch of 1): left to XLA.
    spec.append(axis)
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
