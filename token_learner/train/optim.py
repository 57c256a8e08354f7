"""Learning-rate schedule and optimizer of a `TrainConfig` (optax)."""
import re

import jax
import optax

from token_learner.train.config import TrainConfig


# config.lr_schedule (train.config.LR_SCHEDULES) -> (peak, steps) -> the decay to 0.
DECAYS = {
    'cosine': optax.cosine_decay_schedule,
    'linear': lambda peak, steps: optax.linear_schedule(peak, 0.0, steps),
}
# config.optimizer (train.config.OPTIMIZERS) -> (cfg, schedule, decay mask) -> the update rule.
# 'adamw' decouples weight decay; the others get it as L2 (add_decayed_weights before them).
OPTIMIZERS = {
    'adamw': lambda cfg, lr, mask: optax.adamw(lr, weight_decay=cfg.weight_decay, mask=mask),
    'adam': lambda cfg, lr, mask: optax.adam(lr),
    'momentum': lambda cfg, lr, mask: optax.sgd(lr, momentum=cfg.momentum),
    'sgd': lambda cfg, lr, mask: optax.sgd(lr),
}


def learning_rate_fn(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine or linear decay to 0."""
  decay_steps = max(cfg.num_train_steps - cfg.warmup_steps, 1)
  decay = DECAYS[cfg.lr_schedule](cfg.learning_rate, decay_steps)
  if not cfg.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params, regex: str):
  """True for the parameters whose '/'-joined path matches `regex` (config.weight_decay_regex;
  by default kernels only: not biases, LayerNorm scales, position embeddings or the CLS token)."""
  pattern = re.compile(regex)
  path_str = lambda path: '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(pattern.search(path_str(path))),
                                          params)


def create_optimizer(cfg: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Clipping + adamw / adam / momentum / sgd. For adam/momentum/sgd weight decay is L2."""
  parts = []
  mask = lambda params: decay_mask(params, cfg.weight_decay_regex)
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.optimizer != 'adamw' and cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
  parts.append(OPTIMIZERS[cfg.optimizer](cfg, schedule, mask))
  return optax.chain(*parts)
