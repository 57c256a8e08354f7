"""Training and evaluation of the image / video classifiers: `train_and_evaluate(config, workdir)`.

One jitted, pure `train_step(state, batch, rng) -> (state, metrics)` runs over a 1-D device mesh
(axis 'data') with explicit in/out shardings and donated state; the same code runs on one device,
on 8 simulated CPU devices and on several processes (global batches are assembled from each
process's rows with `jax.make_array_from_process_local_data`). Parameters are data parallel
(replicated) unless `config.sharding_rules` shards them FSDP-style.

Resuming is exact: the state (params, optimizer state, step) is checkpointed with orbax, per-step
randomness is `fold_in(base_rng, step)`, and the input pipeline restarts at batch `step`, so a run
killed at any moment and restarted ends with the same parameters, bit for bit, as an
uninterrupted run.

Config fields read here (defaults in `DEFAULTS` for fields a config may omit):
  seed, batch_size (global), eval_batch_size (global), num_train_steps (or num_epochs),
  optimizer ('adamw' | 'adam' | 'momentum' | 'sgd'), momentum (of 'momentum'), learning_rate,
  lr_schedule ('cosine' | 'linear'), warmup_steps, weight_decay, grad_clip_norm, label_smoothing, mixup_alpha,
  grad_accum_steps, loss ('softmax_xent' | 'sigmoid_xent'), eval_average ('logits' | 'probs',
  how a video's eval views are merged), log_every_steps, eval_every_steps,
  checkpoint_every_steps, keep_checkpoints, profile_steps, sharding_rules, init_from (see
  token_learner.pretrained), plus `config.model` (token_learner.ModelConfig) and
  `config.dataset` (input_pipeline, or video_pipeline for video datasets).
"""
import dataclasses
import functools
import json
import math
import os
import queue
import re
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
from clu import metric_writers
from clu import metrics
from clu import parameter_overview
from clu import periodic_actions
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from configs import common
import input_pipeline
from token_learner import ModelConfig, build_model
from token_learner import metrics as video_metrics
from token_learner import pretrained
from token_learner.flops import count_flops_and_params
import video_pipeline

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding

OPTIMIZERS = ('adamw', 'adam', 'momentum', 'sgd')
LR_SCHEDULES = ('cosine', 'linear')

# Trainer fields a config may leave out, with their defaults (one table, in configs/common.py).
DEFAULTS = common.TRAINER_DEFAULTS
# Top-level fields that other parts of the system own.
OTHER_FIELDS = ('seed', 'batch_size', 'eval_batch_size', 'model', 'dataset', 'init_from')


