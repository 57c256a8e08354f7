"""Losses of every task: both cross-entropies, mixup, the merge of a video's views (§5, §6.1.1).

- `softmax_xent` (single-label) and `sigmoid_xent`, the multi-label loss of Charades (§6.1.1,
  "multi-class, multilabel"), jax, per example; `LOSSES` maps `config.loss` to them.
- `mixup`; `dense_targets` and `top1_hits`, shared by the train step and the metrics.
- `average_views`: a video's clips x crops views (Tables 8, 9: "4x3 = 12" views) merged into one
  prediction before any loss or metric, jax or numpy.

jax and numpy only: the train step imports this module (the eval metrics are `metrics`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from token_learner.train.config import VIEW_AVERAGES


def softmax_xent(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy. logits, targets: [B, C] -> [B]."""
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def sigmoid_xent(logits, targets, label_smoothing: float = 0.0):
  """Per-example sigmoid cross-entropy, summed over classes (each class is its own binary task).

  Args:
    logits: `[B, K]`.
    targets: `[B, K]` 0/1 (multi-hot) targets.
    label_smoothing: targets become `t * (1 - ls) + ls / 2` (both outcomes equally smoothed).

  Returns:
    `[B]` float32 loss; average it over the (unmasked) batch.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
  # log(sigmoid(x)) and log(1 - sigmoid(x)) = log(sigmoid(-x)) stay finite for large |x|.
  loss = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  return loss.sum(axis=-1)


LOSSES = {'softmax_xent': softmax_xent, 'sigmoid_xent': sigmoid_xent}


def dense_targets(labels: jax.Array, num_classes: int):
  """Integer labels [B] -> one-hot [B, C]; dense (e.g. multi-hot) [B, C] labels pass through."""
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return labels.astype(jnp.float32)


def top1_hits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[B] 1.0 where the top-scoring class is a (the highest-weighted) target class."""
  predicted = jnp.take_along_axis(targets, jnp.argmax(logits, -1)[:, None], axis=-1)[:, 0]
  return ((predicted == targets.max(-1)) & (predicted > 0)).astype(jnp.float32)


def mixup(rng: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float):
  """Mixup (Zhang et al. 2018) with the batch rolled by one as partner (as big_vision)."""
  lam = jax.random.beta(rng, alpha, alpha)
  mix = lambda a: lam * a + (1.0 - lam) * jnp.roll(a, 1, axis=0)
  return mix(inputs), mix(targets)


def average_views(logits, how: str = 'logits', multi_label: bool = False):
  """Merges the V views (clips x crops) of each video into one prediction.

  Args:
    logits: `[N, V, K]`, the views of one video along axis 1 (a whole video per row, so no view
      is ever missing or shared between processes).
    how: 'logits' (mean of the logits) or 'probs' (mean of the probabilities: softmax, or the
      sigmoid if `multi_label`).
    multi_label: whether classes are independent (sigmoid) rather than exclusive (softmax).

  Returns:
    `[N, K]`: mean logits, or mean probabilities (for 'probs'). Either ranks classes per video, so
    accuracy and mAP take them as scores. Works on numpy and jax arrays.
  """
  xp = np if isinstance(logits, np.ndarray) else jnp
  if logits.ndim != 3:
    raise ValueError(f'average_views expects logits [N, V, K], got shape {logits.shape}')
  if how == 'logits':
    return logits.mean(axis=1)
  if how != 'probs':
    raise ValueError(f"how={how!r} is not one of {list(VIEW_AVERAGES)}")
  if multi_label:
    probs = 1.0 / (1.0 + xp.exp(-logits))
  else:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = xp.exp(shifted)
    probs = probs / probs.sum(axis=-1, keepdims=True)
  return probs.mean(axis=1)
