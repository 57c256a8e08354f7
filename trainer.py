"""Training and evaluation of the image / video classifiers: `train_and_evaluate(config, workdir)`.

Read top to bottom: `train_step` and `eval_step` (pure, jitted once with explicit shardings),
`evaluate` (one pass over the eval split), `train_and_evaluate` (the loop). What they call lives
in small modules: the config boundary `token_learner.experiment`, the input
`token_learner.data`, and `token_learner.train.{config, losses, optim, sharding, checkpoints,
logger, throughput}`.

One jitted, pure `train_step(state, batch, rng) -> (state, metrics)` runs over a ('data',
'model') device mesh (`config.mesh_shape`) with donated state; the same code runs on one device,
on 8 simulated CPU devices and on several processes (global batches are assembled from each
process's rows, split over 'data'). Parameters are data parallel (replicated) unless
`config.sharding` / `config.sharding_rules` shard them (FSDP over 'data', tensor parallel over
'model'; token_learner.train.sharding).

Resuming is exact: the state (params, optimizer state, step) is checkpointed with orbax, per-step
randomness is `fold_in(base_rng, step)`, and the input restarts at batch `step`, so a run killed
at any moment and restarted ends with the same parameters, bit for bit, as an uninterrupted run.
"""
import dataclasses
import functools
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from token_learner import build_model
from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner import fields
from token_learner import pretrained
from token_learner.flops import count_flops_and_params
from token_learner.train import checkpoints
from token_learner.train import fewshot
from token_learner.train import losses
from token_learner.train import logger
from token_learner.train import optim
from token_learner.train import preemption
from token_learner.train import sharding
from token_learner.train import throughput
from token_learner.train.config import MULTI_LABEL_LOSSES, TrainConfig

