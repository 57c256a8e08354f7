"""Image input pipeline (tf.data + TFDS): deterministic, resumable, sliced per process.

Public interface (used by the trainer):

  get_dataset_info(config) -> DatasetInfo(num_classes, num_train, num_eval, image_shape)
  create_train_iterator(config, start_step=0, process_index=0, process_count=1)
      -> endless iterator of {'inputs': float32 [L, H, W, 3], 'labels': int32 [L]},
         L = config.batch_size // process_count.
  create_eval_iterator(config, process_index=0, process_count=1)
      -> finite iterator of {'inputs': float32 [L, H, W, 3], 'labels': int32 [L],
         'mask': float32 [L]}, L = config.eval_batch_size // process_count.

Datasets (`config.dataset.name`): 'digits' (scikit-learn's bundled 8x8 handwritten digits, no
download), 'image_folder' (`ROOT/<split>/<class>/*.png|jpg|jpeg`) or any TFDS name.

How training stays reproducible and resumable: training reads one endless *global stream*.
Stream position q = step * batch_size + row; epoch e = q // n covers positions [e*n, (e+1)*n) and
visits the split in an order seeded by (seed, e); the example at position q is augmented with a
seed derived from (seed, q). A batch is therefore a pure function of (config, step), and
`start_step=k` starts the stream at q = k * batch_size: it jumps straight to epoch q // n and skips
that epoch's first q % n records without decoding them.

Processes: every process builds the same global stream of *undecoded* records and keeps the rows
(q % batch_size) // L == process_index before decoding, so process p's batch is rows
[p*L, (p+1)*L) of the global batch. For TFDS this reads every record on every process (decoding
only its own); `config.dataset.per_process_split=True` instead gives each process its own part
of the split (`tfds.split_for_jax_process`), which reads 1/P of the data but makes the batches
depend on the process count.

Eval: the split in its fixed order, rows sliced per process the same way, then padded with
mask-0 examples to ceil(n / eval_batch_size) batches on every process.

Corrupt images: by default the first decode failure stops the iterator with a ValueError naming
the file (image_folder) or the record (TFDS). With `config.dataset.skip_corrupt=True` the split is
scanned once when an iterator is created (one decode per image) and corrupt records are dropped
from it before the stream is built, so positions, resume and process slicing stay exact; the
count is logged and kept in `iterator.num_skipped`.
"""
import dataclasses
import math
import os
import re
from typing import Callable, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

try:  # The accelerators belong to JAX: keep TensorFlow (here only tf.data) on the host.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow already initialised its devices; nothing left to change.
  pass

_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Seed domains, so the epoch order and the augmentation never share random numbers.
_ORDER, _AUGMENT = 1, 2
# Fixed seed of the digits train/test split and of image_folder's record order: the data a run
# sees must not change with config.seed.
_FIXED_SPLIT_SEED = 0
_EVAL_CROP_FRACTION = 0.875  # Standard ImageNet eval: resize to S / 0.875, centre crop S.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs before it sees data: head size, split sizes, input shape."""
  num_classes: int
  num_train: int
  num_eval: int
  image_shape: tuple  # (H, W, 3) of `inputs` after preprocessing.


# ---------------------------------------------------------------------------------------------
# Config boundary: the ConfigDict is read here once and validated with errors naming the field.


@dataclasses.dataclass(frozen=True)
class _Options:
  seed: int
  name: str
  data_dir: Optional[str]
  root: Optional[str]
  train_split: str
  eval_split: str
  image_size: int
  crop_min_area: float
  mean: tuple
  std: tuple
  augment: bool
  skip_corrupt: bool
  shuffle_buffer: int
  per_process_split: bool


