"""The run builder: the one place where a config becomes a model, an optimizer and jitted steps.

    run = setup.build(experiment.from_config(config))   # all devices; or mesh=, devices=
    state = run.init_state()                            # initialised in its shards
    state, metrics = run.train_step(state, batch, run.dropout_rng)

`train_and_evaluate` (token_learner.train.loop), `evaluate.py`, the evaluators, every benchmark
and the tests build their runs here, so the partition rules (`config.sharding`,
`config.sharding_rules`), the mesh (`config.mesh_shape`) and the optimizer are the same
everywhere. Nothing is compiled before a step is first called (or lowered). Imports the model
and the train step only: no TensorFlow, TFDS, clu or orbax.
"""
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from token_learner import build_model
from token_learner.train import optim
from token_learner.train import sharding
from token_learner.train import step as step_lib
from token_learner.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Run:
  """A config turned into what runs: read-only; `dataclasses.replace` it to swap a piece (a
  test wraps `train_step`)."""
  experiment: Any  # token_learner.experiment.Experiment
  cfg: TrainConfig  # experiment.train with num_train_steps resolved for this topology
  mesh: jax.sharding.Mesh
  model: Any  # the Flax module (in a sharding.ActivationSharded under 'fsdp' / 'tp' rules)
  tx: Any  # the optax optimizer
  learning_rate_fn: Callable[[int], Any]
  rules: sharding.Rules
  init_rng: jax.Array  # replicated keys
  dropout_rng: jax.Array
  abstract_state: sharding.TrainState  # ShapeDtypeStructs carrying their shardings
  state_shardings: sharding.TrainState
  train_step: Callable  # jitted (state, batch, rng) -> (state, metrics), state donated
  # The same step without gradient accumulation, for counting FLOPs (XLA counts a scan's body
  # once); None when config.grad_accum_steps is 1.
  accumulation_free_step: Optional[Callable] = None

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return sharding.batch_sharding(self.mesh)

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return sharding.replicated(self.mesh)

  @property
  def input_shape(self):
    return tuple(self.experiment.model.input_shape)

  def init_state(self) -> sharding.TrainState:
    """A fresh state (step 0), initialised directly in its shards (no second trace of the
    model for the shardings: the Run holds them)."""
    return sharding.init_train_state(self.init_rng, self.model, self.tx, self.input_shape,
                                     self.state_shardings)

  def place_params(self, host_params):
    """Host (numpy) parameters as global arrays sharded like the state's parameters."""
    return sharding.place(host_params, self.state_shardings.params, self.abstract_state.params)

  def synthetic_batch(self, batch_size: Optional[int] = None):
    """A zero batch of the input shape on the mesh (benchmarks, FLOP counts): uint8 pixels, as
    the data layer's batches."""
    b = batch_size or self.cfg.batch_size
    labels = (jnp.zeros((b, self.cfg.num_classes), jnp.float32) if self.cfg.multi_label
              else jnp.zeros((b,), jnp.int32))
    return jax.device_put({'inputs': jnp.zeros((b, *self.input_shape), jnp.uint8),
                           'labels': labels}, self.batch_sharding)


def create_mesh(experiment, devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """The ('data', 'model') mesh of `config.mesh_shape` over `devices` (default: all), laid out
  on the chips' interconnect, across TPU slices as `config.dcn_mesh_shape` says."""
  return sharding.create_mesh(devices, experiment.train.mesh_shape,
                              dcn_mesh_shape=experiment.train.dcn_mesh_shape)


def build(experiment, *, mesh: Optional[jax.sharding.Mesh] = None,
          devices: Optional[Sequence[jax.Device]] = None,
          num_train_examples: Optional[int] = None,
          compile_step: Callable = step_lib.compile) -> Run:
  """The Run of `experiment` (token_learner.experiment.Experiment) on `mesh` (default: the mesh
  of config.mesh_shape over `devices`, default all devices).

  `num_train_examples` resolves `config.num_epochs` into steps (needed only then). Raises
  ValueError naming the field when the batch sizes, the mesh or the epochs do not fit the
  topology; nothing is compiled here.
  """
  mesh = mesh if mesh is not None else create_mesh(experiment, devices)
  if experiment.train.num_train_steps is None and num_train_examples is None:
    raise ValueError('config.num_epochs needs the dataset size: pass num_train_examples')
  cfg = experiment.train.for_run(num_train_examples=num_train_examples or 0,
                                 num_devices=mesh.size, num_processes=jax.process_count())
  # Under 'fsdp', 'tp', 'fsdp_tp' the encoder's activations are constrained to their shards.
  model = sharding.with_activation_sharding(build_model(experiment.model), mesh, cfg.sharding)
  learning_rate_fn = optim.learning_rate_fn(cfg)
  tx = optim.create_optimizer(cfg, learning_rate_fn)
  rules = sharding.rules_of(cfg)
  init_rng, dropout_rng = sharding.replicated_keys(cfg.seed, mesh)
  abstract_state, state_shardings = sharding.abstract_train_state(
      init_rng, model, tx, experiment.model.input_shape, mesh, rules)
  compile_for = functools.partial(compile_step, model, tx, mesh=mesh,
                                  state_shardings=state_shardings, mean=experiment.data.mean,
                                  std=experiment.data.std)
  accumulation_free = (compile_for(dataclasses.replace(cfg, grad_accum_steps=1))
                       if cfg.grad_accum_steps > 1 else None)
  return Run(experiment=experiment, cfg=cfg, mesh=mesh, model=model, tx=tx,
             learning_rate_fn=learning_rate_fn, rules=rules, init_rng=init_rng,
             dropout_rng=dropout_rng, abstract_state=abstract_state,
             state_shardings=state_shardings, train_step=compile_for(cfg),
             accumulation_free_step=accumulation_free)
