"""Per-process numpy batches -> global jax.Arrays, one batch ahead in a background thread."""
import queue
import threading
from typing import Dict

import jax
from jax.sharding import NamedSharding
import numpy as np


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
