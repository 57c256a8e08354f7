"""What a run reports: the setup at start, train metrics at log steps, summary.json at the end."""
import json
import math
import re
import struct
import time
from typing import Any, Dict

from absl import logging
from clu import parameter_overview
import jax
import numpy as np

from token_learner import paths
from token_learner.train import sharding


class TrainLogger:
  """Collects per-step train metrics one step late, checks them, writes means at log steps.

  `add(step, metrics)` keeps the device arrays of `step` and only then reads those of the step
  before, so the host never waits on the step just dispatched. With a `meter`
  (throughput.Meter) each line also has examples/s per device, TFLOP/s per device, MFU and
  core-hours.
  """

  def __init__(self, writer, *, log_every_steps: int, num_train_steps: int, learning_rate_fn,
               global_batch: int, meter=None):
    self._writer, self._lr_fn, self._meter = writer, learning_rate_fn, meter
    self._every, self._num_steps, self._global_batch = (log_every_steps, num_train_steps,
                                                        global_batch)
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
        raise FloatingPointError(
            f'Training {name} is {values[name]} at step {step}; stopping. Checkpoints are saved '
            'only after their step passed this check, so every one precedes this step; a '
            'restart restores the newest after verifying it against its digest.')
    if self._window_start[1] is None:
      self._window_start = (self._window_start[0], step - 1)
    self._window.append(values)
    if step % self._every == 0 or step == self._num_steps:
      self._write(step)

  def _write(self, step: int):
    start_time, start_step = self._window_start
    now = time.time()
    # steps_per_sec itself is clu's ReportProgress tag; this adds what it does not write.
    steps_per_sec = (step - start_step) / max(now - start_time, 1e-9)
    means = {k: float(np.mean([w[k] for w in self._window])) for k in self._window[0]}
    scalars = {f'train_{k}': v for k, v in means.items()}
    scalars.update(
        learning_rate=float(self._lr_fn(step - 1)),
        examples_per_sec=steps_per_sec * self._global_batch,
        eta_minutes=(self._num_steps - step) / max(steps_per_sec, 1e-9) / 60)
    if self._meter is not None:
      scalars.update(self._meter.window(step - start_step, now - start_time))
    self._writer.write_scalars(step, scalars)
    self.last = scalars
    self._window = []
    self._window_start = (now, step)


class ResumedWriter:
  """A metric writer that skips scalars of steps already in the workdir's event files.

  A resumed run repeats the steps between its checkpoint and the kill; their scalars (and any
  the killed run never flushed, which this then writes) appear once per tag across restarts.
  The event files are those of the restored checkpoint's run: a run that restores none moves
  older ones aside first (set_aside_events).

  A failed write (a full disk: clu's asynchronous writer raises it at the next call) is an
  OSError naming the workdir and the file, not TensorFlow's traceback from a writer thread.
  """

  def __init__(self, writer, workdir: str):
    self._writer, self._workdir = writer, workdir
    self._last_step = _logged_steps(workdir) if jax.process_index() == 0 else {}

  def write_scalars(self, step: int, scalars):
    new = {k: v for k, v in scalars.items() if step > self._last_step.get(k, -1)}
    if new:
      self._call(self._writer.write_scalars, step, new)

  def _call(self, method, *args, **kwargs):
    try:
      return method(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise OSError(f'Writing TensorBoard events to {self._workdir} failed: '
                    f'{_error_text(e)}') from e

  def __getattr__(self, name):
    attribute = getattr(self._writer, name)
    if not callable(attribute):
      return attribute
    return lambda *args, **kwargs: self._call(attribute, *args, **kwargs)


def _error_text(error: BaseException) -> str:
  """The first line of `error`'s message without TensorFlow's `{{function_node ...}}` prefix
  (the innermost cause of clu's AsyncError wrapper)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', text)


def set_aside_events(workdir: str):
  """Moves (process 0) the TensorBoard event files of `workdir` into
  `WORKDIR/events_before.<t>/`, where TensorBoard still shows them as a run of their own; called
  when a run starts without a checkpoint, so that it skips none of its own steps. Returns the
  folder, or None if there was nothing to move."""
  found = paths.glob(workdir, 'events.out.tfevents.*') if paths.isdir(workdir) else []
  if jax.process_index() != 0 or not found:
    return None
  folder = paths.join(workdir, f'events_before.{int(time.time())}')
  while paths.exists(folder):
    folder += '_'
  paths.makedirs(folder)
  for path in found:
    paths.rename(path, paths.join(folder, paths.name(path)))
  logging.warning('No checkpoint to resume from: moved the %d event file(s) of an earlier run to '
                  '%s.', len(found), folder)
  return folder


def _records(data: bytes):
  """The payloads of a TFRecord file's bytes (uint64 length, its CRC, payload, its CRC), up to
  the first torn record (a killed writer's last one)."""
  offset = 0
  while offset + 12 <= len(data):
    length, = struct.unpack_from('<Q', data, offset)
    end = offset + 12 + length + 4
    if end > len(data):
      return
    yield data[offset + 12:end - 4]
    offset = end


def _logged_steps(workdir: str) -> Dict[str, int]:
  """{tag: last step} over the TensorBoard event files of `workdir` (local or a URL, read through
  the path layer; a torn record at the end of a killed run's file ends its reading)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  last = {}
  for path in paths.glob(workdir, 'events.out.tfevents.*'):
    for record in _records(paths.read_bytes(path)):
      try:
        event = event_pb2.Event.FromString(record)
      except Exception:  # pylint: disable=broad-except  # A garbled record: stop reading.
        break
      for value in event.summary.value:
        last[value.tag] = max(last.get(value.tag, -1), event.step)
  return last


def ignored_files(info) -> str:
  """', N files ignored (...)' for an image folder that left files out, else ''."""
  hidden, other = info.ignored_hidden, info.ignored_other
  if not hidden + other:
    return ''
  return (f'; {hidden + other} files ignored ({hidden} hidden, {other} without an image '
          'extension)')


def log_setup(experiment, cfg, mesh, info, state, gflops: float, num_params: int):
  """Topology, dataset, model size and the parameter overview, once at the start of a run."""
  logging.info('Processes: %d (this is %d); devices: %d global, %d local; mesh %s over %s.',
               jax.process_count(), jax.process_index(), jax.device_count(),
               jax.local_device_count(), dict(mesh.shape), mesh.devices.tolist())
  logging.info('Dataset %s: %d train / %d eval examples, %d classes, example shape %s%s.',
               experiment.data.name, info.num_train, info.num_eval, info.num_classes,
               tuple(info.example_shape), ignored_files(info))
  logging.info('Model %s %s: %.4f GFLOPs, %d parameters; %d train steps of batch %d.',
               experiment.model.name, experiment.model.variant, gflops, num_params,
               cfg.num_train_steps, cfg.batch_size)
  parameter_overview.log_parameter_overview(
      state.params, include_stats=jax.process_count() == 1, jax_logging_process=0)
  sharded = sharding.sharded_paths(state.params)
  if sharded:
    logging.info('Sharded parameters: %s', sharded)


def write_summary(workdir: str, final: Dict[str, Any], **fields):
  """WORKDIR/summary.json (process 0): the final metrics and the run's facts, written atomically
  so a crash never leaves half a file."""
  if jax.process_index() != 0:
    return
  paths.write_text_atomic(paths.join(workdir, 'summary.json'),
                          json.dumps(dict(final_metrics=final, **fields), indent=2, default=str))
