"""The device mesh, partition rules and the train state, created directly in its shards.

The mesh is 2-D, axes ('data', 'model') of sizes `config.mesh_shape`, laid out on the chips'
interconnect by jax's mesh_utils (across TPU slices as `config.dcn_mesh_shape` says,
`device_grid`); batch rows are split over 'data' and replicated over 'model'. A parameter's
PartitionSpec comes from the first `(regex, PartitionSpec tuple)` rule that matches its path:
`config.sharding_rules`, then the rules of the named set `config.sharding` ('tp', 'fsdp_tp':
Megatron-style tensor parallelism over 'model', `TP_RULES`); a rule whose axes do not divide
the shape leaves it replicated. The sets 'fsdp' and 'fsdp_tp' then also shard every parameter
of at least `FSDP_MIN_SIZE` elements over 'data' on its largest free dimension that 'data'
divides (ZeRO-3 / FSDP: gathered for the forward pass by XLA, gradients reduce-scattered).
Optimizer state follows its parameter (its paths end with the parameter's path and its moments
have its shape).

Activations: under 'fsdp', 'tp' and 'fsdp_tp' the trainer's model (`with_activation_sharding`)
constrains the encoder's residual stream, q / k / v and MLP activations (`ACTIVATION_RULES`,
token_learner/activation_sharding.py), so XLA shards the weights and never the residual stream.

The state is created sharded, big_vision's way: `jax.eval_shape` of the init -> shardings from
the abstract tree -> `jax.jit(init, out_shardings=...)`.
"""
import dataclasses
import functools
import math
import re
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from token_learner import activation_sharding
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


# config.sharding -> {logical activation axis: mesh axis} (token_learner/activation_sharding.py):
# batch rows over 'data'; with tensor parallelism heads and MLP columns over 'model', the
# residual stream ('embed') whole on every 'model' device. 'replicated' adds no constraints.
_DATA_PARALLEL = {'batch': 'data'}
ACTIVATION_RULES = {'replicated': {}, 'fsdp': _DATA_PARALLEL,
                    'tp': {**_DATA_PARALLEL, 'heads': 'model', 'mlp': 'model'},
                    'fsdp_tp': {**_DATA_PARALLEL, 'heads': 'model', 'mlp': 'model'}}


@dataclasses.dataclass(frozen=True)
class ActivationSharded:
  """A Flax module whose `init` / `apply` run under `activation_sharding.use(mesh, rules)`, so
  the steps traced with it constrain the encoder's activations (the trainer's model)."""
  module: Any
  mesh: jax.sharding.Mesh
  rules: Tuple[Tuple[str, str], ...]

  def init(self, *args, **kwargs):
    with activation_sharding.use(self.mesh, dict(self.rules)):
      return self.module.init(*args, **kwargs)

  def apply(self, *args, **kwargs):
    with activation_sharding.use(self.mesh, dict(self.rules)):
      return self.module.apply(*args, **kwargs)


def with_activation_sharding(module, mesh: jax.sharding.Mesh, sharding_name: str):
  """`module` with the activation constraints of rule set `sharding_name` (config.sharding) on
  `mesh`; `module` itself when the set has none."""
  rules = ACTIVATION_RULES[sharding_name]
  return ActivationSharded(module, mesh, tuple(sorted(rules.items()))) if rules else module


class Rules(NamedTuple):
  """How parameters are partitioned: `(regex, spec)` rules, first match wins; then FSDP."""
  rules: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
  fsdp: bool = False


def rules_of(cfg) -> Rules:
  """The Rules of a TrainConfig: its explicit `sharding_rules`, then its named set's."""
  rules, fsdp = RULE_SETS[cfg.sharding]
  return Rules(tuple(cfg.sharding_rules) + rules, fsdp)


