"""Image datasets (`ImageData`): sources, decoding, train augmentation and eval crops.

Sources (`config.dataset.name`): 'digits' (scikit-learn's bundled 8x8 handwritten digits, no
download), 'image_folder' (`ROOT/<split>/<class>/<images>`, ROOT a folder or a URL such as
gs://bucket/photos, read through `token_learner.paths` and TensorFlow's file systems; labels index
the train split's class folders) or any TFDS name with 'image' and 'label' features (a record
stream, shuffled by a buffer seeded per epoch). Splits accept the TFDS slicing syntax
('train[:90%]') everywhere.

image_folder files: those with an image extension (guide.IMAGE_EXTENSIONS) are the split's
images, whatever their format turns out to be: the decoder reads it from the bytes (PNG, JPEG,
GIF, BMP, WebP; a WebP named .jpg is a WebP), in training and evaluation alike; a file it cannot
decode (a TIFF, a truncated JPEG) is an error naming it. The EXIF orientation tag is applied (an
image tagged "rotate 90" comes out rotated, as a photo viewer shows it). File names need not be
UTF-8 (paths are carried as bytes; messages show odd bytes as \\xNN).

Reading at scale: with random access (digits, image_folder) every process reads only the records
of its rows. A TFDS train split is read as `config.dataset.read_shards` (default: the process
count P) contiguous shards, each process reading only its K/P of them, so 1/P of the records
(see `stream`); read_shards=1 is the single global stream, which every process reads whole.
`config.dataset.per_process_split=True` gives each process its own contiguous part of the split
(`tfds.split_for_jax_process` for TFDS) with its own seeds, for the eval split as well; the eval
split is otherwise read whole by every process, which decodes only its rows.

Augmentation (training): an Inception crop of [crop_min_area, 1] of the area, resized to
image_size, and a random horizontal flip; digits instead get a shift of up to 1/8 of the side and
no flip (a mirrored digit is another symbol, or none). Eval: resize the short side to S / 0.875
and take the centre S crop (standard ImageNet eval).

Corrupt images: an image_folder split is decoded in full once when an iterator is created,
before any batch (results cached in the root, see `corrupt_images.scan_files`): a corrupt file
is an error naming it, or with `config.dataset.skip_corrupt=True` it is dropped. For TFDS the
first decode failure stops the iterator with a ValueError naming the record; with skip_corrupt
the split is scanned once (one decode per image) when an iterator is created. Corrupt records are
dropped from the split before the stream is built, so positions, resume and process slicing
stay exact; the count is logged and kept in `iterator.num_skipped` (see
`token_learner.data.corrupt_images`).
"""
import dataclasses
import os
import re
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from token_learner import paths
from token_learner.data import corrupt_images, digits, guide, stream
from token_learner.data.config import DatasetInfo, ImageData

_IMAGE_EXTENSIONS = guide.IMAGE_EXTENSIONS
_EVAL_CROP_FRACTION = 0.875  # Standard ImageNet eval: resize to S / 0.875, centre crop S.


