"""The train step: one pure, jitted optimizer update (`train_step`), and its jit (`compile`).

Batches carry uint8 pixels; the step normalises them first (`normalize`, with the dataset's
mean / std), so mixup and everything after it is float32 as before.

Imports jax, flax's struct, optax and the library's losses only: a machine with the JAX stack and
no TensorFlow, TFDS, clu or orbax runs it (the accelerator benchmarks do).
"""
import functools
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from token_learner.data.normalize import normalize
from token_learner.train import losses
from token_learner.train import sharding
from token_learner.train.config import TrainConfig

TrainState = sharding.TrainState


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *, model, tx,
               cfg: TrainConfig, mean: Sequence[float],
               std: Sequence[float]) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer update on a global batch {'inputs': [B, ...], 'labels': [B] or [B, K]}.

  `inputs` are uint8 pixels, normalised here with the dataset's `mean` / `std` (float inputs
  are taken as normalised already; see token_learner.data.normalize).

  `rng` is the run's base key; the step's key is `fold_in(rng, state.step)`, so resuming needs
  no RNG state. With `grad_accum_steps` = k the batch is split into k micro-batches whose mean
  gradient (a scan) equals the gradient of the whole batch.
  """
  rng = jax.random.fold_in(rng, state.step)
  mixup_rng, dropout_rng = jax.random.split(rng)
  inputs = normalize(batch['inputs'], mean, std)
  targets = losses.dense_targets(batch['labels'], cfg.num_classes)
  if cfg.mixup_alpha > 0:
    inputs, targets = losses.mixup(mixup_rng, inputs, targets, cfg.mixup_alpha)
  loss_per_example = functools.partial(losses.LOSSES[cfg.loss],
                                       label_smoothing=cfg.label_smoothing)

  def loss_fn(params, x, y, dropout_key):
    logits, _ = model.apply({'params': params}, x, train=True, rngs={'dropout': dropout_key})
    logits = logits.astype(jnp.float32)
    return jnp.mean(loss_per_example(logits, y)), jnp.sum(losses.top1_hits(logits, y))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = cfg.grad_accum_steps
  if k == 1:
    (loss, correct), grads = grad_fn(state.params, inputs, targets, dropout_rng)
  else:
    # [B, ...] -> [k, B/k, ...] taking every k-th row, so each device keeps its own rows.
    split = lambda a: jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)

    def accumulate(carry, micro):
      (loss, correct), grads = grad_fn(state.params, *micro)
      return jax.tree.map(jnp.add, carry, (loss, correct, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
             jax.tree.map(jnp.zeros_like, state.params))
    micro_batches = (split(inputs), split(targets), jax.random.split(dropout_rng, k))
    (loss, correct, grads), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    loss, grads = loss / k, jax.tree.map(lambda g: g / k, grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  step_metrics = {'loss': loss, 'accuracy': correct / inputs.shape[0],
                  'grad_norm': optax.global_norm(grads)}
  return new_state, step_metrics


def compile(model, tx, cfg: TrainConfig, mesh, state_shardings, *,  # pylint: disable=redefined-builtin
            mean: Sequence[float], std: Sequence[float]):
  """`train_step` jitted with the state's shardings, batch rows over 'data', donated state;
  `mean` / `std`: the dataset's normalisation (config.dataset.mean / std)."""
  return jax.jit(functools.partial(train_step, model=model, tx=tx, cfg=cfg, mean=tuple(mean),
                                   std=tuple(std)),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh),
                               sharding.replicated(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)