TrainState = sharding.TrainState


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *, model, tx,
               cfg: TrainConfig) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer update on a global batch {'inputs': [B, ...], 'labels': [B] or [B, K]}.

  `rng` is the run's base key; the step's key is `fold_in(rng, state.step)`, so resuming needs
  no RNG state. With `grad_accum_steps` = k the batch is split into k micro-batches whose mean
  gradient (a scan) equals the gradient of the whole batch.
  """
  rng = jax.random.fold_in(rng, state.step)
  mixup_rng, dropout_rng = jax.random.split(rng)
  inputs = batch['inputs']
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


def eval_step(params, batch: Dict[str, jax.Array], eval_metrics, *, model, cfg: TrainConfig,
              multi_view: bool):
  """Adds one global batch {'inputs', 'labels', 'mask'} to the running `eval_metrics`.

  Video eval batches carry V views per video, inputs [B, V, T, H, W, 3] (`multi_view`): the
  model sees every view and the V predictions are merged (`config.eval_average`) before any
  metric.

  Returns:
    (eval_metrics, scores): scores [B, K] (the merged predictions) for multi-label losses, whose
    mAP ranks over the whole eval set, and with config.mean_per_class_accuracy; else None.
    Batches with 'real_labels' [B, K] (ImageNet ReaL) also add to real_accuracy.
  """
  inputs = batch['inputs']
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
  update = losses.ClassificationMetrics.single_from_model_output(
      logits=scores, targets=targets, loss=loss, mask=batch['mask'],
      real_labels=batch.get('real_labels'))
  gather = cfg.multi_label or cfg.mean_per_class_accuracy
  return eval_metrics.merge(update), (scores if gather else None)


def compile_train_step(model, tx, cfg: TrainConfig, mesh, state_shardings):
  """`train_step` jitted with the state's shardings, batch rows over 'data', donated state."""
  return jax.jit(functools.partial(train_step, model=model, tx=tx, cfg=cfg),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh),
                               sharding.replicated(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def compile_eval_step(model, cfg: TrainConfig, mesh, params_shardings, multi_view: bool):
  """`eval_step` jitted with the params' shardings; metrics replicated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(eval_step, model=model, cfg=cfg, multi_view=multi_view),
                 in_shardings=(params_shardings, sharding.batch_sharding(mesh), replicated),
                 out_shardings=replicated)


def evaluate(eval_step_fn, params, eval_input, mesh) -> Dict[str, float]:
  """One pass over `eval_input` (built once per run); padding (mask 0) is excluded, every example
  counted once. Returns loss, accuracy, top5_accuracy, num_examples (and map, multi-label;
  mean_per_class_accuracy when asked; real_accuracy on ImageNet ReaL)."""
  eval_metrics = jax.jit(losses.ClassificationMetrics.empty,
                         out_shardings=sharding.replicated(mesh))()
  accumulator = losses.MultiLabelAccumulator()
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
  result = losses.eval_results(eval_metrics)
  result['num_examples'] = int(eval_metrics.accuracy.count)
  result.update(accumulator.results())
  return result


def _check_dataset(experiment, info: data.DatasetInfo):
  """The model head and the loss must fit the data (checked before anything is compiled)."""
  if info.num_classes != experiment.model.num_classes:
    raise ValueError(f'config.model.num_classes={experiment.model.num_classes} but dataset '
                     f'{experiment.data.name!r} has {info.num_classes} classes')
  if info.multi_label != experiment.train.multi_label:
    raise ValueError(f'config.loss={experiment.train.loss!r} does not fit the dataset '
                     f'(multi_label={info.multi_label}); use one of '
                     f'{list(MULTI_LABEL_LOSSES)} exactly for multi-label data')


def train_and_evaluate(config, workdir: str, *, devices: Optional[Sequence[jax.Device]] = None,
                       allow_config_change: Sequence[str] = ()) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its checkpoints), returns the final metrics.

  Args:
    config: the experiment ConfigDict (configs/*.py); validated before anything is compiled.
    workdir: checkpoints/, TensorBoard events and summary.json go here.
    devices: the mesh's devices (default: all devices of all processes).
    allow_config_change: fields that may differ from the config of the workdir's checkpoints
      (besides checkpoints.SAFE_TO_CHANGE), e.g. ['num_train_steps'].

  Raises:
    fields.ConfigError: a bad config field (before anything is compiled) or a changed config.
    preemption.Preempted: on SIGTERM, after saving the checkpoint of the current step.

  Returns:
    {'step', 'eval_loss', 'eval_accuracy', 'eval_top5_accuracy', 'eval_num_examples',
     'train_loss', ...} of the final step.
  """
  start_time = time.time()
  config_dict = experiment_lib.as_dict(config)
  with fields.config_errors():
    experiment = experiment_lib.from_config(config)
    model_cfg, data_cfg = experiment.model, experiment.data
    info = data.dataset_info(data_cfg)
    mesh = sharding.create_mesh(devices, experiment.train.mesh_shape)
    cfg = experiment.train.for_run(num_train_examples=info.num_train, num_devices=mesh.size,
                                   num_processes=jax.process_count())
    _check_dataset(experiment, info)
    data.check_run(data_cfg, batch_size=cfg.batch_size, process_count=jax.process_count())
    pretrained.check_path(experiment.init)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  eval_input = data.eval_input(data_cfg, batch_size=cfg.eval_batch_size, **process)
  fewshot_input = (fewshot.FewShotEvaluator(experiment.fewshot, data_cfg, mesh,
                                            sharding.batch_sharding(mesh))
                   if experiment.fewshot.every_steps else None)
  map_logger = None
  if cfg.log_attention_maps:
    # matplotlib is imported only by runs that draw maps.
    from tools import attention_maps  # pylint: disable=g-import-not-at-top
    map_logger = attention_maps.TensorBoardMaps(experiment, cfg.log_attention_maps)

  logging.info('Config:\n%s', config)
  model = build_model(model_cfg)
  learning_rate_fn = optim.learning_rate_fn(cfg)
  tx = optim.create_optimizer(cfg, learning_rate_fn)
  init_rng, dropout_rng = sharding.replicated_keys(cfg.seed, mesh)

  abstract_state, state_shardings = sharding.abstract_train_state(
      init_rng, model, tx, model_cfg.input_shape, mesh, sharding.rules_of(cfg))
  checkpoints.check_writable(workdir, sum(x.size * x.dtype.itemsize
                                          for x in jax.tree.leaves(abstract_state)))
  manager = checkpoints.manager(workdir, cfg.keep_checkpoints)
  state, manager, restored = checkpoints.restore_latest(manager, abstract_state, config_dict,
                                                        allow_config_change)
  run = restored.get('run', {})  # What the reports need from the processes before this one.
  if state is None:
    state, _ = sharding.create_train_state(init_rng, model, tx, model_cfg.input_shape, mesh,
                                           sharding.rules_of(cfg))
    if experiment.init.path:
      loaded = pretrained.init_from(sharding.to_host(state.params), experiment.init, model_cfg)
      state = state.replace(params=sharding.like(loaded, state.params))
  step = int(state.step)

  gflops, num_params = count_flops_and_params(model_cfg)
  logger.log_setup(experiment, cfg, mesh, info, state, gflops, num_params)
  writer = logger.ResumedWriter(metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0), workdir)
  p_train_step = compile_train_step(model, tx, cfg, mesh, state_shardings)
  p_eval_step = compile_eval_step(model, cfg, mesh, state_shardings.params, data_cfg.is_video)
  features = fewshot.compile_features(model, state_shardings.params, sharding.batch_sharding(mesh))

  hooks = [periodic_actions.ReportProgress(num_train_steps=cfg.num_train_steps, writer=writer)]
  if cfg.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=cfg.profile_steps))
  meter = throughput.Meter(mesh.devices.flat, dtype=model_cfg.dtype, global_batch=cfg.batch_size,
                           core_hours=run.get('core_hours', 0.0), start_time=start_time)
  # XLA counts a scan's body once: an accumulating step is counted with the whole-batch one.
  accumulation_free_step = (compile_train_step(model, tx, dataclasses.replace(
      cfg, grad_accum_steps=1), mesh, state_shardings) if cfg.grad_accum_steps > 1 else None)
  train_logger = logger.TrainLogger(
      writer, log_every_steps=cfg.log_every_steps, num_train_steps=cfg.num_train_steps,
      learning_rate_fn=learning_rate_fn, global_batch=cfg.batch_size, meter=meter)
  train_logger.last = dict(run.get('train_metrics', {}))
  wall_time = lambda: run.get('wall_time_s', 0.0) + time.time() - start_time

  def save():
    train_logger.flush()  # Never save a state that followed a NaN loss.
    checkpoints.save(manager, step, state, config=config_dict,
                     run={'train_metrics': train_logger.last, 'wall_time_s': wall_time(),
                          'core_hours': meter.core_hours()})
    writer.flush()  # Everything logged up to a checkpoint is on disk with it.
    return step

  def run_eval():
    train_logger.flush()
    with hooks[0].timed('eval'):
      metrics = evaluate(p_eval_step, state.params, eval_input, mesh)
    writer.write_scalars(step, {f'eval_{k}': v for k, v in metrics.items()})
    if map_logger:  # Every process computes (the params are global arrays); process 0 writes.
      images, token_stats = map_logger(state.params)
      writer.write_images(step, images)
      writer.write_scalars(step, token_stats)
    return metrics

  eval_metrics, fewshot_metrics, saved = {}, {}, None
  watcher = preemption.Watcher(manager).__enter__()
  batches = data.Prefetcher(
      data.train_iterator(data_cfg, seed=cfg.seed, batch_size=cfg.batch_size, start_step=step,
                          **process), sharding.batch_sharding(mesh))
  if step:
    logging.info('Resuming at step %d.', step)
  try:
    while step < cfg.num_train_steps:
      batch = next(batches)
      meter.count_flops(p_train_step, state, batch, dropout_rng,  # Once, with the compilation.
                        accumulation_free_step=accumulation_free_step)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = p_train_step(state, batch, dropout_rng)
      step += 1
      train_logger.add(step, step_metrics)
      checkpoints.check_errors(manager, saved)
      for hook in hooks:
        hook(step)
      last = step == cfg.num_train_steps
      if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and not last:
        eval_metrics = run_eval()
      if fewshot_input and step % experiment.fewshot.every_steps == 0:
        train_logger.flush()
        fewshot_metrics = fewshot_input(features, state.params)  # Frozen pre-logit features.
        writer.write_scalars(step, fewshot_metrics)
      preempted = watcher.stop_requested(step)
      if last or preempted or (cfg.checkpoint_every_steps and
                               step % cfg.checkpoint_every_steps == 0):
        saved = save()
      if preempted:
        manager.wait_until_finished()
        raise preemption.Preempted(step)
    eval_metrics = run_eval()
  finally:
    watcher.__exit__()
    batches.close()
    checkpoints.close(manager)
    writer.flush()

  final = {'step': step, **{f'eval_{k}': v for k, v in eval_metrics.items()},
           **fewshot_metrics, **train_logger.last}
  logger.write_summary(workdir, final, steps=step, num_train_steps=cfg.num_train_steps,
                       wall_time_s=wall_time(), gflops=gflops,
                       num_params=num_params, num_devices=mesh.size,
                       num_processes=jax.process_count(), throughput=meter.summary(),
                       config=config_dict)
  logging.info('Final metrics at step %d: %s', step, final)
  return final