def mesh_axis_sizes(mesh_shape: Sequence[int], num_devices: int,
                    name: str = 'mesh_shape', unit: str = 'devices') -> Tuple[int, int]:
  """(data, model) sizes: `mesh_shape` with its -1 (if any) resolved to fill `num_devices`."""
  known = math.prod(s for s in mesh_shape if s != -1)
  sizes = tuple(num_devices // known if s == -1 else s for s in mesh_shape)
  if num_devices % known or math.prod(sizes) != num_devices:
    raise ValueError(f'config.{name}={tuple(mesh_shape)} (data, model) does not fit the '
                     f'{num_devices} {unit}: the sizes must multiply to {num_devices} (-1: '
                     'the rest)')
  return sizes


def slices_of(devices: Sequence[Any]) -> List[List[Any]]:
  """`devices` grouped by TPU slice (`slice_index`, multi-slice TPU only), in slice order; one
  group when the devices have no slice index (CPU, GPU, one TPU slice)."""
  groups = {}
  for d in devices:
    groups.setdefault(getattr(d, 'slice_index', 0), []).append(d)
  return [groups[k] for k in sorted(groups)]


def device_grid(devices: Sequence[Any], mesh_shape: Sequence[int] = train_config.MESH_SHAPE,
                dcn_mesh_shape: Sequence[int] = train_config.DCN_MESH_SHAPE) -> np.ndarray:
  """The devices as a (data, model) array of `mesh_shape`, laid out on the interconnect.

  One slice: `mesh_utils.create_device_mesh`, which on TPU places each 'model' group (the axis
  that talks the most) on neighbouring chips of the torus (on CPU and GPU: the devices in
  order, sorted by id on GPU). Several slices (devices with different `slice_index`):
  `mesh_utils.create_hybrid_device_mesh`, each slice a (data, model) / `dcn_mesh_shape` block
  of the mesh, so only the axes `dcn_mesh_shape` splits cross the data-center network (default
  (-1, 1): 'data' only).
  """
  sizes = mesh_axis_sizes(mesh_shape, len(devices))
  slices = slices_of(devices)
  dcn = mesh_axis_sizes(dcn_mesh_shape, len(slices), 'dcn_mesh_shape', 'slices')
  if len({len(s) for s in slices}) > 1:
    raise ValueError(f'the devices span {len(slices)} slices of unequal sizes '
                     f'{[len(s) for s in slices]}')
  per_slice = tuple(size // d for size, d in zip(sizes, dcn))
  if any(size % d for size, d in zip(sizes, dcn)):
    raise ValueError(f'config.dcn_mesh_shape={tuple(dcn)} (data, model) must divide '
                     f'config.mesh_shape={sizes}: each of the {len(slices)} slices holds a '
                     'block of the mesh')
  try:
    if len(slices) == 1:
      return mesh_utils.create_device_mesh(sizes, list(devices), allow_split_physical_axes=True)
    return mesh_utils.create_hybrid_device_mesh(per_slice, dcn, list(devices),
                                                allow_split_physical_axes=True)
  except (NotImplementedError, AssertionError, ValueError) as e:  # A topology it cannot map.
    logging.warning('mesh_utils cannot lay out a %s mesh on these devices (%s): devices in '
                    'order, slice by slice', sizes, e)
    ordered = [d for group in slices for d in group]
    return np.asarray(ordered, dtype=object).reshape(sizes)


def create_mesh(devices: Optional[Sequence[jax.Device]] = None,
                mesh_shape: Sequence[int] = train_config.MESH_SHAPE, *,
                dcn_mesh_shape: Sequence[int] = train_config.DCN_MESH_SHAPE
                ) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh of `mesh_shape` over `devices` (default: all devices of all
  processes), laid out by `device_grid` (topology-aware on TPU, across slices with
  `dcn_mesh_shape`). On CPU devices are taken in order, so a 'model' group is consecutive
  devices: one host's when 'model' divides the local device count."""
  devices = jax.devices() if devices is None else list(devices)
  if jax.process_count() > 1 and len(devices) != jax.device_count():
    raise ValueError('a multi-process run must use all devices')
  return jax.sharding.Mesh(device_grid(devices, mesh_shape, dcn_mesh_shape), AXES)


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