def _options(config) -> _Options:
  ds = config.dataset
  name = ds.get('name', 'digits')
  opts = _Options(
      seed=int(config.get('seed', 0)),
      name=name,
      data_dir=ds.get('data_dir', None),
      root=ds.get('root', None),
      train_split=ds.get('train_split', 'train'),
      eval_split=ds.get('eval_split', 'test'),
      image_size=int(ds.get('image_size', 8 if name == 'digits' else 224)),
      crop_min_area=float(ds.get('crop_min_area', 0.08)),
      mean=tuple(float(m) for m in ds.get('mean', (0.5, 0.5, 0.5))),
      std=tuple(float(s) for s in ds.get('std', (0.5, 0.5, 0.5))),
      augment=bool(ds.get('augment', True)),
      skip_corrupt=bool(ds.get('skip_corrupt', False)),
      shuffle_buffer=int(ds.get('shuffle_buffer', 10_000)),
      per_process_split=bool(ds.get('per_process_split', False)),
  )
  if opts.image_size <= 0:
    raise ValueError(f'config.dataset.image_size must be positive, got {opts.image_size}.')
  if not 0.0 < opts.crop_min_area <= 1.0:
    raise ValueError(f'config.dataset.crop_min_area must be in (0, 1], got {opts.crop_min_area}.')
  if len(opts.mean) != 3 or len(opts.std) != 3 or min(opts.std) <= 0:
    raise ValueError('config.dataset.mean / std must be 3 floats each, std > 0; got '
                     f'{opts.mean} / {opts.std}.')
  if opts.shuffle_buffer <= 0:
    raise ValueError(f'config.dataset.shuffle_buffer must be positive, got {opts.shuffle_buffer}.')
  if opts.name == 'image_folder':
    if not opts.root:
      raise ValueError("config.dataset.root must be set when config.dataset.name='image_folder'.")
    if not os.path.isdir(opts.root):
      raise FileNotFoundError(f'config.dataset.root={opts.root!r} is not a directory.')
  return opts


def _local_batch(global_batch, field, process_index, process_count) -> int:
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f'config.{field}={global_batch} must be a positive multiple of '
                     f'process_count={process_count}.')
  return global_batch // process_count


# ---------------------------------------------------------------------------------------------
# Sources: a split as a fixed sequence of records (index, raw, label, where). `raw` is what is
# cheap to carry before the process filter: an image (digits), a path (image_folder) or encoded
# bytes (TFDS); `where` names the record in error messages.