@dataclasses.dataclass
class _ImageSource(stream.Source):
  """Records (index, where, raw, label); `raw` is what is cheap to carry before the process
  filter: an image (digits), a path (image_folder, as bytes) or encoded bytes (TFDS)."""
  tiny: bool = False  # digits: no flip, no crop-and-rescale (see _train_image).
  # raw -> encoded image bytes; None when raw already is a float32 [h, w, 3] image in [0, 1].
  read_bytes: Optional[Callable[[tf.Tensor], tf.Tensor]] = None
  files: Optional[list] = None  # image_folder: the paths, in record order.
  folder: Optional[str] = None  # image_folder: the split's folder...
  ignored: Tuple[int, int] = (0, 0)  # ...and its (hidden, other extension) files left out.
  root: Optional[str] = None  # image_folder: config.dataset.root (holds the scan cache).
  # image_folder: path -> EXIF orientation tag of the files that have one other than 1 (set by
  # `check_image_folder`); None: every image as stored.
  orientation: Optional[tf.lookup.StaticHashTable] = None

  def _orientation(self, raw) -> tf.Tensor:
    return tf.constant(1) if self.orientation is None else self.orientation.lookup(raw)

  def decode(self, raw) -> tf.Tensor:
    """The whole image: uint8 [h, w, 3], or float32 in [0, 1] for in-memory images."""
    if self.read_bytes is None:
      return raw
    return orient(_decode_bytes(self.read_bytes(raw)), self._orientation(raw))

  def decode_crop(self, raw, crop_window) -> tf.Tensor:
    """The crop `crop_window(shape [3]) -> (begin [3], size [3])` of the image."""
    if self.read_bytes is None:
      return tf.slice(raw, *crop_window(tf.shape(raw)))
    data, tag = self.read_bytes(raw), self._orientation(raw)

    def jpeg():  # Decodes only the window: most of an inception crop's cost is the decode.
      begin, size = crop_window(tf.image.extract_jpeg_shape(data))
      window = tf.stack([begin[0], begin[1], size[0], size[1]])
      return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
      image = orient(_decode_bytes(data), tag)
      return tf.slice(image, *crop_window(tf.shape(image)))
    return tf.cond(tf.logical_and(tf.io.is_jpeg(data), tf.equal(tag, 1)), jpeg, other)


def _decode_bytes(data: tf.Tensor) -> tf.Tensor:
  """Encoded PNG / JPEG / GIF / BMP / WebP (the format read from the bytes, whatever the file's
  name) -> uint8 [h, w, 3]; an animation's first frame."""
  image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def orient(image: tf.Tensor, tag: tf.Tensor) -> tf.Tensor:
  """`image` [h, w, c] as displayed under EXIF orientation `tag` (1..8; other values: as
  stored), the transform of PIL's `ImageOps.exif_transpose` (TensorFlow's decoders ignore the
  tag): 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
  8 rotate 90 counter-clockwise."""
  t = lambda: tf.transpose(image, [1, 0, 2])
  branches = [lambda: image, lambda: image[:, ::-1], lambda: image[::-1, ::-1],
              lambda: image[::-1], t, lambda: t()[:, ::-1], lambda: t()[::-1, ::-1],
              lambda: t()[::-1]]
  index = tf.where((tag >= 1) & (tag <= 8), tag - 1, 0)
  return tf.switch_case(tf.cast(index, tf.int32), branches)


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


def _gather_lookup(wheres, raws, labels):
  wheres, raws, labels = tf.constant(wheres), tf.constant(raws), tf.constant(labels)
  return lambda i: (tf.gather(wheres, i), tf.gather(raws, i), tf.gather(labels, i))


def _digits_source(split: str, field: str) -> _ImageSource:
  """The digits split, in memory."""
  name, bounds = _slice_split(split, field)
  if name not in ('train', 'test'):
    raise ValueError(f"config.dataset.{field}={split!r}: digits has splits 'train' and 'test'.")
  scans, targets, idx = digits.load_digit_scans(name)
  lo, hi = bounds(len(idx))
  # Pixels are 0..16; grey -> 3 identical channels.
  images = np.repeat(scans[lo:hi, ..., None] / 16.0, 3, axis=-1).astype(np.float32)
  return _ImageSource(
      description=f'digits {split!r}', num_examples=hi - lo, num_classes=10, tiny=True,
      lookup=_gather_lookup([f'digits sample {i}' for i in idx[lo:hi]], images,
                            targets[lo:hi].astype(np.int32)))


def _hidden(name: str) -> bool:
  return name.startswith('.')  # .DS_Store, ._IMG.jpg (AppleDouble), .ipynb_checkpoints, ...


def _list(folder: str, what: str) -> list:
  """The names in `folder` (local or a URL, through token_learner.paths); a ValueError naming
  the folder when it cannot be listed."""
  try:
    return paths.listdir(folder)
  except (OSError, tf.errors.OpError) as e:
    raise ValueError(f'image_folder: cannot list {what} {shown(folder)}: '
                     f'{getattr(e, "strerror", None) or e}') from None