# ----------------------------------------------------------------------------------------------
# Typed trainer config: the one boundary between the ConfigDict and the training loop.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Validated trainer settings (see the module docstring for each field)."""
  seed: int
  batch_size: int
  eval_batch_size: int
  num_train_steps: int
  num_classes: int
  optimizer: str
  momentum: float
  learning_rate: float
  lr_schedule: str
  warmup_steps: int
  weight_decay: float
  grad_clip_norm: float
  label_smoothing: float
  mixup_alpha: float
  grad_accum_steps: int
  loss: str
  eval_average: str
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  profile_steps: int
  sharding_rules: Tuple[Tuple[str, Tuple[Any, ...]], ...]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, num_train_examples: int,
                  num_classes: int, num_devices: int) -> 'TrainConfig':
    """Validates the trainer fields of `config`; raises ValueError naming the field."""
    known = set(DEFAULTS) | set(OTHER_FIELDS)
    unknown = sorted(set(config.keys()) - known)
    if unknown:
      raise ValueError(f'config.{unknown[0]} is not a field the trainer knows (known: '
                       f'{sorted(known)})')
    get = lambda name: config.get(name, DEFAULTS.get(name))

    def integer(name, minimum, value=None):
      value = get(name) if value is None else value
      if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f'config.{name}={value!r} must be an integer >= {minimum}')
      return value

    def number(name, minimum=0.0, maximum=math.inf):
      value = get(name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          minimum <= value <= maximum):
        raise ValueError(f'config.{name}={value!r} must be a number in [{minimum}, {maximum}]')
      return float(value)

    def choice(name, allowed):
      if get(name) not in allowed:
        raise ValueError(f'config.{name}={get(name)!r} is not one of {list(allowed)}')
      return get(name)

    seed = integer('seed', 0)
    batch_size = integer('batch_size', 1)
    eval_batch_size = integer('eval_batch_size', 1)
    num_processes = jax.process_count()
    for name, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
      if value % num_devices or value % num_processes:
        raise ValueError(f'config.{name}={value} must be divisible by the number of devices '
                         f'({num_devices}) and processes ({num_processes})')
    accum = integer('grad_accum_steps', 1)
    if batch_size % accum or (batch_size // accum) % num_devices:
      raise ValueError(f'config.grad_accum_steps={accum}: config.batch_size={batch_size} must '
                       f'split into {accum} micro-batches divisible by {num_devices} devices')

    if get('num_train_steps') is not None:
      steps = integer('num_train_steps', 1)
    elif get('num_epochs') is not None:
      epochs = number('num_epochs', 1e-9)
      steps = max(1, math.ceil(epochs * num_train_examples / batch_size))
    else:
      raise ValueError('config.num_train_steps or config.num_epochs must be set')

    rules = []
    for rule in get('sharding_rules') or ():
      if (len(rule) != 2 or not isinstance(rule[0], str)
          or not isinstance(rule[1], (tuple, list))):
        raise ValueError(f'config.sharding_rules entry {rule!r} must be (regex, partition spec '
                         "tuple), e.g. ('.*Dense_.*/kernel', (None, 'data'))")
      try:
        re.compile(rule[0])
      except re.error as e:
        raise ValueError(f'config.sharding_rules regex {rule[0]!r}: {e}') from None
      rules.append((rule[0], tuple(tuple(a) if isinstance(a, list) else a for a in rule[1])))

    warmup = integer('warmup_steps', 0)
    if warmup > steps:
      raise ValueError(f'config.warmup_steps={warmup} exceeds the {steps} training steps')
    return cls(
        seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
        num_train_steps=steps, num_classes=num_classes,
        optimizer=choice('optimizer', OPTIMIZERS),
        momentum=number('momentum', 0.0, 1.0),
        learning_rate=number('learning_rate', 0.0),
        lr_schedule=choice('lr_schedule', LR_SCHEDULES),
        warmup_steps=warmup,
        weight_decay=number('weight_decay'),
        grad_clip_norm=number('grad_clip_norm'),
        label_smoothing=number('label_smoothing', 0.0, 1.0),
        mixup_alpha=number('mixup_alpha'),
        grad_accum_steps=accum,
        loss=choice('loss', tuple(LOSSES)),
        eval_average=choice('eval_average', video_metrics.AVERAGES),
        log_every_steps=integer('log_every_steps', 1),
        eval_every_steps=integer('eval_every_steps', 0),
        checkpoint_every_steps=integer('checkpoint_every_steps', 0),
        keep_checkpoints=integer('keep_checkpoints', 1),
        profile_steps=integer('profile_steps', 0),
        sharding_rules=tuple(rules))


# ----------------------------------------------------------------------------------------------
# Losses and metrics. A task is an entry in LOSSES (per-example training loss on dense targets)
# and EVAL_METRICS (a clu Collection built from logits, labels, loss and mask); a loss in
# MULTI_LABEL_LOSSES also gets the mAP over the eval set.
# ----------------------------------------------------------------------------------------------
def softmax_xent(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy. logits, targets: [B, C] -> [B]."""
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


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


@flax.struct.dataclass
class ClassificationMetrics(metrics.Collection):
  loss: MeanLoss
  accuracy: Top1Accuracy
  top5_accuracy: Top5Accuracy


LOSSES: Dict[str, Callable[..., jax.Array]] = {
    'softmax_xent': softmax_xent,
    'sigmoid_xent': video_metrics.sigmoid_xent,
}
EVAL_METRICS: Dict[str, type] = {
    'softmax_xent': ClassificationMetrics,
    'sigmoid_xent': ClassificationMetrics,
}
MULTI_LABEL_LOSSES = ('sigmoid_xent',)


# ----------------------------------------------------------------------------------------------
# Optimizer, state and sharding.
# ----------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def create_learning_rate_fn(cfg: TrainConfig) -> optax.Schedule:
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


def _decay_mask(params):
  # Weight decay on matrices / kernels only, not on biases, norm scales or embeddings' biases.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(cfg: TrainConfig, learning_rate_fn: optax.Schedule):
  """Clipping + adamw / adam / momentum / sgd. For adam/momentum/sgd weight decay is L2."""
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.optimizer == 'adamw':
    parts.append(optax.adamw(learning_rate_fn, weight_decay=cfg.weight_decay, mask=_decay_mask))
  else:
    if cfg.weight_decay > 0:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask))
    parts.append({
        'adam': lambda: optax.adam(learning_rate_fn),
        'momentum': lambda: optax.sgd(learning_rate_fn, momentum=cfg.momentum),
        'sgd': lambda: optax.sgd(learning_rate_fn),
    }[cfg.optimizer]())
  return optax.chain(*parts)


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  if jax.process_count() > 1 and len(devices) != jax.device_count():
    raise ValueError('a multi-process run must use all devices')
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def replicated_keys(seed: int, mesh: jax.sharding.Mesh):
  """(init_rng, dropout_rng) from `seed`, as global arrays replicated over the mesh."""
  keys = lambda: tuple(jax.random.split(jax.random.key(seed)))
  return jax.jit(keys, out_shardings=NamedSharding(mesh, P()))()


def _path_str(path) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def partition_spec(path: str, shape: Tuple[int, ...], mesh: jax.sharding.Mesh,
                   rules: Sequence[Tuple[str, Tuple[Any, ...]]]) -> P:
  """The first rule whose regex is found in `path`, if its axes divide `shape`; else replicated."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      if len(spec) > len(shape):
        return P()
      for dim, axes in zip(shape, spec):
        axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        if dim % math.prod(mesh.shape[a] for a in axes):
          return P()
      return P(*spec)
  return P()


def tree_shardings(tree, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) from `rules`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, partition_spec(_path_str(path), x.shape, mesh, rules)),
      tree)


