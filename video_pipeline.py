"""Video input pipeline (tf.data): clips for training, multi-view clips for evaluation (§5, §6.1.1).

Same interface as `input_pipeline` (the trainer dispatches with `is_video_dataset(config)`):

  get_dataset_info(config) -> VideoDatasetInfo(num_classes, num_train, num_eval, image_shape,
                                               num_views, multi_label)
  create_train_iterator(config, start_step=0, process_index=0, process_count=1)
      -> endless {'inputs': float32 [L, T, H, W, 3], 'labels': int32 [L] (or float32 [L, K]
         multi-hot when config.dataset.multi_label)}, L = batch_size // process_count.
  create_eval_iterator(config, process_index=0, process_count=1)
      -> finite {'inputs': float32 [L, V, T, H, W, 3], 'labels', 'mask': float32 [L],
         'video_id': int32 [L]}, L = eval_batch_size // process_count videos, each with its
         V = eval_clips * eval_crops views (the "4x3 = 12" views of Tables 8, 9). A batch holds
         whole videos, so a video's views are never split between processes; average them with
         `token_learner.metrics.average_views` before any metric.

Sources (`config.dataset.name`):
- 'moving_digits': offline default, generated from scikit-learn's digits (see `moving_digits`).
- 'ucf101' (or any TFDS video dataset with 'video' / 'label' features, `config.dataset.tfds_name`)
  through `tfds.data_source` (random access; the dataset must be prepared with
  `file_format='array_record'`).
- 'dmvr' (and 'charades', 'avid', 'kinetics*'): DMVR-style TFRecords of `tf.train.SequenceExample`,
  JPEG frames in the feature list `frames_key`, int64 label ids in the context `label_key`.
  The files are indexed once (record offsets from the TFRecord length headers, no payload read),
  which gives random access: uncompressed TFRecords only, CRCs are not checked.

Determinism and resume: the train stream position of row r of global batch s is
q = s * batch_size + r; epoch e = q // n visits the videos in a permutation seeded by
(seed, e), and the clip's start, crop and flip come from stateless ops seeded by (seed, q).
A batch is a pure function of (config, step), so `start_step=k` yields batch k onwards.
Process p keeps rows [p*L, (p+1)*L) of each global batch.

Short videos are looped (frame index modulo the length), never dropped. A frame that is not a
decodable JPEG stops the iterator with a ValueError naming the file and record.
"""
import dataclasses
import functools
import itertools
import math
import struct
import threading
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

import input_pipeline

# Seed domains, so the epoch order and the augmentation never share random numbers.
_ORDER, _AUGMENT = 1, 2
DMVR_NAMES = ('dmvr', 'charades', 'avid', 'kinetics400', 'kinetics600')
TFDS_NAMES = ('ucf101',)
NAMES = ('moving_digits',) + TFDS_NAMES + DMVR_NAMES


def is_video_dataset(config) -> bool:
  """Whether `config.dataset.name` is served by this module (else by input_pipeline)."""
  return config.dataset.get('name') in NAMES


@dataclasses.dataclass(frozen=True)
class VideoDatasetInfo:
  num_classes: int
  num_train: int  # videos
  num_eval: int  # videos
  image_shape: tuple  # (T, H, W, 3) of one clip (one view) after preprocessing.
  num_views: int  # eval views per video: eval_clips * eval_crops.
  multi_label: bool


# ---------------------------------------------------------------------------------------------
# Config boundary: config.dataset is read here once, with errors naming the field.


@dataclasses.dataclass(frozen=True)
class _Options:
  seed: int
  name: str
  num_classes: Optional[int]
  multi_label: bool
  num_frames: int
  stride: int
  image_size: Tuple[int, int]
  eval_clips: int
  eval_crops: int
  eval_short_side: Optional[int]
  crop_min_area: float
  augment: bool
  random_flip: bool
  mean: tuple
  std: tuple
  file_pattern_train: str
  file_pattern_eval: str
  frames_key: str
  label_key: str
  tfds_name: str
  data_dir: Optional[str]
  train_split: str
  eval_split: str
  directions: int  # moving_digits only


# config.dataset fields read here, plus `shuffle_buffer` (accepted, unused: the train order is a
# full permutation per epoch, not a buffer shuffle).
_FIELDS = ('name', 'num_classes', 'multi_label', 'num_frames', 'stride', 'image_size',
           'eval_clips', 'eval_crops', 'eval_short_side', 'crop_min_area', 'augment',
           'random_flip', 'mean', 'std', 'file_pattern_train', 'file_pattern_eval', 'frames_key',
           'label_key', 'tfds_name', 'data_dir', 'train_split', 'eval_split', 'directions',
           'shuffle_buffer')


