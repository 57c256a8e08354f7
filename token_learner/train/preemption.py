"""Preemption: SIGTERM (TPU, GKE and Slurm preemption notices) ends a run cleanly and resumably.

    with preemption.Watcher(manager) as watcher:
      ... after each step: if watcher.stop_requested(step): save a checkpoint, then
      raise preemption.Preempted(step)

One process: a SIGTERM handler sets a flag that the loop reads after the current step, so the
step finishes, a checkpoint of it is saved and the metrics are flushed; main.py then exits with
PREEMPTED_EXIT_CODE. Several processes: a signal reaches the processes at different steps, so
the decision is orbax's preemption sync point (`reached_preemption`, JAX's preemption service,
which catches SIGTERM itself), the same step on every process.
"""
import signal
import threading

from absl import logging
import jax

# EX_TEMPFAIL: "a temporary failure; retry" -- the run resumes exactly from its checkpoint.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """The run stopped on a preemption notice after saving the checkpoint of `step`."""

  def __init__(self, step: int):
    super().__init__(f'Preempted: stopped after saving the checkpoint of step {step}; run the '
                     'same command again to resume.')
    self.step = step


class Watcher:
  """Context manager: installs the SIGTERM handler (one process, main thread) and restores the
  previous one on exit."""

  def __init__(self, manager):
    self._manager = manager
    self._signalled = False
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: finishing the current step, then saving a checkpoint '
                    'and exiting.', signum)
    self._signalled = True

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def stop_requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._signalled