def _init_fn(rng, *, model, tx, input_shape):
  params_rng, dropout_rng = jax.random.split(rng)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  params = model.init({'params': params_rng, 'dropout': dropout_rng}, x, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_train_state(rng, model, tx, input_shape, mesh, rules=()):
  """Initialises the state directly in its shards; returns (state, state_shardings)."""
  init = functools.partial(_init_fn, model=model, tx=tx, input_shape=tuple(input_shape))
  abstract = jax.eval_shape(init, rng)
  shardings = tree_shardings(abstract, mesh, rules)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def abstract_train_state(rng, model, tx, input_shape, mesh, rules=()):
  """ShapeDtypeStructs (with shardings) of the state, e.g. as a restore target."""
  init = functools.partial(_init_fn, model=model, tx=tx, input_shape=tuple(input_shape))
  abstract = jax.eval_shape(init, rng)
  shardings = tree_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings


# ----------------------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------------------
def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *, model, tx,
               cfg: TrainConfig) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer update on a global batch {'inputs': [B, ...], 'labels': [B]}.

  `rng` is the run's base key; the step's key is `fold_in(rng, state.step)`, so resuming needs
  no RNG state. With `grad_accum_steps` = k the batch is split into k micro-batches whose mean
  gradient (a scan) equals the gradient of the whole batch.
  """
  rng = jax.random.fold_in(rng, state.step)
  mixup_rng, dropout_rng = jax.random.split(rng)
  inputs = batch['inputs']
  targets = dense_targets(batch['labels'], cfg.num_classes)
  if cfg.mixup_alpha > 0:
    inputs, targets = mixup(mixup_rng, inputs, targets, cfg.mixup_alpha)
  loss_per_example = functools.partial(LOSSES[cfg.loss], label_smoothing=cfg.label_smoothing)

  def loss_fn(params, x, y, dropout_key):
    logits, _ = model.apply({'params': params}, x, train=True, rngs={'dropout': dropout_key})
    logits = logits.astype(jnp.float32)
    return jnp.mean(loss_per_example(logits, y)), jnp.sum(top1_hits(logits, y))

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
  metrics_ = {'loss': loss, 'accuracy': correct / inputs.shape[0],
              'grad_norm': optax.global_norm(grads)}
  return new_state, metrics_


def eval_step(params, batch: Dict[str, jax.Array], eval_metrics, *, model, cfg: TrainConfig,
              example_ndim: int):
  """Adds one global batch {'inputs', 'labels', 'mask'} to the running `eval_metrics`.

  Video eval batches carry V views per video, inputs [B, V, T, H, W, 3]: the model sees every
  view and the V predictions are merged (`config.eval_average`) before any metric.

  Returns:
    (eval_metrics, scores): scores [B, K] (the merged predictions) for multi-label losses, whose
    mAP ranks over the whole eval set, else None.
  """
  inputs = batch['inputs']
  multi_view = inputs.ndim == example_ndim + 2
  if multi_view:
    b, v = inputs.shape[:2]
    inputs = inputs.reshape(b * v, *inputs.shape[2:])
  logits, _ = model.apply({'params': params}, inputs, train=False)
  logits = logits.astype(jnp.float32)
  multi_label = cfg.loss in MULTI_LABEL_LOSSES
  scores = logits
  if multi_view:
    logits = logits.reshape(b, v, -1)
    scores = video_metrics.average_views(logits, cfg.eval_average, multi_label)
    logits = video_metrics.average_views(logits, 'logits')
  targets = dense_targets(batch['labels'], cfg.num_classes)
  loss = LOSSES[cfg.loss](logits, targets)
  update = EVAL_METRICS[cfg.loss].single_from_model_output(
      logits=scores, targets=targets, loss=loss, mask=batch['mask'])
  return eval_metrics.merge(update), (scores if multi_label else None)


def compile_train_step(model, tx, cfg: TrainConfig, mesh, state_shardings):
  batch_sharding = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  return jax.jit(functools.partial(train_step, model=model, tx=tx, cfg=cfg),
                 in_shardings=(state_shardings, batch_sharding, replicated),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=0)


def compile_eval_step(model, cfg: TrainConfig, mesh, params_shardings, example_ndim: int):
  replicated = NamedSharding(mesh, P())
  return jax.jit(functools.partial(eval_step, model=model, cfg=cfg, example_ndim=example_ndim),
                 in_shardings=(params_shardings, NamedSharding(mesh, P('data')), replicated),
                 out_shardings=replicated)


# ----------------------------------------------------------------------------------------------
# Input: per-process numpy batches -> global arrays, one batch ahead in a background thread.
# ----------------------------------------------------------------------------------------------
def data_pipeline(config):
  """The input module serving `config.dataset`: video_pipeline or input_pipeline."""
  return video_pipeline if video_pipeline.is_video_dataset(config) else input_pipeline


def make_global_batch(local_batch: Dict[str, np.ndarray], sharding: NamedSharding):
  """Assembles the process-local rows of every process into one global jax.Array per key."""
  def to_global(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(to_global, local_batch)


class Prefetcher:
  """Iterates `iterator` in a background thread, putting `size` batches on device ahead."""
  _END = object()

  def __init__(self, iterator, sharding, size: int = 2):
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(iterator, sharding), daemon=True)
    self._thread.start()

  def _work(self, iterator, sharding):
    try:
      for batch in iterator:
        if self._stop.is_set():
          return
        self._queue.put(make_global_batch(batch, sharding))
      self._queue.put(self._END)
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised in the consumer.
      self._queue.put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is self._END:
      self._queue.put(item)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    while self._thread.is_alive():  # Unblock a pending put().
      try:
        self._queue.get(timeout=0.1)
      except queue.Empty:
        pass


def evaluate(eval_step_fn, params, config, mesh, cfg: TrainConfig) -> Dict[str, float]:
  """Runs the whole eval split; padding (mask 0) is excluded, every example counted once."""
  sharding = NamedSharding(mesh, P('data'))
  eval_metrics = jax.jit(EVAL_METRICS[cfg.loss].empty, out_shardings=NamedSharding(mesh, P()))()
  accumulator = video_metrics.MultiLabelAccumulator()
  batches = Prefetcher(data_pipeline(config).create_eval_iterator(
      config, process_index=jax.process_index(), process_count=jax.process_count()), sharding)
  try:
    for batch in batches:
      eval_metrics, scores = eval_step_fn(params, batch, eval_metrics)
      if scores is not None:  # Replicated, like the labels gathered here.
        labels = multihost_utils.process_allgather(batch['labels'], tiled=True)
        mask = multihost_utils.process_allgather(batch['mask'], tiled=True)
        accumulator.update(np.asarray(scores), np.asarray(labels), mask)
  finally:
    batches.close()
  eval_metrics = jax.device_get(eval_metrics)  # Replicated: every process holds the total.
  result = {k: float(v) for k, v in eval_metrics.compute().items()}
  result['num_examples'] = int(eval_metrics.accuracy.count)
  if accumulator.count:
    result['map'] = accumulator.result()
  return result


# ----------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------
def create_checkpoint_manager(workdir: str, cfg: TrainConfig) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state):
  """Restores the newest readable checkpoint into the shardings of `abstract_state`.

  Unreadable newer checkpoints (a step directory missing files, or with garbage) are skipped
  with a warning and moved aside as `<step>.corrupt`, so the run continues from the previous
  one. If checkpoints exist but none is readable (e.g. the config changed the model) this raises
  instead of silently starting over.

  Returns:
    (state or None, manager): the manager is re-created if directories were moved.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except  # Any read error means unusable.
      logging.warning('Checkpoint at step %d is unreadable, trying the previous one: %s', step,
                      e)
      failures.append((step, e))
      continue
    if failures:
      directory = manager.directory
      manager.close()
      if jax.process_index() == 0:
        for bad_step, _ in failures:
          os.replace(os.path.join(directory, str(bad_step)),
                     os.path.join(directory, f'{bad_step}.corrupt.{int(time.time())}'))
      multihost_utils.sync_global_devices('trainer:corrupt_checkpoints_moved')
      manager = ocp.CheckpointManager(directory, options=manager._options)  # pylint: disable=protected-access
    logging.info('Restored checkpoint at step %d.', step)
    return state, manager
  if failures:
    raise RuntimeError(f'None of the checkpoints {steps} in {manager.directory} can be restored '
                       f'into this config (last error: {failures[-1][1]}). Use a new workdir or '
                       'remove the checkpoints.')
  return None, manager


