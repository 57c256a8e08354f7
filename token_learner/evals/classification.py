"""The classification evaluator: every example of a split once, through the run's own eval step.

`eval_step` adds one global batch to running clu metrics (loss, top-1, top-5, ReaL); the merged
scores of multi-label data (mAP ranks over the whole set) and of `mean_per_class_accuracy` are
gathered on the host. Video batches carry V views per video and are merged before any metric
(`config.eval_average`; Tables 8, 9).
"""
import functools
from typing import Dict, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from token_learner import data
from token_learner.data.normalize import normalize
from token_learner.train import losses
from token_learner.train import metrics as metrics_lib
from token_learner.train import sharding
from token_learner.train.config import TrainConfig


def eval_step(params, batch: Dict[str, jax.Array], eval_metrics, *, model, cfg: TrainConfig,
              multi_view: bool, mean: Sequence[float], std: Sequence[float]):
  """Adds one global batch {'inputs', 'labels', 'mask'} to the running `eval_metrics`.

  `inputs` are uint8 pixels, normalised first with the dataset's `mean` / `std`
  (token_learner.data.normalize).

  Video eval batches carry V views per video, inputs [B, V, T, H, W, 3] (`multi_view`): the
  model sees every view and the V predictions are merged (`config.eval_average`) before any
  metric.

  Returns:
    (eval_metrics, scores): scores [B, K] (the merged predictions) for multi-label losses, whose
    mAP ranks over the whole eval set, and with config.mean_per_class_accuracy; else None.
    Batches with 'real_labels' [B, K] (ImageNet ReaL) also add to real_accuracy.
  """
  inputs = normalize(batch['inputs'], mean, std)
  if multi_view:
    b, v = inputs.shape[:2]
    inputs = inputs.reshape(b * v, *inputs.shape[2:])
  logits, _ = model.apply({'params': params}, inputs, train=False)
  logits = scores = logits.astype(jnp.float32)
  if multi_view:
    logits = logits.reshape(b, v, -1)
    scores = losses.average_views(logits, cfg.eval_average, cfg.multi_label)
    logits = losses.average_views(logits, 'logits')
  targets = losses.dense_targets(batch['labels'], cfg.num_classes)
  loss = losses.LOSSES[cfg.loss](logits, targets)
  update = metrics_lib.ClassificationMetrics.single_from_model_output(
      logits=scores, targets=targets, loss=loss, mask=batch['mask'],
      real_labels=batch.get('real_labels'))
  gather = cfg.multi_label or cfg.mean_per_class_accuracy
  return eval_metrics.merge(update), (scores if gather else None)


def compile_eval_step(model, cfg: TrainConfig, mesh, params_shardings, multi_view: bool, *,
                      mean: Sequence[float], std: Sequence[float]):
  """`eval_step` jitted with the params' shardings; metrics replicated; `mean` / `std`: the
  eval dataset's normalisation."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(eval_step, model=model, cfg=cfg, multi_view=multi_view,
                                   mean=tuple(mean), std=tuple(std)),
                 in_shardings=(params_shardings, sharding.batch_sharding(mesh), replicated),
                 out_shardings=replicated)


def evaluate(eval_step_fn, params, eval_input, mesh) -> Dict[str, float]:
  """One pass over `eval_input` (built once per run); padding (mask 0) is excluded, every example
  counted once. Returns loss, accuracy, top5_accuracy, num_examples (and map, multi-label;
  mean_per_class_accuracy when asked; real_accuracy on ImageNet ReaL)."""
  eval_metrics = jax.jit(metrics_lib.ClassificationMetrics.empty,
                         out_shardings=sharding.replicated(mesh))()
  accumulator = metrics_lib.MultiLabelAccumulator()
  batches = data.Prefetcher(iter(eval_input), sharding.batch_sharding(mesh))
  try:
    for batch in batches:
      eval_metrics, scores = eval_step_fn(params, batch, eval_metrics)
      if scores is not None:  # Replicated, like the labels gathered here.
        labels, mask = multihost_utils.process_allgather((batch['labels'], batch['mask']),
                                                         tiled=True)
        accumulator.update(np.asarray(scores), np.asarray(labels), mask)
  finally:
    batches.close()
  eval_metrics = jax.device_get(eval_metrics)  # Replicated: every process holds the total.
  result = metrics_lib.eval_results(eval_metrics)
  result['num_examples'] = int(eval_metrics.accuracy.count)
  result.update(accumulator.results())
  return result


class ClassificationEvaluator:
  """`config.evals.<name>` of kind 'classification' on a run; its input is built once."""

  def __init__(self, name: str, cfg, run, data_cfg, info: data.DatasetInfo):
    self.name, self.every_steps = name, cfg.every_steps
    self._mesh = run.mesh
    self._step = compile_eval_step(run.model, run.cfg, run.mesh, run.state_shardings.params,
                                   data_cfg.is_video, mean=data_cfg.mean, std=data_cfg.std)
    self._input = data.eval_input(data_cfg, batch_size=cfg.batch_size or run.cfg.eval_batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
    self._drop = {'top5_accuracy'} if info.num_classes <= 5 else set()

  def __call__(self, params):
    """({metric: value}, {}): loss, accuracy, top5_accuracy (more than 5 classes only), ..."""
    result = evaluate(self._step, params, self._input, self._mesh)
    return {k: v for k, v in result.items() if k not in self._drop}, {}