def _options(config) -> _Options:
  ds = config.dataset
  name = ds.get('name', 'moving_digits')
  if name not in NAMES:
    raise ValueError(f'config.dataset.name={name!r} is not a video dataset {list(NAMES)}')
  unknown = sorted(set(ds.keys()) - set(_FIELDS))
  if unknown:  # A misspelt field would otherwise fall back to its default silently.
    raise ValueError(f'config.dataset.{unknown[0]} is not a video dataset field (known: '
                     f'{sorted(_FIELDS)})')
  size = ds.get('image_size', 32 if name == 'moving_digits' else 224)
  size = (size, size) if isinstance(size, int) else tuple(size)
  num_classes = ds.get('num_classes', None)
  if num_classes is None and 'model' in config:
    num_classes = config.model.get('num_classes', None)
  opts = _Options(
      seed=int(config.get('seed', 0)), name=name, num_classes=num_classes,
      multi_label=bool(ds.get('multi_label', False)),
      num_frames=int(ds.get('num_frames', 8)), stride=int(ds.get('stride', 1)),
      image_size=size, eval_clips=int(ds.get('eval_clips', 1)),
      eval_crops=int(ds.get('eval_crops', 1)), eval_short_side=ds.get('eval_short_side', None),
      crop_min_area=float(ds.get('crop_min_area', 0.3)), augment=bool(ds.get('augment', True)),
      random_flip=bool(ds.get('random_flip', name != 'moving_digits')),
      mean=tuple(float(m) for m in ds.get('mean', (0.5, 0.5, 0.5))),
      std=tuple(float(s) for s in ds.get('std', (0.5, 0.5, 0.5))),
      file_pattern_train=ds.get('file_pattern_train', '') or '',
      file_pattern_eval=ds.get('file_pattern_eval', '') or '',
      frames_key=ds.get('frames_key', 'image/encoded'),
      label_key=ds.get('label_key', 'clip/label/index'),
      tfds_name=ds.get('tfds_name', name), data_dir=ds.get('data_dir', None),
      train_split=ds.get('train_split', 'train'), eval_split=ds.get('eval_split', 'test'),
      directions=int(ds.get('directions', 4)))
  for field in ('num_frames', 'stride', 'eval_clips'):
    if getattr(opts, field) < 1:
      raise ValueError(f'config.dataset.{field}={getattr(opts, field)} must be >= 1')
  if opts.eval_crops not in (1, 3):
    raise ValueError(f'config.dataset.eval_crops={opts.eval_crops} must be 1 or 3')
  if not 0.0 < opts.crop_min_area <= 1.0:
    raise ValueError(f'config.dataset.crop_min_area={opts.crop_min_area} must be in (0, 1]')
  if len(opts.mean) != 3 or len(opts.std) != 3 or min(opts.std) <= 0:
    raise ValueError(f'config.dataset.mean / std must be 3 floats, std > 0; got {opts.mean} / '
                     f'{opts.std}')
  if opts.directions not in (2, 4):
    raise ValueError(f'config.dataset.directions={opts.directions} must be 2 or 4')
  if name in DMVR_NAMES and opts.num_classes is None:
    raise ValueError(f'config.dataset.num_classes (or config.model.num_classes) must be set for '
                     f'{name!r}')
  return opts


def _local_batch(global_batch, field, process_index, process_count) -> int:
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f'config.{field}={global_batch} must be a positive multiple of '
                     f'process_count={process_count}')
  return global_batch // process_count


# ---------------------------------------------------------------------------------------------
# moving_digits: the offline video task. A 16x16 digit (an 8x8 scikit-learn scan, 2x upsampled)
# slides 1 pixel per frame across a 32x32 canvas; label = digit * directions + direction, so
# the class needs both what the digit is and where it moves: a single frame is ambiguous (the
# digit passes the same places going right and going left).

DIRECTIONS = ('right', 'left', 'down', 'up')
_CANVAS, _DIGIT, _VIDEO_FRAMES = 32, 16, 16
_TRAVEL = _CANVAS - _DIGIT  # positions 0..16 along the motion axis
_SPLIT_SEED = 0  # The data must not change with config.seed: fixed split and layouts.


