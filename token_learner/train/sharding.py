"""The device mesh, partition rules and the train state, created directly in its shards.

Parameters are data parallel (replicated) unless a `(regex, PartitionSpec tuple)` rule of
`config.sharding_rules` matches their path (FSDP-style sharding over the 'data' axis); optimizer
state follows its parameter. The state is created sharded, big_vision's way: `jax.eval_shape`
of the init -> shardings from the abstract tree -> `jax.jit(init, out_shardings=...)`.
"""
import functools
import math
import re
from typing import Any, Optional, Sequence, Tuple

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from token_learner import tree

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  if jax.process_count() > 1 and len(devices) != jax.device_count():
    raise ValueError('a multi-process run must use all devices')
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Global batches: rows split over the 'data' axis."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicated_keys(seed: int, mesh: jax.sharding.Mesh):
  """(init_rng, dropout_rng) from `seed`, as global arrays replicated over the mesh."""
  keys = lambda: tuple(jax.random.split(jax.random.key(seed)))
  return jax.jit(keys, out_shardings=replicated(mesh))()


def partition_spec(path: str, shape: Tuple[int, ...], mesh: jax.sharding.Mesh,
                   rules: Sequence[Tuple[str, Tuple[Any, ...]]]) -> P:
  """The first rule whose regex is found in `path`, if its axes divide `shape`; else replicated."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      if len(spec) > len(shape):
        return P()
      for dim, axes in zip(shape, spec):
        axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        if dim % math.prod(mesh.shape[a] for a in axes):
          return P()
      return P(*spec)
  return P()


def tree_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for every leaf of `abstract_tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(
          mesh, partition_spec(tree.key_path_str(path), x.shape, mesh, rules)),
      abstract_tree)


def sharded_paths(params) -> dict:
  """{path: spec} of the parameters that are not replicated (for the run's log)."""
  return {path: str(x.sharding.spec) for path, x in tree.flatten(params).items()
          if x.sharding.spec != P()}


def _init(rng, *, model, tx, input_shape):
  params_rng, dropout_rng = jax.random.split(rng)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  params = model.init({'params': params_rng, 'dropout': dropout_rng}, x, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(rng, model, tx, input_shape, mesh, rules=()):
  """(ShapeDtypeStructs with shardings, e.g. a restore target; the shardings) of the state."""
  init = functools.partial(_init, model=model, tx=tx, input_shape=tuple(input_shape))
  abstract = jax.eval_shape(init, rng)
  shardings = tree_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings


def create_train_state(rng, model, tx, input_shape, mesh, rules=()):
  """Initialises the state directly in its shards; returns (state, state_shardings)."""
  _, shardings = abstract_train_state(rng, model, tx, input_shape, mesh, rules)
  init = functools.partial(_init, model=model, tx=tx, input_shape=tuple(input_shape))
  return jax.jit(init, out_shardings=shardings)(rng), shardings


def to_host(arrays):
  """A tree of (possibly sharded, multi-process) global arrays as numpy on every process."""
  return multihost_utils.process_allgather(arrays, tiled=True)


def like(host_tree, arrays):
  """`host_tree` (numpy, same structure) placed like `arrays` (shapes, dtypes, shardings)."""
  return place(host_tree, jax.tree.map(lambda a: a.sharding, arrays), arrays)


def place(host_tree, shardings, like_tree=None):
  """`host_tree` (numpy, the same on every process) as global arrays with `shardings`; with the
  shapes and dtypes of `like_tree` (arrays or ShapeDtypeStructs) when given."""
  like_tree = host_tree if like_tree is None else like_tree
  return jax.tree.map(
      lambda x, s, ref: jax.make_array_from_callback(
          ref.shape, s, lambda index, x=x: np.asarray(x, ref.dtype)[index]),
      host_tree, shardings, like_tree)