def printable(path) -> str:
  """`path` for a message: the bytes of a non-UTF-8 name are shown as \\xNN escapes."""
  if isinstance(path, bytes):
    path = os.fsdecode(path)
  return path.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def shown(path) -> str:
  """`path` quoted for a message (see `printable`)."""
  return f"'{printable(path)}'"


def _split_folder(cfg: ImageData, split: str, field: str) -> str:
  base = paths.join(cfg.root, _slice_split(split, field)[0])
  if not paths.isdir(base):
    found = sorted(d for d in _list(cfg.root, 'config.dataset.root')
                   if not _hidden(d) and paths.isdir(paths.join(cfg.root, d)))
    raise ValueError(guide.image_folder_missing(
        cfg.root, f'config.dataset.{field}={split!r} has no folder {base} (found: '
        f'{", ".join(found) or "none"})', cfg.train_split, cfg.eval_split))
  return base


def _class_folders(base: str) -> list:
  return sorted(d for d in _list(base, 'the split folder')
                if not _hidden(d) and paths.isdir(paths.join(base, d)))


def _image_folder_classes(cfg: ImageData) -> list:
  base = _split_folder(cfg, cfg.train_split, 'train_split')
  classes = _class_folders(base)
  if not classes:
    raise ValueError(guide.image_folder_missing(
        cfg.root, f'the train split folder {base} has no class subfolders', cfg.train_split,
        cfg.eval_split))
  for cls in classes:  # An empty folder would silently become a class no example has.
    folder = paths.join(base, cls)
    if not any(_is_image(f) for f in _list(folder, 'the class folder')):
      raise ValueError(f'image_folder class folder {shown(folder)} has no images '
                       f'({guide.image_extensions()}); remove it or add its images.')
  return classes


def _is_image(name: str) -> bool:
  """A candidate image: its content then decides (see guide.IMAGE_EXTENSIONS)."""
  return not _hidden(name) and name.lower().endswith(_IMAGE_EXTENSIONS)


def _image_folder_source(cfg: ImageData, split: str, field: str) -> _ImageSource:
  """Files ROOT/<split>/<class>/*.{png,jpg,...}; labels index the train split's classes.

  Ignored, and counted in `source.ignored` (hidden, other): hidden entries (a leading '.') and
  files with an extension that is not an image's (guide.IMAGE_EXTENSIONS), in the class folders
  and beside them. A candidate's format is its content's (a WebP named .jpg is a WebP); one
  that TensorFlow cannot decode is reported by name (`check_image_folder`).
  """
  classes = _image_folder_classes(cfg)
  name, bounds = _slice_split(split, field)
  base = _split_folder(cfg, split, field)
  files, labels, hidden, other = [], [], 0, 0
  for cls in _list(base, 'the split folder'):
    if _hidden(cls):
      hidden += 1
      continue
    if not paths.isdir(paths.join(base, cls)):
      other += 1
      continue
    if cls not in classes:
      raise ValueError(f'Class folder {shown(paths.join(base, cls))} is not a class of the '
                       f'train split ({classes}).')
    for f in _list(paths.join(base, cls), 'the class folder'):
      if _is_image(f):
        files.append(paths.join(base, cls, f))
        labels.append(classes.index(cls))
      elif _hidden(f):
        hidden += 1
      else:
        other += 1
  if not files:
    raise ValueError(f'config.dataset.{field}={split!r}: no images '
                     f'({guide.image_extensions()}) under {shown(base)}/<class>/.')
  # A fixed shuffle of the sorted listing, so that slices like 'train[:90%]' mix the classes.
  order = np.random.default_rng(digits.FIXED_SPLIT_SEED).permutation(len(files))
  lo, hi = bounds(len(files))
  order = order[lo:hi]
  files = [files[i] for i in order]
  # Bytes, not str: a file name need not be UTF-8 (os.fsencode gives the name's own bytes).
  encoded = [os.fsencode(f) for f in files]
  return _ImageSource(
      description=f'image_folder {base!r}', num_examples=len(order), num_classes=len(classes),
      read_bytes=tf.io.read_file, files=files, folder=base, ignored=(hidden, other),
      root=cfg.root, lookup=_gather_lookup(encoded, encoded, np.asarray(labels, np.int32)[order]))


