"""The device mesh, partition rules and the train state, created directly in its shards.

The mesh is 2-D, axes ('data', 'model') of sizes `config.mesh_shape`; batch rows are split over
'data' and replicated over 'model'. A parameter's PartitionSpec comes from the first
`(regex, PartitionSpec tuple)` rule that matches its path: `config.sharding_rules`, then the
rules of the named set `config.sharding` ('tp', 'fsdp_tp': Megatron-style tensor parallelism
over 'model', `TP_RULES`); a rule whose axes do not divide the shape leaves it replicated. The
sets 'fsdp' and 'fsdp_tp' then also shard every parameter of at least `FSDP_MIN_SIZE` elements
over 'data' on its largest free dimension that 'data' divides (ZeRO-3 / FSDP: gathered for the
forward pass by XLA, gradients reduce-scattered). Optimizer state follows its parameter (its
paths end with the parameter's path and its moments have its shape).

The state is created sharded, big_vision's way: `jax.eval_shape` of the init -> shardings from
the abstract tree -> `jax.jit(init, out_shardings=...)`.
"""
import functools
import math
import re
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from token_learner import tree
from token_learner.train import config as train_config

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


AXES = train_config.MESH_AXES  # ('data', 'model')
FSDP_MIN_SIZE = 2 ** 12  # Elements: matrices are sharded, biases and LayerNorm scales are not.
# Megatron-LM (Shoeybi et al. 2019) over 'model': q/k/v kernels [C, heads, head_dim] split by
# heads (column parallel), the output kernel [heads, head_dim, C] by heads (row parallel); the
# MLP's first kernel [C, M] by columns, its second [M, C] by rows. One all-reduce per block.
_ATTENTION = r'MultiHeadDotProductAttention[^/]*/'
_TP_BLOCK_RULES = (
    (_ATTENTION + r'(query|key|value)/kernel$', (None, 'model', None)),
    (_ATTENTION + r'(query|key|value)/bias$', ('model', None)),
    (_ATTENTION + r'out/kernel$', ('model', None, None)),
    (r'MlpBlock[^/]*/Dense_0/kernel$', (None, 'model')),
    (r'MlpBlock[^/]*/Dense_0/bias$', ('model',)),
    (r'MlpBlock[^/]*/Dense_1/kernel$', ('model', None)),
)
# Scanned blocks (config.model.scan_layers) stack the same parameters with a leading layer axis.
TP_RULES = tuple((r'encoderblock_scan_\d+/.*' + pattern, (None, *spec))
                 for pattern, spec in _TP_BLOCK_RULES) + _TP_BLOCK_RULES
# config.sharding (train_config.SHARDINGS) -> (rules after config.sharding_rules, FSDP over
# 'data').
RULE_SETS = {'replicated': ((), False), 'fsdp': ((), True), 'tp': (TP_RULES, False),
             'fsdp_tp': (TP_RULES, True)}


class Rules(NamedTuple):
  """How parameters are partitioned: `(regex, spec)` rules, first match wins; then FSDP."""
  rules: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
  fsdp: bool = False


def rules_of(cfg) -> Rules:
  """The Rules of a TrainConfig: its explicit `sharding_rules`, then its named set's."""
  rules, fsdp = RULE_SETS[cfg.sharding]
  return Rules(tuple(cfg.sharding_rules) + rules, fsdp)


def mesh_axis_sizes(mesh_shape: Sequence[int], num_devices: int) -> Tuple[int, int]:
  """(data, model) sizes: `mesh_shape` with its -1 (if any) resolved to fill `num_devices`."""
  known = math.prod(s for s in mesh_shape if s != -1)
  sizes = tuple(num_devices // known if s == -1 else s for s in mesh_shape)
  if num_devices % known or math.prod(sizes) != num_devices:
    raise ValueError(f'config.mesh_shape={tuple(mesh_shape)} (data, model) does not fit the '
                     f'{num_devices} devices: the sizes must multiply to {num_devices} (-1: '
                     'the rest)')
  return sizes


def create_mesh(devices: Optional[Sequence[jax.Device]] = None,
                mesh_shape: Sequence[int] = train_config.MESH_SHAPE) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh of `mesh_shape` over `devices` (default: all devices of all
  processes). Devices are taken in order, so a 'model' group is consecutive devices: one host's
  when 'model' divides the local device count (tensor parallelism talks the most)."""
  devices = jax.devices() if devices is None else list(devices)
  if jax.process_count() > 1 and len(devices) != jax.device_count():
    raise ValueError('a multi-process run must use all devices')
  sizes = mesh_axis_sizes(mesh_shape, len(devices))
  return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), AXES)


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


def with_fsdp(spec: P, shape: Tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """`spec` plus 'data' on the largest dimension it leaves free and 'data' divides, for
  arrays of at least FSDP_MIN_SIZE elements; `spec` itself otherwise."""
  data = mesh.shape['data']
  axes = list(spec) + [None] * (len(shape) - len(spec))
  used = {a for entry in axes for a in (entry if isinstance(entry, tuple) else (entry,))}
  free = [d for d, size in enumerate(shape) if axes[d] is None and size % data == 0]
  if data == 1 or math.prod(shape) < FSDP_MIN_SIZE or 'data' in used or not free:
    return spec
  axes[max(free, key=lambda d: shape[d])] = 'data'  # The first of equally large ones.
  return P(*axes)


def tree_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for every leaf of `abstract_tree` (arrays or ShapeDtypeStructs); `rules` is
  a Rules or a plain sequence of (regex, spec) rules."""
  rules = rules if isinstance(rules, Rules) else Rules(tuple(rules))

  def spec(path, x):
    out = partition_spec(tree.key_path_str(path), x.shape, mesh, rules.rules)
    return with_fsdp(out, x.shape, mesh) if rules.fsdp else out
  return jax.tree_util.tree_map_with_path(lambda path, x: NamedSharding(mesh, spec(path, x)),
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


def init_train_state(rng, model, tx, input_shape, shardings):
  """The state initialised directly in `shardings` (those of `abstract_train_state`)."""
  init = functools.partial(_init, model=model, tx=tx, input_shape=tuple(input_shape))
  return jax.jit(init, out_shardings=shardings)(rng)


def create_train_state(rng, model, tx, input_shape, mesh, rules=()):
  """Initialises the state directly in its shards; returns (state, state_shardings)."""
  _, shardings = abstract_train_state(rng, model, tx, input_shape, mesh, rules)
  return init_train_state(rng, model, tx, input_shape, shardings), shardings


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
