"""The real jitted train step of an experiment, set up as training sets it up (benchmarks only)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position


def jitted_train_step(run):
  """(step, state, rng, cfg, mesh) of `experiment.from_config(...)`'s run on all devices."""
  mesh = sharding.create_mesh()
  cfg = run.train.for_run(num_train_examples=10 ** 6, num_devices=mesh.size)
  model = build_model(run.model)
  tx = optim.create_optimizer(cfg, optim.learning_rate_fn(cfg))
  init_rng, rng = sharding.replicated_keys(cfg.seed, mesh)
  state, shardings = sharding.create_train_state(init_rng, model, tx, run.model.input_shape,
                                                 mesh, cfg.sharding_rules)
  return trainer.compile_train_step(model, tx, cfg, mesh, shardings), state, rng, cfg, mesh