def render_moving_digit(scan, direction: int, offset: int, num_frames: int = _VIDEO_FRAMES):
  """uint8 `[num_frames, 32, 32, 3]`: `scan` (8x8, values 0..16) moving 1 pixel per frame.

  Args:
    scan: `[8, 8]` digit image.
    direction: index into DIRECTIONS.
    offset: position on the axis across the motion, in [0, 16].
    num_frames: <= 17, so the digit never leaves the canvas.
  """
  digit = np.kron(np.asarray(scan, np.float32) * (255.0 / 16.0), np.ones((2, 2), np.float32))
  video = np.zeros((num_frames, _CANVAS, _CANVAS), np.uint8)
  for t in range(num_frames):
    along = t if DIRECTIONS[direction] in ('right', 'down') else _TRAVEL - t
    y, x = (offset, along) if DIRECTIONS[direction] in ('right', 'left') else (along, offset)
    video[t, y:y + _DIGIT, x:x + _DIGIT] = np.round(digit).astype(np.uint8)
  return np.repeat(video[..., None], 3, axis=-1)


class MovingDigits:
  """The 'train' (1437 scans) or 'test' (360 scans) split, `directions` videos per scan.

  Scans are split as input_pipeline's 'digits' (stratified, fixed seed), so train and test videos
  come from disjoint scans. Videos are rendered on demand (`video(i)`), deterministically.
  """

  def __init__(self, split: str, directions: int = 4):
    if split not in ('train', 'test'):
      raise ValueError(f"moving_digits has splits 'train' and 'test', not {split!r}")
    self._scans, self._digits, _ = input_pipeline.load_digit_scans(split)
    self.directions = directions
    rng = np.random.default_rng([_SPLIT_SEED, split == 'test'])
    self._offsets = rng.integers(0, _TRAVEL + 1, size=len(self._digits) * directions)
    self.num_classes = 10 * directions

  def __len__(self):
    return len(self._offsets)

  def video(self, i):
    scan, direction = divmod(int(i), self.directions)
    return render_moving_digit(self._scans[scan], direction, int(self._offsets[i]))

  def label(self, i):
    scan, direction = divmod(int(i), self.directions)
    return int(self._digits[scan]) * self.directions + direction


# ---------------------------------------------------------------------------------------------
# Sources: a split as a random-access sequence of videos. `kind` says what `read(i)` returns:
# 'frames' -> (uint8 [n, h, w, 3], int64 [L] labels); 'serialized' -> one SequenceExample.


@dataclasses.dataclass
class _Source:
  description: str
  size: int
  num_classes: int
  kind: str
  read: Callable[[int], tuple]
  where: Callable[[int], str]


def _moving_digits_source(opts: _Options, split: str) -> _Source:
  data = MovingDigits(split, directions=opts.directions)
  return _Source(f'moving_digits {split!r}', len(data), data.num_classes, 'frames',
                 lambda i: (data.video(i), np.array([data.label(i)], np.int64)),
                 lambda i: f'moving_digits {split} video {i}')


def _tfds_source(opts: _Options, split: str) -> _Source:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.data_source(opts.tfds_name, split=split, data_dir=opts.data_dir, download=False)
  num_classes = opts.num_classes
  if num_classes is None:
    num_classes = tfds.builder(opts.tfds_name, data_dir=opts.data_dir).info.features[
        'label'].num_classes

  def read(i):
    example = source[int(i)]
    return np.asarray(example['video'], np.uint8), np.array([example['label']], np.int64)
  return _Source(f'tfds {opts.tfds_name} {split!r}', len(source), num_classes, 'frames', read,
                 lambda i: f'tfds {opts.tfds_name} {split} example {i}')


def index_tfrecords(pattern: str):
  """[(path, offset, length, index_in_file)] of every record of the files matching `pattern`.

  A TFRecord is `uint64 length | uint32 crc | data | uint32 crc`; only the headers are read.
  Comma-separated patterns are joined; files are sorted so the order is fixed.
  """
  paths = sorted(p for part in pattern.split(',') if part for p in tf.io.gfile.glob(part))
  if not paths:
    raise ValueError(f'No files match {pattern!r}')
  records = []
  for path in paths:
    size = tf.io.gfile.stat(path).length
    with tf.io.gfile.GFile(path, 'rb') as f:
      offset, k = 0, 0
      while offset < size:
        f.seek(offset)
        header = f.read(8)
        if len(header) < 8:
          raise ValueError(f'{path}: truncated TFRecord header at byte {offset}')
        (length,) = struct.unpack('<Q', header)
        if offset + 16 + length > size:
          raise ValueError(f'{path} record {k}: truncated (needs {length} bytes at {offset})')
        records.append((path, offset + 12, length, k))
        offset, k = offset + 16 + length, k + 1
  return records