@dataclasses.dataclass
class _Source:
  description: str  # e.g. "image_folder '/data/train'"; used in messages.
  num_examples: int
  num_classes: int
  tiny: bool  # digits: no flip, no crop-and-rescale (see _train_image).
  # raw -> encoded image bytes; None when raw already is a float32 [h, w, 3] image in [0, 1].
  read: Optional[Callable[[tf.Tensor], tf.Tensor]]
  # Random-access sources: index tensor -> (raw, label, where). Streams (TFDS) have None.
  lookup: Optional[Callable] = None
  records: Optional[Callable[[], tf.data.Dataset]] = None  # streams only: ordered records.
  keep: Optional[np.ndarray] = None  # record indices in use (corrupt ones dropped); None: all.

  def decode(self, raw) -> tf.Tensor:
    """The whole image: uint8 [h, w, 3], or float32 in [0, 1] for in-memory images."""
    return raw if self.read is None else _decode_bytes(self.read(raw))

  def decode_crop(self, raw, crop_window) -> tf.Tensor:
    """The crop `crop_window(shape [3]) -> (begin [3], size [3])` of the image."""
    if self.read is None:
      begin, size = crop_window(tf.shape(raw))
      return tf.slice(raw, begin, size)
    data = self.read(raw)

    def jpeg():  # Decodes only the window: most of an inception crop's cost is the decode.
      begin, size = crop_window(tf.image.extract_jpeg_shape(data))
      window = tf.stack([begin[0], begin[1], size[0], size[1]])
      return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
      image = _decode_bytes(data)
      begin, size = crop_window(tf.shape(image))
      return tf.slice(image, begin, size)
    return tf.cond(tf.io.is_jpeg(data), jpeg, other)

  @property
  def size(self) -> int:
    return self.num_examples if self.keep is None else len(self.keep)

  def ordered(self) -> tf.data.Dataset:
    """Records (index, raw, label, where) in the split's fixed order."""
    if self.lookup is not None:
      idx = np.arange(self.num_examples) if self.keep is None else self.keep
      return tf.data.Dataset.from_tensor_slices(idx.astype(np.int64)).map(
          lambda i: (i, *self.lookup(i)))
    ds = self.records()
    if self.keep is not None:
      mask = np.zeros([self.num_examples], bool)
      mask[self.keep] = True
      mask = tf.constant(mask)
      ds = ds.filter(lambda i, *_: tf.gather(mask, i))
    return ds

  def epoch(self, epoch, seed: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Records of one epoch in an order seeded by (seed, epoch); `epoch` is a scalar tensor."""
    order_seed = _seed(seed, _ORDER, epoch)
    if self.lookup is not None:  # A full permutation: exact uniform shuffle.
      idx = np.arange(self.num_examples) if self.keep is None else self.keep
      perm = tf.argsort(tf.random.stateless_uniform([len(idx)], seed=order_seed))
      idx = tf.gather(tf.constant(idx, tf.int64), perm)
      return tf.data.Dataset.from_tensor_slices(idx).map(lambda i: (i, *self.lookup(i)))
    # Streams cannot be permuted; a seeded shuffle buffer is deterministic given its seed.
    shuffle_seed = tf.random.stateless_uniform([], seed=order_seed, minval=None, maxval=None,
                                               dtype=tf.int64)
    return self.ordered().shuffle(shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=False)


def _seed(seed: int, domain: int, value) -> tf.Tensor:
  """A stateless-op seed, int64 [2], derived from (config.seed, domain, value)."""
  base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), domain)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(value, tf.int64))


_SLICE = re.compile(r'^([\w-]+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$')


def _slice_split(split: str, field: str):
  """'train[10%:90%]' -> ('train', fn(n) -> (start, stop)); the TFDS slicing syntax."""
  m = _SLICE.match(split.replace(' ', ''))
  if not m:
    raise ValueError(f'config.dataset.{field}={split!r}: expected NAME or NAME[a:b] '
                     "(ints or percentages, as in TFDS).")
  name, lo, hi = m.groups()

  def bounds(n):
    def point(s, default):
      if s is None:
        return default
      v = round(n * int(s[:-1]) / 100) if s.endswith('%') else int(s)
      return min(max(v + n if v < 0 else v, 0), n)
    return point(lo, 0), point(hi, n)
  return name, bounds


def load_digit_scans(split: str):
  """scikit-learn's 1797 digits: `(images [N, 8, 8] in 0..16, labels [N], scan indices [N])` of a
  fixed stratified 1437 / 360 train / test split (independent of config.seed; moving_digits
  builds its videos from the same split)."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(digits.target)), test_size=360, stratify=digits.target,
      random_state=_FIXED_SPLIT_SEED)
  idx = np.sort(train_idx if split == 'train' else test_idx)
  return digits.images[idx], digits.target[idx], idx


def _digits_source(split: str, field: str) -> _Source:
  """The digits split through the tf.data pipeline."""
  name, bounds = _slice_split(split, field)
  if name not in ('train', 'test'):
    raise ValueError(f"config.dataset.{field}={split!r}: digits has splits 'train' and 'test'.")
  scans, targets, idx = load_digit_scans(name)
  lo, hi = bounds(len(idx))
  scans, targets, idx = scans[lo:hi], targets[lo:hi], idx[lo:hi]
  # Pixels are 0..16; grey -> 3 identical channels.
  images = np.repeat(scans[..., None] / 16.0, 3, axis=-1).astype(np.float32)
  labels = targets.astype(np.int32)
  images_t, labels_t = tf.constant(images), tf.constant(labels)
  where = tf.constant([f'digits sample {i}' for i in idx])
  return _Source(
      description=f'digits {split!r}', num_examples=len(idx), num_classes=10, tiny=True,
      read=None,
      lookup=lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i), tf.gather(where, i)))