def check_image_folder(source: _ImageSource, skip_corrupt: bool) -> int:
  """Decodes every image of an image_folder split once (results cached, see corrupt_images),
  before any batch: a corrupt or undecodable file is an error naming it, or with skip_corrupt
  dropped and counted (the count is returned). Records each file's EXIF orientation, which
  `decode` then applies."""
  results = corrupt_images.scan_files(source, source.files,
                                      paths.join(source.root, corrupt_images.SCAN_CACHE))
  bad = [(i, printable(f), error)
         for i, (f, (error, _)) in enumerate(zip(source.files, results)) if error]
  if bad and not skip_corrupt:
    raise corrupt_images.corrupt_error(source, bad)
  num_skipped = corrupt_images.drop(source, bad) if bad else 0
  turned = [(os.fsencode(f), o) for f, (_, o) in zip(source.files, results) if o != 1]
  if turned:
    keys, values = zip(*turned)
    source.orientation = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values, tf.int32)),
        default_value=1)
  return num_skipped


def _tfds_builder(cfg: ImageData, field: str = 'train_split'):
  """The builder of the TFDS dataset of split `field` (eval_split: `eval_name` if set); a
  ValueError naming the folder and the `tfds build` command when it is not prepared."""
  use_eval_name = field == 'eval_split' and cfg.eval_name
  name, where = (cfg.eval_name, 'eval_name') if use_eval_name else (cfg.name, 'name')
  builder = guide.tfds_builder(name, cfg.data_dir, f'config.dataset.{where}')
  features = builder.info.features
  if 'image' not in features or _label_key(builder) not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' and 'label' features.")
  return builder


def _label_key(builder) -> str:
  # imagenet2012_real calls ImageNet's label 'original_label' (its 'real_label' is the ReaL set).
  return 'original_label' if 'real_label' in builder.info.features else 'label'


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


def _tfds_source(cfg: ImageData, builder, split) -> _ImageSource:
  # Built once, outside any traced function (the epoch streams capture it), and only read when
  # iterated.
  key = _label_key(builder)
  num_classes = builder.info.features[key].num_classes

  def label(ex):
    if 'real_label' not in ex:
      return tf.cast(ex[key], tf.int32)
    # ImageNet ReaL: (label, multi-hot [K] of the real labels; all zero for an empty set).
    real = tf.one_hot(tf.cast(ex['real_label'], tf.int32), num_classes, dtype=tf.float32)
    return tf.cast(ex[key], tf.int32), tf.minimum(tf.reduce_sum(real, axis=0), 1.0)
  ds = _tfds_read(builder, split).enumerate().map(
      stream.as_written(lambda i, ex: (i, ex['tfds_id'], ex['image'], label(ex))))
  return _ImageSource(
      description=f'TFDS {cfg.name!r} split {split!r}', num_examples=_tfds_count(builder, split),
      num_classes=num_classes, read_bytes=lambda data: data,
      records=lambda: ds, shuffle_buffer=cfg.shuffle_buffer)


