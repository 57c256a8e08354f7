"""What the image and video inputs share: sources, the train stream, eval padding, batches.

How training stays reproducible and resumable: training reads one endless *global stream*.
Stream position q = step * batch_size + row; epoch e = q // n covers positions [e*n, (e+1)*n) and
visits the split in an order seeded by (seed, e) (a full permutation for random-access sources, a
seeded shuffle buffer for record streams); the example at position q is augmented (crop, flip,
clip start) with stateless ops seeded by (seed, q). A batch is therefore a pure function of
(config, seed, step), and `start_step=k` starts the stream at q = k * batch_size: it jumps
straight to epoch q // n and skips that epoch's first q % n records without reading (random
access) or decoding (streams) them.

Processes: process p's batch is rows [p*L, (p+1)*L) of the global batch, L = batch_size //
process_count. With random access every process builds the same global stream of keys and reads
only its rows (q % batch_size) // L == p. A record stream (TFDS) is read as K contiguous
*shards* instead (`sharded_train_records`): shard s is an endless stream of its own epochs (seeded
order per (epoch, shard)) and fills rows [s*B/K, (s+1)*B/K) of every batch, so process p reads
only its K/P shards, 1/P of the records; stream position q = step * B + row is kept for the
augmentation seeds, and `start_step=k` starts every shard at its position k * B/K. With K = 1
this is the global stream above. Batches depend on K, not on P.

Eval: the split in its fixed order, rows sliced per process the same way, then padded with
mask-0 examples (zero inputs and labels) to ceil(n / eval_batch_size) batches on every process,
so every example appears exactly once over all processes and all processes step together.
"""
import dataclasses
import math
import numbers
import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

try:  # The accelerators belong to JAX: keep TensorFlow (here only tf.data) on the host.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow already initialised its devices; nothing left to change.
  pass

AUTOTUNE = tf.data.AUTOTUNE


def as_written(fn: Callable) -> Callable:
  """`fn` for tf.data's map / filter / flat_map, traced as written, without AutoGraph's rewrite
  of its source (parsing and transforming the Python of every function was most of the time a
  pipeline took to build: about a second per run of the digits job). The pipeline's functions
  branch only on Python values (config fields, structure), never on a tensor; a tensor used as a
  Python bool in one raises when the pipeline is built."""
  return tf.autograph.experimental.do_not_convert(fn)


# Seed domains, so the epoch order and the augmentation never share random numbers.
_ORDER, _AUGMENT = 1, 2


def local_batch(global_batch: int, field: str, process_index: int, process_count: int) -> int:
  """`global_batch // process_count`; errors name `config.<field>`."""
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')
  if (not isinstance(global_batch, numbers.Integral) or global_batch <= 0
      or global_batch % process_count):
    raise ValueError(f'config.{field}={global_batch} must be a positive multiple of '
                     f'process_count={process_count}.')
  return int(global_batch) // process_count


def derive_seed(seed: int, domain: int, value) -> tf.Tensor:
  """A stateless-op seed, int64 [2], derived from (seed, domain, value)."""
  base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), domain)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(value, tf.int64))


def augment_seed(seed: int, q) -> tf.Tensor:
  """The seed of the augmentation of stream position `q`."""
  return derive_seed(seed, _AUGMENT, q)


# tf.data threading, as big_vision sets it: the pipeline runs on its own pool (sized to the host,
# at most big_vision's 48), and each op on one thread, so the parallel map is the only
# parallelism and no op's intra-op threads compete with the pipeline or the device's host work.
THREADPOOL_SIZE = max(1, min(48, os.cpu_count() or 1))
MAX_INTRA_OP_PARALLELISM = 1


def options() -> tf.data.Options:
  """The options of every train and eval pipeline (deterministic, threading as above)."""
  opts = tf.data.Options()
  opts.deterministic = True  # Bit-identical batches across runs and resumes.
  opts.threading.private_threadpool_size = THREADPOOL_SIZE
  opts.threading.max_intra_op_parallelism = MAX_INTRA_OP_PARALLELISM
  return opts


def with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  return ds.with_options(options()).prefetch(AUTOTUNE)