def load_pretrained(params, init_cfg, model_cfg: ModelConfig):
  """`params` (sharded) with the weights of `config.init_from` (token_learner.pretrained)."""
  host_params = multihost_utils.process_allgather(params, tiled=True)
  host_params = pretrained.init_from(host_params, init_cfg, model_cfg)
  return jax.tree.map(
      lambda x, old: jax.make_array_from_callback(
          old.shape, old.sharding, lambda index, x=x: np.asarray(x, old.dtype)[index]),
      host_params, params)


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------
class _TrainLogger:
  """Collects per-step train metrics one step late, checks them, writes means at log steps."""

  def __init__(self, writer, cfg: TrainConfig, learning_rate_fn, global_batch: int):
    self._writer, self._cfg, self._lr_fn = writer, cfg, learning_rate_fn
    self._global_batch = global_batch
    self._pending = None
    self._window = []
    self._window_start = (time.time(), None)
    self.last = {}

  def add(self, step: int, step_metrics):
    """Registers the (device) metrics of `step`; checks and logs the previous step's."""
    self.flush()
    self._pending = (step, step_metrics)

  def flush(self):
    """Blocks on the pending step's metrics; raises FloatingPointError on NaN / Inf."""
    if self._pending is None:
      return
    step, step_metrics = self._pending
    self._pending = None
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    for name in ('loss', 'grad_norm'):
      if not math.isfinite(values[name]):
        raise FloatingPointError(f'Training {name} is {values[name]} at step {step}; stopping. '
                                 'The last checkpoint before it is left intact.')
    if self._window_start[1] is None:
      self._window_start = (self._window_start[0], step - 1)
    self._window.append(values)
    if step % self._cfg.log_every_steps == 0 or step == self._cfg.num_train_steps:
      self._write(step)

  def _write(self, step: int):
    start_time, start_step = self._window_start
    now = time.time()
    steps_per_sec = (step - start_step) / max(now - start_time, 1e-9)
    means = {k: float(np.mean([w[k] for w in self._window])) for k in self._window[0]}
    scalars = {f'train_{k}': v for k, v in means.items()}
    scalars.update(
        learning_rate=float(self._lr_fn(step - 1)),
        steps_per_sec=steps_per_sec,
        examples_per_sec=steps_per_sec * self._global_batch,
        eta_minutes=(self._cfg.num_train_steps - step) / max(steps_per_sec, 1e-9) / 60)
    self._writer.write_scalars(step, scalars)
    self.last = scalars
    self._window = []
    self._window_start = (now, step)


