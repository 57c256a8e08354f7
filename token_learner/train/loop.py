"""The training loop: `train_and_evaluate(config, workdir)`, resumable, with its evaluators.

Read top to bottom: the config is validated (every section, the data, the evaluators, the
workdir) before anything is compiled; `setup.build` turns it into a Run (model, optimizer,
shardings, the jitted `train_step`); the loop then steps, logs one step late, runs the evaluators
of `config.evals` on their cadence and at the end, and checkpoints.

Resuming is exact: the state (params, optimizer state, step) is checkpointed with orbax, per-step
randomness is `fold_in(base_rng, step)`, and the input restarts at batch `step`, so a run killed
at any moment and restarted ends with the same parameters, bit for bit, as an uninterrupted run.
"""
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax

from token_learner import data
from token_learner import evals as evals_lib
from token_learner import experiment as experiment_lib
from token_learner import fields
from token_learner import pretrained
from token_learner.flops import count_flops_and_params
from token_learner.train import checkpoints
from token_learner.train import logger
from token_learner.train import preemption
from token_learner.train import setup
from token_learner.train import sharding
from token_learner.train import throughput
from token_learner.train import workdir_lock
from token_learner.train.config import MULTI_LABEL_LOSSES


def check_dataset(experiment, info: data.DatasetInfo):
  """The model head and the loss must fit the data (checked before anything is compiled)."""
  if info.num_classes != experiment.model.num_classes:
    raise ValueError(f'config.model.num_classes={experiment.model.num_classes} but dataset '
                     f'{experiment.data.name!r} has {info.num_classes} classes')
  if info.multi_label != experiment.train.multi_label:
    raise ValueError(f'config.loss={experiment.train.loss!r} does not fit the dataset '
                     f'(multi_label={info.multi_label}); use one of '
                     f'{list(MULTI_LABEL_LOSSES)} exactly for multi-label data')