def to_pixels(images):
  """float32 [..., 3] in [0, 1] (or uint8) -> uint8 0..255: what batches carry.

  Rounded to the nearest level (resizing makes non-integer pixels); the device normalises them
  (`token_learner.data.normalize`). A uint8 input is returned as it is.
  """
  if images.dtype == tf.uint8:
    return images
  return tf.cast(tf.round(tf.clip_by_value(images * 255.0, 0.0, 255.0)), tf.uint8)


def resize(images, size):
  """uint8 (0..255) or float32 (0..1) [..., h, w, 3] -> float32 [..., *size, 3] in [0, 1]."""
  scale = 1 / 255 if images.dtype == tf.uint8 else 1.0  # Cropping stays in uint8.
  return tf.image.resize(images, size, method='bilinear', antialias=True) * scale


def inception_crop_box(shape, seed, crop_min_area: float):
  """(begin [3], size [3]) of a random box in an image of `shape` [h, w, c] (Szegedy et al.
  2015): [crop_min_area, 1] of the area, aspect ratio in [3/4, 4/3]; the whole image if no box is
  found in 10 attempts."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(crop_min_area, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def resize_short_side(images, short_side: float, size):
  """[..., h, w, 3] -> (float32 [..., h', w', 3] in [0, 1], [h', w']): the short side scaled to
  `short_side`, each side at least `size` (H, W) so that a crop of `size` fits."""
  hw = tf.cast(tf.shape(images)[-3:-1], tf.float32)
  scale = short_side / tf.reduce_min(hw)
  new = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), list(size))
  return resize(images, new), new


def crop_offsets(hw, size, crops: int):
  """[(top, left)] of 1 centre crop of `size` in `hw`, or 3: start / centre / end of the longer
  side (the 3-crop evaluation of §6.1.1)."""
  dh, dw = hw[0] - size[0], hw[1] - size[1]
  if crops == 1:
    return [(dh // 2, dw // 2)]
  along_w = dw >= dh
  return [(tf.where(along_w, dh // 2, dh * f // 2), tf.where(along_w, dw * f // 2, dw // 2))
          for f in (0, 1, 2)]


@dataclasses.dataclass
class Source:
  """A split as a fixed sequence of records `(index, where, *payload)`.

  `where` (a string) names the record in error messages; `payload` is what the modality decodes.
  Random-access sources give `lookup(index) -> (where, *payload)` and are visited in a seeded
  permutation per epoch; streams (TFDS images) give `records()`, the ordered records, visited
  through a shuffle buffer seeded per epoch (`shuffle_buffer`).
  """
  description: str  # e.g. "image_folder '/data/train'"; used in messages.
  num_examples: int  # As stored.
  num_classes: int
  lookup: Optional[Callable[[tf.Tensor], tuple]] = None
  records: Optional[Callable[[], tf.data.Dataset]] = None
  shuffle_buffer: int = 1
  keep: Optional[np.ndarray] = None  # Record indices in use (e.g. corrupt ones dropped).

  @property
  def size(self) -> int:
    return self.num_examples if self.keep is None else len(self.keep)

  def _indices(self) -> tf.Tensor:
    if self.keep is None:
      return tf.range(self.num_examples, dtype=tf.int64)
    return tf.constant(np.asarray(self.keep, np.int64))

  def _stream(self) -> tf.data.Dataset:
    ds = self.records()
    if self.keep is not None:
      mask = np.zeros([self.num_examples], bool)
      mask[self.keep] = True
      mask = tf.constant(mask)
      ds = ds.filter(as_written(lambda i, *_: tf.gather(mask, i)))
    return ds

  def keys(self, epoch=None, offset=0, seed: int = 0) -> tf.data.Dataset:
    """(index,) for random access, whole records for streams: in order (epoch None) or in the
    order of `epoch` (a scalar tensor) from its position `offset`."""
    if self.lookup is not None:
      idx = self._indices()
      if epoch is not None:  # A full permutation: exact uniform shuffle.
        idx = tf.random.experimental.stateless_shuffle(
            idx, seed=derive_seed(seed, _ORDER, epoch), alg='philox')
      return tf.data.Dataset.from_tensor_slices((idx[offset:],))
    if epoch is None:
      return self._stream()
    shuffle_seed = tf.random.stateless_uniform([], seed=derive_seed(seed, _ORDER, epoch),
                                               minval=None, maxval=None, dtype=tf.int64)
    return self._stream().shuffle(self.shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=False).skip(offset)

  def read(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """(q, index) -> (q, index, where, *payload) for random access (reads only kept rows)."""
    if self.lookup is None:
      return ds
    return ds.map(as_written(lambda q, i: (q, i, *self.lookup(i))), num_parallel_calls=AUTOTUNE)

  def ordered(self) -> tf.data.Dataset:
    """Records (index, where, *payload) in the split's fixed order."""
    keys = self.keys()
    return keys if self.lookup is None else keys.map(as_written(lambda i: (i, *self.lookup(i))))