def _tfds_shards(cfg: ImageData, source: _ImageSource, num_shards: int, process_index: int,
                 process_count: int) -> list:
  """[(s, source of shard s)] of this process's consecutive shards of the train split (the
  split's `num_shards` contiguous `tfds.even_splits`; only these are ever read)."""
  builder = _tfds_builder(cfg)
  splits = tfds.even_splits(cfg.train_split, num_shards)
  sizes = [_tfds_count(builder, split) for split in splits]
  if sum(sizes) != source.num_examples:
    raise ValueError(f'{source.description}: its {num_shards} even splits hold {sum(sizes)} '
                     f'records, not {source.num_examples}')
  starts = np.cumsum([0] + sizes)
  per_process = num_shards // process_count
  shards = []
  for s in range(process_index * per_process, (process_index + 1) * per_process):
    shard = _tfds_source(cfg, builder, splits[s])
    shard.description = f'{source.description} shard {s} of {num_shards}'
    if source.keep is not None:  # Corrupt records dropped from the whole split.
      keep = source.keep[(source.keep >= starts[s]) & (source.keep < starts[s + 1])]
      shard.keep = keep - starts[s]
    shards.append((s, shard))
  return shards


def _process_split(split, process_index, process_count):
  """The split string of one process's part under per_process_split (TFDS)."""
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def _source(cfg: ImageData, field: str, process_index=0, process_count=1) -> _ImageSource:
  """The split `getattr(cfg, field)`, restricted to this process's part under
  per_process_split: TFDS's `split_for_jax_process`, else contiguous near-equal parts."""
  split = getattr(cfg, field)
  parts = cfg.per_process_split and process_count > 1
  if cfg.source == 'digits':
    source = _digits_source(split, field)
  elif cfg.source == 'image_folder':
    source = _image_folder_source(cfg, split, field)
  else:
    if parts:
      split = _process_split(split, process_index, process_count)
    return _tfds_source(cfg, _tfds_builder(cfg, field), split)
  if parts:
    source.keep = np.array_split(np.arange(source.num_examples), process_count)[process_index]
  return source


# ---------------------------------------------------------------------------------------------
# Image processing: a decoded record -> float32 [H, W, 3] in [0, 1] -> uint8 pixels (rounded);
# the device normalises them (token_learner.data.normalize).