def train_and_evaluate(config, workdir: str, *, devices: Optional[Sequence[jax.Device]] = None,
                       allow_config_change: Sequence[str] = (),
                       build: Callable[..., setup.Run] = setup.build,
                       train_input: Callable[..., Any] = data.train_iterator,
                       writer=None, allow_unverified_checkpoint: bool = False) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its checkpoints), returns the final metrics.

  Args:
    config: the experiment ConfigDict (configs/*.py); validated before anything is compiled.
    workdir: checkpoints/, TensorBoard events and summary.json go here.
    devices: the mesh's devices (default: all devices of all processes).
    allow_config_change: fields that may differ from the config of the workdir's checkpoints
      (besides checkpoints.SAFE_TO_CHANGE), e.g. ['num_train_steps'].
    build: the run builder (`setup.build`; a test passes one that wraps the train step).
    train_input: `data.train_iterator` or a function with its signature (a test's input).
    writer: a clu MetricWriter (default: TensorBoard in `workdir`, process 0 only).
    allow_unverified_checkpoint: restore a checkpoint without the metadata to verify it
      (checked finite only); by default such a step is moved aside like a corrupt one.

  Raises:
    fields.ConfigError: a bad config field (before anything is compiled) or a changed config.
    workdir_lock.WorkdirBusyError: another live run holds the workdir (before compiling).
    preemption.Preempted: on SIGTERM, after saving the checkpoint of the current step.

  Returns:
    {'step', '<evaluator>_<metric>' of every evaluator (e.g. 'eval_accuracy'), 'train_loss',
     ...} of the final step.
  """
  start_time = time.time()
  config_dict = experiment_lib.as_dict(config)
  with fields.config_errors():
    experiment = experiment_lib.from_config(config)
    info = data.dataset_info(experiment.data)
    mesh = setup.create_mesh(experiment, devices)
    check_dataset(experiment, info)
    data.check_run(experiment.data, batch_size=experiment.train.batch_size,
                   process_count=jax.process_count())
    pretrained.check_path(experiment.init)
    checked_evals = evals_lib.check(experiment, data.dataset_info)
  with workdir_lock.acquire(workdir):  # One run per workdir, before anything is compiled.
    with fields.config_errors():
      run = build(experiment, mesh=mesh, num_train_examples=info.num_train)
      pretrained.check_npz(experiment.init, run.abstract_state.params)  # Nothing compiled yet.
    return _train(config, workdir, config_dict, experiment, info, mesh, run, checked_evals,
                  allow_config_change, train_input, writer, start_time,
                  allow_unverified_checkpoint)


def _train(config, workdir, config_dict, experiment, info, mesh, run, checked_evals,
           allow_config_change, train_input, writer, start_time, allow_unverified_checkpoint):
  """train_and_evaluate once its config is checked and the workdir's lock is held."""
  cfg = run.cfg
  checkpoints.check_writable(workdir, sum(x.size * x.dtype.itemsize
                                          for x in jax.tree.leaves(run.abstract_state)))
  logging.info('Config:\n%s', config)
  evaluators = evals_lib.build(run, checked_evals)

  manager = checkpoints.manager(workdir, cfg.keep_checkpoints)
  state, manager, restored = checkpoints.restore_latest(
      manager, run.abstract_state, config_dict, allow_config_change,
      allow_unverified=allow_unverified_checkpoint)
  before = restored.get('run', {})  # What the reports need from the processes before this one.
  if state is None:
    # A new run (e.g. checkpoints/ deleted to start over): the event files there are another
    # run's, whose steps ResumedWriter would otherwise skip.
    logger.set_aside_events(workdir)
    state = run.init_state()
    if experiment.init.path:
      loaded = pretrained.init_from(sharding.to_host(state.params), experiment.init,
                                    experiment.model)
      state = state.replace(params=sharding.like(loaded, state.params))
  step = int(state.step)

  gflops, num_params = count_flops_and_params(experiment.model)
  logger.log_setup(experiment, cfg, mesh, info, state, gflops, num_params)
  writer = logger.ResumedWriter(writer or metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0), workdir)
  hooks = [periodic_actions.ReportProgress(num_train_steps=cfg.num_train_steps, writer=writer)]
  if cfg.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=cfg.profile_steps))
  meter = throughput.Meter(mesh.devices.flat, dtype=experiment.model.dtype,
                           global_batch=cfg.batch_size,
                           core_hours=before.get('core_hours', 0.0), start_time=start_time)
  train_logger = logger.TrainLogger(
      writer, log_every_steps=cfg.log_every_steps, num_train_steps=cfg.num_train_steps,
      learning_rate_fn=run.learning_rate_fn, global_batch=cfg.batch_size, meter=meter)
  train_logger.last = dict(before.get('train_metrics', {}))
  wall_time = lambda: before.get('wall_time_s', 0.0) + time.time() - start_time

  def save():
    train_logger.flush()  # Never save a state that followed a NaN loss.
    checkpoints.save(manager, step, state, config=config_dict,
                     run={'train_metrics': train_logger.last, 'wall_time_s': wall_time(),
                          'core_hours': meter.core_hours()})
    writer.flush()  # Everything logged up to a checkpoint is on disk with it.
    return step

  def run_evals(last: bool) -> Dict[str, Any]:
    results = {}
    for evaluator in evaluators:
      if not evals_lib.due(evaluator, step, last):
        continue
      train_logger.flush()
      with hooks[0].timed(evaluator.name):
        scalars, images = evaluator(state.params)
      # Every process evaluates (the params are global arrays); process 0 writes.
      scalars = evals_lib.prefixed(evaluator.name, scalars)
      writer.write_scalars(step, scalars)
      if images:
        writer.write_images(step, evals_lib.prefixed(evaluator.name, images))
      results.update(scalars)
    return results

  eval_metrics, saved = {}, None
  watcher = preemption.Watcher(manager).__enter__()
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  batches = data.Prefetcher(
      train_input(experiment.data, seed=cfg.seed, batch_size=cfg.batch_size, start_step=step,
                  **process), run.batch_sharding)
  if step:
    logging.info('Resuming at step %d.', step)
  try:
    while step < cfg.num_train_steps:
      batch = next(batches)
      meter.count_run_flops(run, batch)  # Once: model FLOPs of the step (MFU), not compiled.
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = run.train_step(state, batch, run.dropout_rng)
      step += 1
      train_logger.add(step, step_metrics)
      checkpoints.check_errors(manager, saved)
      for hook in hooks:
        hook(step)
      last = step == cfg.num_train_steps
      if not last:
        eval_metrics.update(run_evals(last=False))
      preempted = watcher.stop_requested(step)
      if last or preempted or (cfg.checkpoint_every_steps and
                               step % cfg.checkpoint_every_steps == 0):
        saved = save()
      if preempted:
        manager.wait_until_finished()
        raise preemption.Preempted(step)
    eval_metrics.update(run_evals(last=True))
  finally:
    watcher.__exit__()
    batches.close()
    checkpoints.close(manager)
    _flush_after(writer)

  final = {'step': step, **eval_metrics, **train_logger.last}
  logger.write_summary(workdir, final, steps=step, num_train_steps=cfg.num_train_steps,
                       wall_time_s=wall_time(), gflops=gflops,
                       num_params=num_params, num_devices=mesh.size,
                       num_processes=jax.process_count(), throughput=meter.summary(),
                       config=config_dict)
  logging.info('Final metrics at step %d: %s', step, final)
  return final


def _flush_after(writer):
  """Flushes the metrics at the end of training; after a failure (in a `finally`), a failed
  flush is only logged, so the original error is the one raised."""
  if sys.exc_info()[0] is None:
    writer.flush()
    return
  try:
    writer.flush()
  except OSError as e:
    logging.error('%s', e)