def _positioned(first, stop, records: tf.data.Dataset) -> tf.data.Dataset:
  return tf.data.Dataset.zip(tf.data.Dataset.range(first, stop), records).map(
      as_written(lambda q, r: (q, *r)))


def _keep_rows(ds: tf.data.Dataset, global_batch: int, local_batch_size: int,
               row_block: int) -> tf.data.Dataset:
  """The elements (q, ...) of rows (q % global_batch) // local_batch_size == row_block: all of
  them with one process (no filter, whose per-element call costs host time)."""
  if local_batch_size == global_batch:
    return ds
  return ds.filter(as_written(lambda q, *_: (q % global_batch) // local_batch_size == row_block))


def train_records(source: Source, seed: int, step: int, global_batch: int,
                  local_batch_size: int, row_block: int, read: bool = True) -> tf.data.Dataset:
  """Endless (q, index, where, *payload): this process's rows of the stream from batch `step`;
  with `read=False` only (q, index) (random access: `source.read` adds the rest)."""
  n, start = source.size, step * global_batch
  first_epoch = start // n

  def epoch(e):
    offset = tf.maximum(start - e * n, 0)
    return _positioned(e * n + offset, (e + 1) * n, source.keys(e, offset, seed))
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max // n).flat_map(as_written(epoch))
  ds = _keep_rows(ds, global_batch, local_batch_size, row_block)
  return source.read(ds) if read else ds


def sharded_train_records(shards, num_shards: int, seed: int, step: int,
                          global_batch: int) -> tf.data.Dataset:
  """Endless (q, index, where, *payload) of this process's rows from batch `step`, reading only
  `shards`: [(s, Source of shard s)] for consecutive s, of `num_shards` shards of a stream."""
  block = global_batch // num_shards

  def shard_stream(s, shard):
    n, start = shard.size, step * block

    def epoch(e):
      offset = tf.maximum(start - e * n, 0)
      t = tf.data.Dataset.range(e * n + offset, (e + 1) * n)  # The shard's own positions.
      q = t.map(as_written(lambda t: t // block * global_batch + s * block + t % block))
      # Seeds (epoch e, shard s) -> e * K + s: distinct per shard, and e itself for K = 1.
      return tf.data.Dataset.zip(q, shard.keys(e * num_shards + s, offset, seed)).map(
          as_written(lambda q, r: (q, *r)))
    first = start // n
    return tf.data.Dataset.range(first, np.iinfo(np.int64).max // n).flat_map(as_written(epoch))

  blocks = tf.data.Dataset.zip(tuple(shard_stream(s, shard).batch(block, drop_remainder=True)
                                     for s, shard in shards))
  # One block per shard, in shard order: this process's L rows of a batch.
  concat = lambda *blocks: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *blocks)
  return blocks.map(as_written(concat)).unbatch()


def eval_records(source: Source, global_batch: int, local_batch_size: int,
                 row_block: int) -> tf.data.Dataset:
  """(q, index, where, *payload) of this process's rows of the eval split, in order."""
  ds = _positioned(0, source.size, source.keys())
  return source.read(_keep_rows(ds, global_batch, local_batch_size, row_block))


class BatchIterator:
  """numpy batches from a tf.data pipeline; turns a decode failure into a clear error.

  `on_error(batch_index)` is called when reading a batch fails; it raises an error naming the bad
  record when it can find it, else the original error is raised.
  """

  def __init__(self, dataset: tf.data.Dataset, on_error: Callable[[int], None],
               num_skipped: int = 0):
    self.dataset = dataset  # The tf.data pipeline (its options: `options()`).
    self._it = dataset.as_numpy_iterator()
    self._on_error = on_error
    self._batches = 0
    self.num_skipped = num_skipped  # Corrupt images dropped (skip_corrupt=True).

  def __iter__(self):
    return self

  def __next__(self):
    try:
      batch = next(self._it)
    except tf.errors.OpError:
      self._on_error(self._batches)  # Raises a ValueError naming the record if it finds it.
      raise
    self._batches += 1
    return batch


class EvalInput:
  """The eval split, built once per run; `iter(eval_input)` is one finite pass (any number)."""

  def __init__(self, dataset, on_error, num_batches: int, num_skipped: int = 0):
    self._dataset, self._on_error = dataset, on_error
    self.dataset = dataset
    self.num_batches = num_batches  # Per pass, the same on every process.
    self.num_skipped = num_skipped

  def __iter__(self) -> BatchIterator:
    return BatchIterator(self._dataset, self._on_error, self.num_skipped)

  def __len__(self):
    return self.num_batches


def _diagnose(records: tf.data.Dataset, check: Callable, fallback: Optional[Callable]):
  """Runs `check(q, index, where, *payload)` (raises a ValueError naming a bad record) over
  `records` eagerly, then `fallback()`."""
  for record in records.as_numpy_iterator():
    check(*record)
  if fallback is not None:
    fallback()


def train_batches(source: Source, process: Callable, check: Callable, *, seed: int,
                  start_step: int, global_batch: int, local_batch_size: int, row_block: int,
                  num_skipped: int = 0, fallback: Optional[Callable] = None,
                  shards: Sequence[Tuple[int, Source]] = (), num_shards: int = 1,
                  batched: bool = False) -> BatchIterator:
  """Batches of `process(q, index, where, *payload) -> dict` over the train stream.

  `shards` ([(s, Source)]: this process's of `num_shards`): read from those shards only.
  `batched`: `process` maps whole batches of records (the same values as row by row), which
  saves tf.data's per-element cost where that is most of the work (tiny in-memory images); a
  random-access source then reads whole batches of keys too (`lookup` of index vectors).
  """
  if source.size == 0:
    raise ValueError(f'{source.description} has no usable examples.')
  for _, shard in shards:
    if shard.size == 0:
      raise ValueError(f'{shard.description} has no usable examples.')

  def records(step):
    if shards:
      return sharded_train_records(shards, num_shards, seed, step, global_batch)
    return train_records(source, seed, step, global_batch, local_batch_size, row_block)
  if batched and not shards:
    keys = train_records(source, seed, start_step, global_batch, local_batch_size, row_block,
                         read=False)
    ds = source.read(keys.batch(local_batch_size, drop_remainder=True))
    ds = ds.map(as_written(process), num_parallel_calls=AUTOTUNE)
  elif batched:
    ds = records(start_step).batch(local_batch_size, drop_remainder=True)
    ds = ds.map(as_written(process), num_parallel_calls=AUTOTUNE)
  else:
    ds = records(start_step).map(as_written(process), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = with_options(ds)

  def on_error(batches_done):
    # The failing batch (and the next, in case of prefetch): rows are a pure function of step.
    _diagnose(records(start_step + batches_done).take(2 * local_batch_size), check, fallback)
  return BatchIterator(ds, on_error, num_skipped)


def eval_batches(source: Source, process: Callable, check: Callable, *, global_batch: int,
                 local_batch_size: int, row_block: int, num_batches: Optional[int] = None,
                 num_skipped: int = 0, fallback: Optional[Callable] = None) -> EvalInput:
  """Every example once over all processes (mask 1), then mask-0 zero padding.

  `num_batches` defaults to ceil(n / global_batch); per-process parts pass their longest part's.
  """
  n = source.size
  if num_batches is None:
    num_batches = math.ceil(n / global_batch)
  # Rows of full global batches, then this process's share of the last partial one.
  count = (n // global_batch) * local_batch_size + min(
      max(n % global_batch - row_block * local_batch_size, 0), local_batch_size)
  records = eval_records(source, global_batch, local_batch_size, row_block)
  ds = records.map(as_written(lambda *r: {**process(*r), 'mask': tf.constant(1.0)}),
                   num_parallel_calls=AUTOTUNE)
  pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(
      num_batches * local_batch_size - count))
  ds = with_options(ds.batch(local_batch_size, drop_remainder=True))

  def on_error(batches_done):
    window = records.skip(batches_done * local_batch_size).take(2 * local_batch_size)
    _diagnose(window, check, fallback)
  return EvalInput(ds, on_error, num_batches, num_skipped)
