"""Eval metrics: the clu metric collection, mAP, per-class accuracy, ReaL (§3.2, §5, §6.1.1).

- `ClassificationMetrics`, the clu collection of eval loss, top-1 and top-5 accuracy (and
  `RealAccuracy`: ImageNet ReaL top-1, Beyer et al. 2020; correct when the top class is in the
  image's set of real labels, images with an empty set skipped); `eval_results` reads it.
- `mean_average_precision`: Charades "v1 classification" mAP (Table 10) exactly as the official
  devkit computes it, numpy, over the whole eval set; `MultiLabelAccumulator` gathers the
  per-batch scores for it (and, for single-label data, for `mean_per_class_accuracy`).
- `mean_per_class_accuracy`: AViD's "mean accuracy averaged over 887 classes" (Table 11), numpy.
"""
from typing import Optional

from clu import metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from token_learner.train.losses import top1_hits


@flax.struct.dataclass
class MeanLoss(metrics.Average):
  """Mean of the per-example `loss` over unmasked examples."""

  @classmethod
  def from_model_output(cls, *, loss, mask=None, **_):
    return cls(**vars(metrics.Average.from_model_output(loss, mask=mask)))


@flax.struct.dataclass
class Top1Accuracy(metrics.Average):
  """Top-1 accuracy; for multi-hot labels: the top class is one of the positives."""

  @classmethod
  def from_model_output(cls, *, logits, targets, mask=None, **_):
    return cls(**vars(metrics.Average.from_model_output(top1_hits(logits, targets), mask=mask)))


@flax.struct.dataclass
class Top5Accuracy(metrics.Average):
  """Top-5 accuracy: the label is among the 5 highest logits."""

  @classmethod
  def from_model_output(cls, *, logits, targets, mask=None, **_):
    _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
    hit = jnp.take_along_axis(targets, top, axis=-1).max(-1) > 0
    return cls(**vars(metrics.Average.from_model_output(hit.astype(jnp.float32), mask=mask)))


def real_hits(logits, real_labels):
  """ImageNet ReaL: `([B] hit, [B] valid)`; hit where the top class is one of the image's real
  labels (`real_labels` `[B, K]` multi-hot), valid where the image has any real label."""
  top = jnp.argmax(logits, axis=-1)
  hit = jnp.take_along_axis(real_labels, top[:, None], axis=-1)[:, 0] > 0
  return hit.astype(jnp.float32), real_labels.max(axis=-1) > 0


@flax.struct.dataclass
class RealAccuracy(metrics.Average):
  """ReaL top-1 accuracy over the unmasked images with a non-empty real-label set (count 0, and
  left out of the results by `eval_results`, when the batches carry no 'real_labels')."""

  @classmethod
  def from_model_output(cls, *, logits, real_labels=None, mask=None, **_):
    if real_labels is None:
      return cls(total=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.int32))
    hit, valid = real_hits(logits, real_labels)
    valid = valid if mask is None else valid & (mask > 0)
    return cls(**vars(metrics.Average.from_model_output(hit, mask=valid)))


@flax.struct.dataclass
class ClassificationMetrics(metrics.Collection):
  """Eval metrics of every task: mean loss, top-1 and top-5 accuracy over unmasked examples, and
  ReaL accuracy when the batches carry 'real_labels' (read the results with `eval_results`)."""
  loss: MeanLoss
  accuracy: Top1Accuracy
  top5_accuracy: Top5Accuracy
  real_accuracy: RealAccuracy


def average_precision(scores, targets) -> float:
  """Non-interpolated AP of one class: mean of the precision at the rank of every positive.

  Args:
    scores: `[N]` scores, higher = more confident.
    targets: `[N]` 0/1.

  Returns:
    AP in [0, 1], or NaN if there is no positive (the class is then left out of the mean).
    Ties are broken by the order in the input (a stable sort), as the Charades devkit does.
  """
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
  num_pos = targets.sum()
  if num_pos == 0:
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  tp = targets[order]
  precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
  return float(precision[tp].sum() / num_pos)