def _dmvr_source(opts: _Options, pattern: str, field: str) -> _Source:
  if not pattern:
    raise ValueError(f'config.dataset.{field} must be set for dataset {opts.name!r}')
  records = index_tfrecords(pattern)
  files = {}
  lock = threading.Lock()  # tf.data's generator thread and error diagnosis share the handles.

  def read(i):
    path, offset, length, _ = records[i]
    with lock:
      if path not in files:  # One open handle per file, reused.
        files[path] = tf.io.gfile.GFile(path, 'rb')
      f = files[path]
      f.seek(offset)
      return (f.read(length),)
  return _Source(f'{opts.name} {pattern!r}', len(records), opts.num_classes, 'serialized', read,
                 lambda i: f'{records[i][0]} record {records[i][3]}')


def _source(opts: _Options, train: bool) -> _Source:
  split = opts.train_split if train else opts.eval_split
  if opts.name == 'moving_digits':
    return _moving_digits_source(opts, split)
  if opts.name in TFDS_NAMES or opts.tfds_name != opts.name:
    return _tfds_source(opts, split)
  if train:
    return _dmvr_source(opts, opts.file_pattern_train, 'file_pattern_train')
  return _dmvr_source(opts, opts.file_pattern_eval, 'file_pattern_eval')


def _signature(source: _Source):
  if source.kind == 'frames':
    return (tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None], tf.int64))
  return (tf.TensorSpec([], tf.string),)


# ---------------------------------------------------------------------------------------------
# Video processing (graph mode, inside tf.data map).


def _seed(seed: int, domain: int, value) -> tf.Tensor:
  """A stateless-op seed, int64 [2], derived from (config.seed, domain, value)."""
  base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), domain)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(value, tf.int64))


def _parse(source: _Source, opts: _Options, payload):
  """-> (frames uint8 [n, h, w, 3] or JPEG strings [n], label ids int64 [L])."""
  if source.kind == 'frames':
    return payload
  context, sequence = tf.io.parse_single_sequence_example(
      payload[0], context_features={opts.label_key: tf.io.VarLenFeature(tf.int64)},
      sequence_features={opts.frames_key: tf.io.FixedLenSequenceFeature([], tf.string)})
  return sequence[opts.frames_key], tf.sparse.to_dense(context[opts.label_key])


def _take(source: _Source, frames, indices):
  """Frames at `indices` (looped modulo the length) as float32 [len(indices), h, w, 3] in [0, 1]."""
  frames = tf.gather(frames, indices % tf.shape(frames, out_type=indices.dtype)[0])
  if source.kind == 'serialized':  # Decode only the frames a clip uses, not the whole video.
    frames = tf.map_fn(lambda s: tf.io.decode_jpeg(s, channels=3), frames,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return tf.image.convert_image_dtype(frames, tf.float32)


def _labels(ids, where, opts: _Options, num_classes: int):
  in_range = tf.reduce_all((ids >= 0) & (ids < num_classes))
  check = tf.debugging.Assert(in_range, [f'label ids outside [0, {num_classes}):', ids, where])
  with tf.control_dependencies([check]):
    ids = tf.identity(ids)
  if opts.multi_label:
    # Multi-hot [K]; a video with no label is all zeros (a negative for every class).
    return tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_classes, dtype=tf.float32), axis=0), 1.0)
  check = tf.debugging.Assert(tf.size(ids) > 0, ['video without a label:', where])
  with tf.control_dependencies([check]):
    return tf.cast(ids[0], tf.int32)


def _normalise(x, opts: _Options):
  return (x - tf.constant(opts.mean)) / tf.constant(opts.std)


def _resize(frames, size):
  return tf.image.resize(frames, size, method='bilinear', antialias=True)