def _decode_bytes(data: tf.Tensor) -> tf.Tensor:
  """Encoded PNG / JPEG / GIF / BMP / WebP -> uint8 [h, w, 3]."""
  image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _image_folder_classes(root: str, train_split: str) -> list:
  base = os.path.join(root, _slice_split(train_split, 'train_split')[0])
  if not os.path.isdir(base):
    raise FileNotFoundError(f'image_folder train split directory {base!r} does not exist '
                            '(config.dataset.root / config.dataset.train_split).')
  classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
  if not classes:
    raise ValueError(f'image_folder train split {base!r} has no class subfolders.')
  return classes


def _image_folder_source(opts: _Options, split: str, field: str) -> _Source:
  """Files ROOT/<split>/<class>/*.{png,jpg,jpeg}; labels index the train split's classes."""
  classes = _image_folder_classes(opts.root, opts.train_split)
  name, bounds = _slice_split(split, field)
  base = os.path.join(opts.root, name)
  if not os.path.isdir(base):
    raise FileNotFoundError(f'config.dataset.{field}={split!r}: directory {base!r} not found.')
  paths, labels = [], []
  for cls in sorted(os.listdir(base)):
    if not os.path.isdir(os.path.join(base, cls)):
      continue
    if cls not in classes:
      raise ValueError(f'Class folder {os.path.join(base, cls)!r} is not a class of the train '
                       f'split ({classes}).')
    for f in sorted(os.listdir(os.path.join(base, cls))):
      if f.lower().endswith(_IMAGE_EXTENSIONS):
        paths.append(os.path.join(base, cls, f))
        labels.append(classes.index(cls))
  if not paths:
    raise ValueError(f'config.dataset.{field}={split!r}: no {"/".join(_IMAGE_EXTENSIONS)} '
                     f'images under {base!r}/<class>/.')
  # A fixed shuffle of the sorted listing, so that slices like 'train[:90%]' mix the classes.
  order = np.random.default_rng(_FIXED_SPLIT_SEED).permutation(len(paths))
  lo, hi = bounds(len(paths))
  order = order[lo:hi]
  paths_t = tf.constant([paths[i] for i in order])
  labels_t = tf.constant(np.asarray(labels, np.int32)[order])
  return _Source(
      description=f'image_folder {base!r}', num_examples=len(order), num_classes=len(classes),
      tiny=False, read=tf.io.read_file,
      lookup=lambda i: (tf.gather(paths_t, i), tf.gather(labels_t, i), tf.gather(paths_t, i)))


def _tfds_builder(opts: _Options):
  try:
    builder = tfds.builder(opts.name, data_dir=opts.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"config.dataset.name={opts.name!r} is neither 'digits', 'image_folder' "
                     'nor a TFDS dataset.') from e
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise ValueError(f"TFDS dataset {opts.name!r} has no 'image' and 'label' features.")
  return builder


def _tfds_read(builder, split) -> tf.data.Dataset:
  # Images stay encoded until after the process filter, and decoding ourselves lets a corrupt
  # record be named instead of failing inside TFDS.
  return builder.as_dataset(
      split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(add_tfds_id=True))


def _tfds_count(builder, split) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, TypeError):
    # No split metadata (e.g. under tfds.testing.mock_data): the reader knows its length.
    n = int(_tfds_read(builder, split).cardinality())
    if n < 0:
      raise ValueError(f'Cannot count the examples of TFDS split {split!r} of '
                       f'{builder.name!r}.') from None
    return n