def _log_setup(config, model_cfg, cfg, mesh, info, state, gflops, num_params):
  logging.info('Processes: %d (this is %d); devices: %d global, %d local; mesh %s over %s.',
               jax.process_count(), jax.process_index(), jax.device_count(),
               jax.local_device_count(), dict(mesh.shape), mesh.devices.tolist())
  logging.info('Dataset %s: %d train / %d eval examples, %d classes, image shape %s.',
               config.dataset.name, info.num_train, info.num_eval, info.num_classes,
               tuple(info.image_shape))
  logging.info('Model %s %s: %.4f GFLOPs, %d parameters; %d train steps of batch %d.',
               model_cfg.name, model_cfg.variant, gflops, num_params, cfg.num_train_steps,
               cfg.batch_size)
  parameter_overview.log_parameter_overview(
      state.params, include_stats=jax.process_count() == 1, jax_logging_process=0)
  flat, _ = jax.tree_util.tree_flatten_with_path(state.params)
  sharded = {_path_str(path): str(x.sharding.spec) for path, x in flat
             if x.sharding.spec != P()}
  if sharded:
    logging.info('Sharded parameters: %s', sharded)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its checkpoints), returns the final metrics.

  Args:
    config: the experiment (see module docstring); validated before anything is compiled.
    workdir: checkpoints/, TensorBoard events and summary.json go here.
    devices: the mesh's devices (default: all devices of all processes).

  Returns:
    {'step', 'eval_loss', 'eval_accuracy', 'eval_top5_accuracy', 'eval_num_examples',
     'train_loss', ...} of the final step.
  """
  start_time = time.time()
  model_cfg = ModelConfig.from_config(config)
  info = data_pipeline(config).get_dataset_info(config)
  mesh = create_mesh(devices)
  cfg = TrainConfig.from_config(config, num_train_examples=info.num_train,
                                num_classes=model_cfg.num_classes, num_devices=mesh.size)
  if info.num_classes != model_cfg.num_classes:
    raise ValueError(f'config.model.num_classes={model_cfg.num_classes} but dataset '
                     f'{config.dataset.name!r} has {info.num_classes} classes')
  if getattr(info, 'multi_label', False) != (cfg.loss in MULTI_LABEL_LOSSES):
    raise ValueError(f'config.loss={cfg.loss!r} does not fit the dataset (multi_label='
                     f'{getattr(info, "multi_label", False)}); use one of '
                     f'{list(MULTI_LABEL_LOSSES)} exactly for multi-label data')

  logging.info('Config:\n%s', config)
  model = build_model(model_cfg)
  learning_rate_fn = create_learning_rate_fn(cfg)
  tx = create_optimizer(cfg, learning_rate_fn)
  init_rng, dropout_rng = replicated_keys(cfg.seed, mesh)

  os.makedirs(workdir, exist_ok=True)
  manager = create_checkpoint_manager(workdir, cfg)
  abstract_state, state_shardings = abstract_train_state(
      init_rng, model, tx, model_cfg.input_shape, mesh, cfg.sharding_rules)
  state, manager = restore_checkpoint(manager, abstract_state)
  if state is None:
    state, _ = create_train_state(init_rng, model, tx, model_cfg.input_shape, mesh,
                                  cfg.sharding_rules)
    if config.get('init_from') and config.init_from.get('path'):
      state = state.replace(params=load_pretrained(state.params, config.init_from, model_cfg))
  step = int(state.step)

  gflops, num_params = count_flops_and_params(model_cfg)
  _log_setup(config, model_cfg, cfg, mesh, info, state, gflops, num_params)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  p_train_step = compile_train_step(model, tx, cfg, mesh, state_shardings)
  p_eval_step = compile_eval_step(model, cfg, mesh, state_shardings.params,
                                  len(model_cfg.input_shape))

  hooks = [periodic_actions.ReportProgress(num_train_steps=cfg.num_train_steps, writer=writer)]
  if cfg.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=cfg.profile_steps))
  train_logger = _TrainLogger(writer, cfg, learning_rate_fn, cfg.batch_size)
  eval_metrics = {}
  batches = Prefetcher(data_pipeline(config).create_train_iterator(
      config, start_step=step, process_index=jax.process_index(),
      process_count=jax.process_count()), NamedSharding(mesh, P('data')))
  if step:
    logging.info('Resuming at step %d.', step)
  try:
    while step < cfg.num_train_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = p_train_step(state, next(batches), dropout_rng)
      step += 1
      train_logger.add(step, step_metrics)
      for hook in hooks:
        hook(step)
      last = step == cfg.num_train_steps
      if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and not last:
        train_logger.flush()
        with hooks[0].timed('eval'):
          eval_metrics = evaluate(p_eval_step, state.params, config, mesh, cfg)
        writer.write_scalars(step, {f'eval_{k}': v for k, v in eval_metrics.items()})
      if last or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
        train_logger.flush()  # Never save a state that followed a NaN loss.
        manager.save(step, args=ocp.args.StandardSave(state))
    train_logger.flush()
    eval_metrics = evaluate(p_eval_step, state.params, config, mesh, cfg)
    writer.write_scalars(step, {f'eval_{k}': v for k, v in eval_metrics.items()})
  finally:
    batches.close()
    manager.wait_until_finished()
    manager.close()
    writer.flush()

  final = {'step': step, **{f'eval_{k}': v for k, v in eval_metrics.items()},
           **train_logger.last}
  if jax.process_index() == 0:
    summary = dict(final_metrics=final, steps=step, num_train_steps=cfg.num_train_steps,
                   wall_time_s=time.time() - start_time, gflops=gflops, num_params=num_params,
                   num_devices=mesh.size, num_processes=jax.process_count(),
                   config=config.to_dict())
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2, default=str)
  logging.info('Final metrics at step %d: %s', step, final)
  return final