def _train_clip(source, opts, q, frames, num_frames):
  """One training clip: random start, Inception crop shared by all frames, optional flip."""
  start_seed, crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(_seed(opts.seed, _AUGMENT, q), 3))
  span = (opts.num_frames - 1) * opts.stride + 1
  max_start = tf.maximum(num_frames - span, 0)
  start = tf.random.stateless_uniform([], start_seed, 0, max_start + 1, dtype=tf.int32)
  clip = _take(source, frames, start + tf.range(opts.num_frames) * opts.stride)
  if opts.augment:
    # Scale jitter: a box of [crop_min_area, 1] of the frame, aspect ratio in [3/4, 4/3].
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(clip)[1:], bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(opts.crop_min_area, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    clip = tf.slice(clip, tf.concat([[0], begin], 0), tf.concat([[-1], box], 0))
    clip = _resize(clip, opts.image_size)
    if opts.random_flip:
      flip = tf.random.stateless_uniform([], flip_seed) < 0.5
      clip = tf.cond(flip, lambda: tf.reverse(clip, [2]), lambda: clip)
    return clip
  return _views(clip[None], opts, crops=1)[0]


def _views(clips, opts: _Options, crops: int):
  """`[K, T, h, w, 3]` -> `[K * crops, T, H, W, 3]`: resize the short side, then 1 centre crop or
  3 crops (start / centre / end of the longer side)."""
  k, t = clips.shape[0], opts.num_frames
  frames = tf.reshape(clips, tf.concat([[-1], tf.shape(clips)[2:]], 0))
  ch, cw = opts.image_size
  short = opts.eval_short_side or max(ch, cw)
  hw = tf.cast(tf.shape(frames)[1:3], tf.float32)
  scale = short / tf.reduce_min(hw)
  new = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), [ch, cw])
  frames = _resize(frames, new)
  h, w = new[0], new[1]
  if crops == 1:
    offsets = [((h - ch) // 2, (w - cw) // 2)]
  else:
    along_w = w - cw >= h - ch
    offsets = []
    for frac in (0, 1, 2):  # start, centre, end of the longer side
      top = tf.where(along_w, (h - ch) // 2, (h - ch) * frac // 2)
      left = tf.where(along_w, (w - cw) * frac // 2, (w - cw) // 2)
      offsets.append((top, left))
  out = [frames[:, top:top + ch, left:left + cw] for top, left in offsets]
  out = tf.stack([tf.reshape(o, [k, t, ch, cw, 3]) for o in out], axis=1)  # [K, crops, T, ...]
  return tf.reshape(out, [k * crops, t, ch, cw, 3])


def _eval_views(source, opts, frames, num_frames):
  """K clips spread uniformly over the video x eval_crops crops -> `[K * crops, T, H, W, 3]`."""
  span = (opts.num_frames - 1) * opts.stride + 1
  max_start = tf.cast(tf.maximum(num_frames - span, 0), tf.float32)
  starts = tf.cast(tf.round(tf.linspace(0.0, max_start, opts.eval_clips)), tf.int32)
  indices = starts[:, None] + tf.range(opts.num_frames)[None, :] * opts.stride
  clips = _take(source, frames, tf.reshape(indices, [-1]))
  clips = tf.reshape(clips, tf.concat([[opts.eval_clips, opts.num_frames],
                                       tf.shape(clips)[1:]], 0))
  return _views(clips, opts, opts.eval_crops)


def _num_frames(frames, where):
  n = tf.shape(frames)[0]
  check = tf.debugging.Assert(n > 0, ['video without frames:', where])
  with tf.control_dependencies([check]):
    return tf.identity(n)


# ---------------------------------------------------------------------------------------------
# Iterators.


def _find_bad_frame(source, opts, rows):
  """Decodes every frame of the given videos eagerly; raises ValueError naming the first bad one."""
  if source.kind != 'serialized':
    return
  for i in rows:
    frames, _ = _parse(source, opts, tuple(tf.constant(x) for x in source.read(i)))
    for f in range(int(tf.shape(frames)[0])):
      try:
        tf.io.decode_jpeg(frames[f], channels=3)
      except tf.errors.OpError as e:
        raise ValueError(f'{source.where(i)}: frame {f} of {opts.frames_key!r} is not a '
                         f'decodable JPEG ({e.message})') from None


def _with_options(ds):
  options = tf.data.Options()
  options.deterministic = True  # Bit-identical batches across runs and resumes.
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _train_rows(n, opts, start_step, global_batch, local_batch, process_index):
  """Endless (q, video index) of this process's rows from batch `start_step`."""
  perm = functools.lru_cache(maxsize=2)(
      lambda e: np.random.default_rng([opts.seed, _ORDER, e]).permutation(n))
  for step in itertools.count(start_step):
    for row in range(local_batch):
      q = step * global_batch + process_index * local_batch + row
      e, j = divmod(q, n)
      yield q, int(perm(e)[j])


def create_train_iterator(config, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1):
  """Endless iterator of {'inputs': f32 [L, T, H, W, 3], 'labels'}, L = batch_size / P.

  Batch k is the same on every run with the same config; start_step=k starts at batch k.
  """
  opts = _options(config)
  local_batch = _local_batch(config.batch_size, 'batch_size', process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  source = _source(opts, train=True)
  if source.size == 0:
    raise ValueError(f'{source.description} has no videos')
  rows = functools.partial(_train_rows, source.size, opts, global_batch=config.batch_size,
                           local_batch=local_batch, process_index=process_index)

  def generate():
    for q, i in rows(start_step):
      yield (q, i, source.where(i), *source.read(i))

  @tf.autograph.experimental.do_not_convert  # Plain TF ops; no Python control flow to convert.
  def process(q, i, where, *payload):
    del i
    frames, ids = _parse(source, opts, payload)
    clip = _train_clip(source, opts, q, frames, _num_frames(frames, where))
    return {'inputs': _normalise(clip, opts),
            'labels': _labels(ids, where, opts, source.num_classes)}
  spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string),
          *_signature(source))
  ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _with_options(ds.batch(local_batch, drop_remainder=True))

  def diagnose(batches_done):
    # The failing batch (or, with prefetching, the next one): rows are a pure function of step.
    window = itertools.islice(rows(start_step + batches_done), 2 * local_batch)
    _find_bad_frame(source, opts, [i for _, i in window])
  return input_pipeline.BatchIterator(ds, diagnose)


def _eval_rows(n, global_batch, local_batch, process_index):
  """(video id or -1 for padding) of this process's rows; every process gets the same count."""
  for b in range(math.ceil(n / global_batch)):
    for row in range(local_batch):
      v = b * global_batch + process_index * local_batch + row
      yield v if v < n else -1


def create_eval_iterator(config, process_index: int = 0, process_count: int = 1):
  """Finite iterator of whole videos: {'inputs': f32 [L, V, T, H, W, 3], 'labels',
  'mask': f32 [L], 'video_id': i32 [L]}, L = eval_batch_size / P videos.

  Every eval video appears exactly once over all processes (mask 1); padding rows have mask 0,
  video_id -1 and zero inputs.
  """
  opts = _options(config)
  local_batch = _local_batch(config.eval_batch_size, 'eval_batch_size', process_index,
                             process_count)
  source = _source(opts, train=False)
  rows = functools.partial(_eval_rows, source.size, config.eval_batch_size, local_batch,
                           process_index)

  def generate():
    for v in rows():
      i = max(v, 0)  # Padding reuses video 0's data, zeroed below, so shapes stay uniform.
      yield (v, source.where(i), *source.read(i))

  @tf.autograph.experimental.do_not_convert  # Plain TF ops; no Python control flow to convert.
  def process(v, where, *payload):
    frames, ids = _parse(source, opts, payload)
    views = _eval_views(source, opts, frames, _num_frames(frames, where))
    mask = tf.cast(v >= 0, tf.float32)
    return {'inputs': _normalise(views, opts) * mask,
            'labels': _labels(ids, where, opts, source.num_classes),
            'mask': mask, 'video_id': tf.cast(v, tf.int32)}
  spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string), *_signature(source))
  ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _with_options(ds.batch(local_batch, drop_remainder=True))

  def diagnose(batches_done):
    window = list(rows())[batches_done * local_batch:(batches_done + 2) * local_batch]
    _find_bad_frame(source, opts, [v for v in window if v >= 0])
  return input_pipeline.BatchIterator(ds, diagnose)


def get_dataset_info(config) -> VideoDatasetInfo:
  """Class count, split sizes (videos), clip shape and views per eval video."""
  opts = _options(config)
  train, evaluation = _source(opts, train=True), _source(opts, train=False)
  return VideoDatasetInfo(
      num_classes=train.num_classes, num_train=train.size, num_eval=evaluation.size,
      image_shape=(opts.num_frames, *opts.image_size, 3),
      num_views=opts.eval_clips * opts.eval_crops, multi_label=opts.multi_label)