def _tfds_source(opts: _Options, split, field) -> _Source:
  builder = _tfds_builder(opts)
  # Built once, outside any traced function (the epoch streams capture it), and only read when
  # iterated.
  ds = _tfds_read(builder, split).enumerate().map(
      lambda i, ex: (i, ex['image'], tf.cast(ex['label'], tf.int32), ex['tfds_id']))
  return _Source(
      description=f'TFDS {opts.name!r} split {split!r}', num_examples=_tfds_count(builder, split),
      num_classes=builder.info.features['label'].num_classes, tiny=False,
      read=lambda data: data, records=lambda: ds)


def _source(opts: _Options, split, field) -> _Source:
  if opts.name == 'digits':
    return _digits_source(split, field)
  if opts.name == 'image_folder':
    return _image_folder_source(opts, split, field)
  return _tfds_source(opts, split, field)


def _process_split(split, process_index, process_count):
  """The split string of one process's part under per_process_split (TFDS)."""
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def _sliced_source(opts, split, field, process_index, process_count) -> _Source:
  """The source, restricted to this process's part when per_process_split is on."""
  if not opts.per_process_split or process_count == 1:
    return _source(opts, split, field)
  if opts.name not in ('digits', 'image_folder'):
    return _source(opts, _process_split(split, process_index, process_count), field)
  # Small in-memory splits: contiguous near-equal parts, like tfds.split_for_jax_process.
  source = _source(opts, split, field)
  source.keep = np.array_split(np.arange(source.num_examples), process_count)[process_index]
  return source


# ---------------------------------------------------------------------------------------------
# Corrupt records.


def _scan(source: _Source) -> list:
  """Decodes every record once; returns [(index, where, error)] of those that fail."""
  def check(i, raw, label, where):
    del label
    return i, tf.shape(source.decode(raw))[0]
  good = source.ordered().map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  good = {int(i) for i, _ in good.ignore_errors().as_numpy_iterator()}
  bad = []
  for i, raw, _, where in source.ordered().as_numpy_iterator():
    if int(i) not in good:
      bad.append((int(i), where.decode(), _decode_error(source, raw)))
  return bad


def _decode_error(source: _Source, raw) -> str:
  try:
    source.decode(tf.constant(raw))
  except (tf.errors.OpError, ValueError) as e:
    return getattr(e, 'message', str(e)).strip().splitlines()[0]
  return 'unreadable record'


def _drop_corrupt(source: _Source) -> int:
  """Scans the split and removes corrupt records from `source`; returns how many."""
  bad = _scan(source)
  if bad:
    dropped = {i for i, _, _ in bad}
    keep = np.arange(source.num_examples) if source.keep is None else source.keep
    source.keep = np.asarray([i for i in keep if i not in dropped], np.int64)
    logging.warning('Skipped %d corrupt image(s) of %s (config.dataset.skip_corrupt=True), '
                    'e.g. %s: %s', len(bad), source.description, bad[0][1], bad[0][2])
  return len(bad)


def _corrupt_error(source: _Source, bad) -> ValueError:
  index, where, error = bad[0]
  more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
  return ValueError(f'Corrupt or unreadable image in {source.description}: {where} (record '
                    f'{index}){more}: {error}. Set config.dataset.skip_corrupt=True to skip '
                    'such images.')


# ---------------------------------------------------------------------------------------------
# Image processing: a decoded record -> float32 [S, S, 3] in [0, 1]; then normalised.


def _resize(image, size):
  """uint8 or float32 [h, w, 3] -> float32 [*size, 3] in [0, 1]."""
  scale = 1 / 255 if image.dtype == tf.uint8 else 1.0  # Cropping and resizing stay in uint8.
  return tf.image.resize(image, size, method='bilinear', antialias=True) * scale