def _train_image(source: _ImageSource, raw, seed, cfg: ImageData):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if source.tiny:
    # Digits: a shift of up to 1/8 of the side (1 pixel of an 8x8 scan); no flip.
    image = source.decode(raw)
    pad = max(1, int(image.shape[0] or 8) // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return stream.resize(image, cfg.image_size)
  crop = lambda shape: stream.inception_crop_box(shape, crop_seed, cfg.crop_min_area)
  image = stream.resize(source.decode_crop(raw, crop), cfg.image_size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _eval_image(image, cfg: ImageData, tiny: bool):
  """Decoded image -> float32 [H, W, 3] in [0, 1]: resize, centre crop (ImageNet eval)."""
  if tiny:
    return stream.resize(image, cfg.image_size)
  (h, w), short = cfg.image_size, max(cfg.image_size) / _EVAL_CROP_FRACTION
  image, hw = stream.resize_short_side(image, short, cfg.image_size)
  ((top, left),) = stream.crop_offsets(hw, cfg.image_size, 1)
  return tf.ensure_shape(image[top:top + h, left:left + w], [h, w, 3])


def _processor(source: _ImageSource, cfg: ImageData, augment_seed: Optional[int] = None):
  """(q, index, where, raw, label) -> {'inputs', 'labels'}: augmented with seeds derived from
  (augment_seed, q), or the eval view when `augment_seed` is None."""
  def process(q, index, where, raw, label):
    del index, where
    if augment_seed is None:
      image = _eval_image(source.decode(raw), cfg, source.tiny)
    else:
      image = _train_image(source, raw, stream.augment_seed(augment_seed, q), cfg)
    out = {'inputs': stream.to_pixels(image)}
    if isinstance(label, tuple):  # ImageNet ReaL (see _tfds_source).
      label, out['real_labels'] = label
    return {**out, 'labels': label}
  return process


# ---------------------------------------------------------------------------------------------
# Public entry points (through token_learner.data).


def train_iterator(cfg: ImageData, *, seed: int, start_step: int, global_batch: int,
                   local_batch: int, process_index: int, process_count: int):
  """Endless {'inputs': uint8 [L, H, W, 3], 'labels': i32 [L]} (see token_learner.data)."""
  source = _source(cfg, 'train_split', process_index, process_count)
  row_block = process_index
  if cfg.per_process_split and process_count > 1:
    # Each process streams its own part, with its own seeds.
    seed, global_batch, row_block = seed * 1_000_003 + process_index, local_batch, 0
  if cfg.source == 'image_folder':
    num_skipped = check_image_folder(source, cfg.skip_corrupt)
  else:
    num_skipped = corrupt_images.drop_corrupt(source) if cfg.skip_corrupt else 0
  num_shards = cfg.num_read_shards(global_batch, process_count)
  shards = (_tfds_shards(cfg, source, num_shards, process_index, process_count)
            if num_shards > 1 else [])
  process = _processor(source, cfg, seed if cfg.augment else None)
  check, scan = corrupt_images.checks(source)
  return stream.train_batches(
      source, process, check, seed=seed, start_step=start_step, global_batch=global_batch,
      local_batch_size=local_batch, row_block=row_block, num_skipped=num_skipped, fallback=scan,
      shards=shards, num_shards=num_shards,
      batched=source.tiny and not cfg.augment)  # Same-size in-memory images, no random ops.


def eval_input(cfg: ImageData, *, global_batch: int, local_batch: int, process_index: int,
               process_count: int):
  """The eval split once per pass: {'inputs', 'labels', 'mask'} (see token_learner.data)."""
  source = _source(cfg, 'eval_split', process_index, process_count)
  if cfg.source == 'image_folder':
    num_skipped = check_image_folder(source, cfg.skip_corrupt)
  else:
    num_skipped = corrupt_images.drop_corrupt(source) if cfg.skip_corrupt else 0
  row_block, num_batches = process_index, None
  if cfg.per_process_split and process_count > 1:
    # Each process has its own part; the longest part sets everyone's batch count.
    sizes = _part_sizes(cfg, process_count)
    num_batches = -(-max(sizes) // local_batch)
    global_batch, row_block = local_batch, 0
  check, scan = corrupt_images.checks(source)
  return stream.eval_batches(
      source, _processor(source, cfg), check, global_batch=global_batch,
      local_batch_size=local_batch, row_block=row_block, num_batches=num_batches,
      num_skipped=num_skipped, fallback=scan)


def _part_sizes(cfg: ImageData, process_count) -> list:
  """Sizes of the per_process_split parts of the eval split (before dropping corrupt ones)."""
  if cfg.source != 'tfds':
    n = _source(cfg, 'eval_split').num_examples
    return [len(p) for p in np.array_split(np.arange(n), process_count)]
  builder = _tfds_builder(cfg, 'eval_split')
  return [_tfds_count(builder, _process_split(cfg.eval_split, p, process_count))
          for p in range(process_count)]


def dataset_info(cfg: ImageData) -> DatasetInfo:
  """Class count, split sizes and the preprocessed image shape, from metadata only.

  Sizes are those of the splits as stored; with skip_corrupt=True the iterators may serve fewer.
  """
  ignored = (0, 0)
  if cfg.source != 'tfds':
    train, evaluation = _source(cfg, 'train_split'), _source(cfg, 'eval_split')
    num_eval = evaluation.num_examples
    num_classes, num_train = train.num_classes, train.num_examples
    folders = {s.folder: s.ignored for s in (train, evaluation) if s.folder}  # Each once.
    ignored = tuple(int(sum(c)) for c in zip((0, 0), *folders.values()))
  else:
    builder = _tfds_builder(cfg)
    num_classes = builder.info.features['label'].num_classes
    num_train = _tfds_count(builder, cfg.train_split)
    num_eval = _tfds_count(_tfds_builder(cfg, 'eval_split'), cfg.eval_split)
  return DatasetInfo(num_classes=num_classes, num_train=num_train, num_eval=num_eval,
                     example_shape=cfg.example_shape, ignored_hidden=ignored[0],
                     ignored_other=ignored[1])
