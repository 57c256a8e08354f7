"""Learning-rate schedule and optimizer of a `TrainConfig` (optax)."""
import re

import jax
import optax

from token_learner.train.config import TrainConfig


def learning_rate_fn(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine or linear decay to 0."""
  decay_steps = max(cfg.num_train_steps - cfg.warmup_steps, 1)
  if cfg.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  else:
    decay = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
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
  if cfg.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask))
  else:
    if cfg.weight_decay > 0:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append({
        'adam': lambda: optax.adam(schedule),
        'momentum': lambda: optax.sgd(schedule, momentum=cfg.momentum),
        'sgd': lambda: optax.sgd(schedule),
    }[cfg.optimizer]())
  return optax.chain(*parts)