def _unmasked(mask, *arrays):
  """The arrays as numpy, without the rows where `mask` (optional, `[N]`) is 0 (padding)."""
  arrays = [np.asarray(a) for a in arrays]
  if mask is None:
    return arrays
  keep = np.asarray(mask).astype(bool)
  return [a[keep] for a in arrays]


def mean_average_precision(scores, targets, mask=None) -> float:
  """Charades v1 classification mAP: per-class AP over the eval set, averaged over classes with
  at least one positive (Table 10), as the official devkit (`Charades_v1_classify`, its python
  `charades_map`): the scores of a video without any positive label are set to -inf, so it ranks
  below every labelled video in every class (it can never push a positive down), and classes
  without positives are skipped (NaN AP, left out of the mean).

  Args:
    scores: `[N, K]` one score per video and class (view-averaged, see `average_views`).
    targets: `[N, K]` 0/1.
    mask: optional `[N]`, 0 for padding rows.

  Returns:
    mAP in [0, 1] (NaN if no class has a positive).
  """
  scores, targets = _unmasked(mask, scores, targets)
  if scores.shape != targets.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and targets {targets.shape} must both be [N, K]')
  scores = np.where((targets > 0).any(axis=1, keepdims=True), scores.astype(np.float64), -np.inf)
  aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
  return float(np.nanmean(aps)) if np.isfinite(aps).any() else float('nan')


def mean_per_class_accuracy(predictions, labels, num_classes: int, mask=None) -> float:
  """Top-1 accuracy per class, averaged over the classes present (AViD, Table 11).

  Args:
    predictions: `[N]` predicted class ids.
    labels: `[N]` true class ids.
    num_classes: K.
    mask: optional `[N]`, 0 for padding rows.
  """
  predictions, labels = _unmasked(mask, predictions, labels)
  correct = np.bincount(labels, weights=predictions == labels, minlength=num_classes)
  count = np.bincount(labels, minlength=num_classes)
  present = count > 0
  return float((correct[present] / count[present]).mean()) if present.any() else float('nan')


class MultiLabelAccumulator:
  """Collects `[B, K]` scores and targets batch by batch (masked rows dropped), then `.result()`
  is the mAP over everything seen. mAP ranks across the whole set, so it cannot be averaged over
  batches like accuracy. With integer `[B]` labels (single-label data) `.results(num_classes)`
  is the mean per-class accuracy instead."""

  def __init__(self):
    self._scores, self._targets = [], []

  def update(self, scores, targets, mask: Optional[np.ndarray] = None):
    scores, targets = _unmasked(mask, scores, targets)
    self._scores.append(scores)
    self._targets.append(targets)

  @property
  def count(self) -> int:
    return int(sum(len(s) for s in self._scores))

  def result(self) -> float:
    if not self._scores:
      return float('nan')
    return mean_average_precision(np.concatenate(self._scores), np.concatenate(self._targets))

  def results(self) -> dict:
    """{'map': ...} for multi-hot targets, {'mean_per_class_accuracy': ...} for integer labels."""
    if not self._scores:
      return {}
    scores, targets = np.concatenate(self._scores), np.concatenate(self._targets)
    if targets.ndim == 2:
      return {'map': mean_average_precision(scores, targets)}
    return {'mean_per_class_accuracy': mean_per_class_accuracy(
        scores.argmax(-1), targets.astype(np.int64), scores.shape[-1])}


def eval_results(eval_metrics: ClassificationMetrics) -> dict:
  """{name: float} of the metrics; real_accuracy only where some image had real labels."""
  names = [n for n in ClassificationMetrics.__annotations__
           if n != 'real_accuracy' or int(eval_metrics.real_accuracy.count)]
  return {n: float(getattr(eval_metrics, n).compute()) for n in names}