def _train_image(source: _Source, raw, seed, opts: _Options):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  size = [opts.image_size, opts.image_size]
  if source.tiny:
    # Digits: a shift of up to 1/8 of the side (1 pixel of an 8x8 scan); no flip, since a
    # mirrored digit is another symbol (or none).
    image = source.decode(raw)
    pad = max(1, int(image.shape[0] or 8) // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return _resize(image, size)

  def inception_crop(shape):
    # Szegedy et al. 2015: a random box of [crop_min_area, 1] of the area with aspect ratio in
    # [3/4, 4/3]; the whole image if none is found in 10 attempts.
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(opts.crop_min_area, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin, box
  image = _resize(source.decode_crop(raw, inception_crop), size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _eval_image(image, opts: _Options, tiny: bool):
  """Decoded image -> float32 [S, S, 3] in [0, 1]: resize, centre crop (ImageNet eval)."""
  size = opts.image_size
  if tiny:
    return _resize(image, [size, size])
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (size / _EVAL_CROP_FRACTION) / tf.reduce_min(shape)
  resized = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
  image = _resize(image, resized)
  top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
  return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])


def _normalise(image, opts: _Options):
  return (image - tf.constant(opts.mean)) / tf.constant(opts.std)


# ---------------------------------------------------------------------------------------------
# Iterators.


class BatchIterator:
  """numpy batches from a tf.data pipeline; turns a decode failure into a clear error.

  `on_error(batch_index)` is called when reading a batch fails; it raises an error naming the bad
  record when it can find it (the image and video pipelines both use this iterator).
  """

  def __init__(self, dataset: tf.data.Dataset, on_error: Callable[[int], None],
               num_skipped: int = 0):
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


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # Bit-identical batches across runs and resumes.
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _train_records(source, opts, start_pos, global_batch, local_batch, process_index):
  """This process's rows of the global stream from `start_pos`: (pos, index, raw, label, where)."""
  n = source.size
  first_epoch = start_pos // n

  def epoch(e):
    positions = tf.data.Dataset.range(e * n, (e + 1) * n)
    records = source.epoch(e, opts.seed, opts.shuffle_buffer)
    return tf.data.Dataset.zip(positions, records).map(lambda q, r: (q, *r))
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max // n).flat_map(epoch)
  ds = ds.skip(start_pos - first_epoch * n)
  return ds.filter(lambda q, *_: (q % global_batch) // local_batch == process_index)


def create_train_iterator(config, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1):
  """Endless iterator of {'inputs': f32 [L, S, S, 3], 'labels': i32 [L]}, L = batch / P.

  Batch k (counting from 0 at start_step=0) is the same on every run with the same config;
  start_step=k starts at batch k. Process p gets rows [p*L, (p+1)*L) of each global batch.
  """
  opts = _options(config)
  local_batch = _local_batch(config.batch_size, 'batch_size', process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  source = _sliced_source(opts, opts.train_split, 'train_split', process_index, process_count)
  # per_process_split: each process streams its own part, with its own seeds.
  seed, global_batch, row_block = opts.seed, config.batch_size, process_index
  if opts.per_process_split and process_count > 1:
    seed = opts.seed * 1_000_003 + process_index
    global_batch, row_block = local_batch, 0
  opts = dataclasses.replace(opts, seed=seed)
  num_skipped = _drop_corrupt(source) if opts.skip_corrupt else 0
  if source.size == 0:
    raise ValueError(f'{source.description} has no usable examples.')

  def stream(step):
    return _train_records(source, opts, step * global_batch, global_batch, local_batch,
                          row_block)

  def process(q, index, raw, label, where):
    del index, where
    if opts.augment:
      image = _train_image(source, raw, _seed(opts.seed, _AUGMENT, q), opts)
    else:
      image = _eval_image(source.decode(raw), opts, source.tiny)
    return {'inputs': _normalise(image, opts), 'labels': label}
  ds = stream(start_step).map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _with_options(ds.batch(local_batch, drop_remainder=True))

  def on_error(batches_done):
    # Re-read the failing batch (and the next, in case of prefetch) and decode one by one.
    window = stream(start_step + batches_done).take(2 * local_batch)
    for _, index, raw, _, where in window.as_numpy_iterator():
      try:
        source.decode(tf.constant(raw))
      except tf.errors.OpError as e:
        raise _corrupt_error(source, [(int(index), where.decode(), e.message)]) from None
    bad = _scan(source)
    if bad:
      raise _corrupt_error(source, bad) from None
  return BatchIterator(ds, on_error, num_skipped)


def create_eval_iterator(config, process_index: int = 0, process_count: int = 1):
  """Finite iterator of {'inputs', 'labels', 'mask': f32 [L]}, L = eval_batch_size / P.

  Every example of the eval split appears exactly once over all processes (mask 1); the rest is
  padding (mask 0, zero inputs, label 0). Every process yields the same number of batches.
  """
  opts = _options(config)
  global_batch = config.eval_batch_size
  local_batch = _local_batch(global_batch, 'eval_batch_size', process_index, process_count)
  source = _sliced_source(opts, opts.eval_split, 'eval_split', process_index, process_count)
  num_skipped = _drop_corrupt(source) if opts.skip_corrupt else 0
  n = source.size
  if opts.per_process_split and process_count > 1:
    # Each process has its own part; the longest part sets everyone's batch count.
    sizes = _process_sizes(opts, process_count)
    num_batches = math.ceil(max(sizes) / local_batch)
    global_batch, row_block, local_count = local_batch, 0, n
  else:
    num_batches = math.ceil(n / global_batch)
    row_block = process_index
    # Rows of full global batches, then this process's share of the last partial one.
    local_count = (n // global_batch) * local_batch + min(
        max(n % global_batch - process_index * local_batch, 0), local_batch)

  def process(q, index, raw, label, where):
    del q, index, where
    image = _eval_image(source.decode(raw), opts, source.tiny)
    return {'inputs': _normalise(image, opts), 'labels': label, 'mask': tf.constant(1.0)}
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(n), source.ordered()).map(lambda q, r: (q, *r))
  ds = ds.filter(lambda q, *_: (q % global_batch) // local_batch == row_block)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  size = opts.image_size
  pad = tf.data.Dataset.from_tensors({
      'inputs': tf.zeros([size, size, 3]), 'labels': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0)}).repeat(num_batches * local_batch - local_count)
  ds = _with_options(ds.concatenate(pad).batch(local_batch, drop_remainder=True))

  def on_error(batches_done):
    del batches_done
    bad = _scan(source)
    if bad:
      raise _corrupt_error(source, bad) from None
  return BatchIterator(ds, on_error, num_skipped)


def _process_sizes(opts, process_count) -> list:
  """Sizes of the per_process_split parts of the eval split (before dropping corrupt ones)."""
  if opts.name in ('digits', 'image_folder'):
    n = _source(opts, opts.eval_split, 'eval_split').num_examples
    return [len(p) for p in np.array_split(np.arange(n), process_count)]
  builder = _tfds_builder(opts)
  return [_tfds_count(builder, _process_split(opts.eval_split, p, process_count))
          for p in range(process_count)]


def get_dataset_info(config) -> DatasetInfo:
  """Class count, split sizes and the preprocessed image shape, from metadata only.

  Sizes are those of the splits as stored; with skip_corrupt=True the iterators may serve fewer.
  """
  opts = _options(config)
  if opts.name in ('digits', 'image_folder'):
    train = _source(opts, opts.train_split, 'train_split')
    num_eval = _source(opts, opts.eval_split, 'eval_split').num_examples
    num_classes, num_train = train.num_classes, train.num_examples
  else:
    builder = _tfds_builder(opts)
    num_classes = builder.info.features['label'].num_classes
    num_train = _tfds_count(builder, opts.train_split)
    num_eval = _tfds_count(builder, opts.eval_split)
  return DatasetInfo(num_classes=num_classes, num_train=num_train, num_eval=num_eval,
                     image_shape=(opts.image_size, opts.image_size, 3))
