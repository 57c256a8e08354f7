"""Video datasets (`VideoData`): clips for training, multi-view clips for evaluation (§5, §6.1.1).

Eval examples are whole videos, each with V = eval_clips * eval_crops views (the "4x3 = 12"
views of Tables 8, 9): eval_clips clips spread uniformly over the video, times 1 centre crop or 3
crops along the longer side, so eval inputs are [L, V, T, H, W, 3]. A batch holds whole videos,
so a video's views are never split between processes; average them with
`token_learner.train.losses.average_views` before any metric. Training takes one clip per video: a
random start, an Inception crop shared by all frames (scale jitter) and an optional flip.

Sources (`config.dataset.name`), all random access (a permutation per epoch):
- 'moving_digits': offline default, generated from scikit-learn's digits (see `digits`).
- 'ucf101' (or any TFDS video dataset with 'video' / 'label' features, `config.dataset.tfds_name`)
  through `tfds.data_source` (the dataset must be prepared with `file_format='array_record'`).
- 'dmvr' (and 'charades', 'avid', 'kinetics*'): DMVR-style TFRecords of `tf.train.SequenceExample`,
  JPEG frames in the feature list `frames_key`, int64 label ids in the context `label_key`.
  The files are indexed once (record offsets from the TFRecord length headers, no payload read),
  which gives random access: uncompressed TFRecords only, CRCs are not checked.

Short videos are looped (frame index modulo the length), never dropped. A frame that is not a
decodable JPEG stops the iterator with a ValueError naming the file and record.
"""
import dataclasses
import struct
import threading

import numpy as np
import tensorflow as tf

from token_learner.data import digits, guide, stream
from token_learner.data.config import DatasetInfo, VideoData


@dataclasses.dataclass
class _VideoSource(stream.Source):
  """Records (index, where, *payload); payload is (frames uint8 [n, h, w, 3], label ids int64
  [L]) for kind 'frames', or (one serialized SequenceExample,) for kind 'serialized'."""
  kind: str = 'frames'


def _random_access(description: str, size: int, num_classes: int, kind: str,
                   read) -> _VideoSource:
  """A source from a Python `read(i) -> (where, *payload)`, called inside tf.data."""
  frames = kind == 'frames'
  dtypes = [tf.string, tf.uint8, tf.int64] if frames else [tf.string, tf.string]
  shapes = [[], [None, None, None, 3], [None]] if frames else [[], []]
  lock = threading.Lock()  # Readers hold open files; tf.data calls them from several threads.

  def py_read(i):
    with lock:
      where, *payload = read(int(i))
    return [np.asarray(where.encode()), *payload]

  def lookup(i):
    out = tf.numpy_function(py_read, [i], dtypes)
    return tuple(tf.ensure_shape(t, s) for t, s in zip(out, shapes))
  return _VideoSource(description, size, num_classes, lookup=lookup, kind=kind)


def _moving_digits_source(cfg: VideoData, split: str) -> _VideoSource:
  data = digits.MovingDigits(split, directions=cfg.directions,
                             digits_per_video=cfg.digits_per_video)
  return _random_access(
      f'moving_digits {split!r}', len(data), data.num_classes, 'frames',
      lambda i: (f'moving_digits {split} video {i}', data.video(i),
                 np.array(data.labels(i), np.int64)))


def _tfds_source(cfg: VideoData, split: str) -> _VideoSource:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  field = 'config.dataset.' + ('tfds_name' if cfg.tfds_name != cfg.name else 'name')
  builder = guide.tfds_builder(cfg.tfds_name, cfg.data_dir, field)
  source = tfds.data_source(cfg.tfds_name, split=split, data_dir=cfg.data_dir, download=False)
  num_classes = cfg.num_classes
  if num_classes is None:
    num_classes = builder.info.features['label'].num_classes

  def read(i):
    example = source[i]
    return (f'tfds {cfg.tfds_name} {split} example {i}', np.asarray(example['video'], np.uint8),
            np.array([example['label']], np.int64))
  return _random_access(f'tfds {cfg.tfds_name} {split!r}', len(source), num_classes, 'frames',
                        read)


class NoFilesMatch(ValueError):
  """A TFRecord glob that matches no file."""


def index_tfrecords(pattern: str):
  """[(path, offset, length, index_in_file)] of every record of the files matching `pattern`.

  A TFRecord is `uint64 length | uint32 crc | data | uint32 crc`; only the headers are read.
  Comma-separated patterns are joined; files are sorted so the order is fixed.
  """
  paths = sorted(p for part in pattern.split(',') if part for p in tf.io.gfile.glob(part))
  if not paths:
    raise NoFilesMatch(f'No files match {pattern!r}')
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


def _dmvr_source(cfg: VideoData, field: str) -> _VideoSource:
  pattern = getattr(cfg, field)
  if not pattern:  # Checked here, not in the config: FLOPs and config checks need no files.
    raise ValueError(guide.dmvr_missing(cfg.name, field, pattern))
  try:
    records = index_tfrecords(pattern)
  except NoFilesMatch:
    raise ValueError(guide.dmvr_missing(cfg.name, field, pattern)) from None
  files = {}

  def read(i):
    path, offset, length, k = records[i]
    if path not in files:  # One open handle per file, reused.
      files[path] = tf.io.gfile.GFile(path, 'rb')
    files[path].seek(offset)
    return f'{path} record {k}', files[path].read(length)
  return _random_access(f'{cfg.name} {pattern!r}', len(records), cfg.num_classes, 'serialized',
                        read)


def _source(cfg: VideoData, train: bool) -> _VideoSource:
  split = cfg.train_split if train else cfg.eval_split
  if cfg.source == 'moving_digits':
    return _moving_digits_source(cfg, split)
  if cfg.source == 'tfds':
    return _tfds_source(cfg, split)
  return _dmvr_source(cfg, 'file_pattern_train' if train else 'file_pattern_eval')


# ---------------------------------------------------------------------------------------------
# Video processing (graph mode, inside tf.data map).


def _parse(source: _VideoSource, cfg: VideoData, payload):
  """-> (frames uint8 [n, h, w, 3] or JPEG strings [n], label ids int64 [L])."""
  if source.kind == 'frames':
    return payload
  context, sequence = tf.io.parse_single_sequence_example(
      payload[0], context_features={cfg.label_key: tf.io.VarLenFeature(tf.int64)},
      sequence_features={cfg.frames_key: tf.io.FixedLenSequenceFeature([], tf.string)})
  return sequence[cfg.frames_key], tf.sparse.to_dense(context[cfg.label_key])


def _take(source: _VideoSource, frames, indices):
  """Frames at `indices` (looped modulo the length) as uint8 [len(indices), h, w, 3]: cropped
  in uint8, made float by the resize (`stream.resize`)."""
  frames = tf.gather(frames, indices % tf.shape(frames, out_type=indices.dtype)[0])
  if source.kind == 'serialized':  # Decode only the frames a clip uses, not the whole video.
    frames = tf.map_fn(lambda s: tf.io.decode_jpeg(s, channels=3), frames,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return frames


def _labels(ids, where, cfg: VideoData, num_classes: int):
  in_range = tf.reduce_all((ids >= 0) & (ids < num_classes))
  check = tf.debugging.Assert(in_range, [f'label ids outside [0, {num_classes}):', ids, where])
  with tf.control_dependencies([check]):
    ids = tf.identity(ids)
  if cfg.multi_label:
    # Multi-hot [K]; a video with no label is all zeros (a negative for every class).
    return tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_classes, dtype=tf.float32), axis=0), 1.0)
  check = tf.debugging.Assert(tf.size(ids) > 0, ['video without a label:', where])
  with tf.control_dependencies([check]):
    return tf.cast(ids[0], tf.int32)


def _num_frames(frames, where):
  n = tf.shape(frames)[0]
  check = tf.debugging.Assert(n > 0, ['video without frames:', where])
  with tf.control_dependencies([check]):
    return tf.identity(n)


def _train_clip(source, cfg: VideoData, seed, frames, num_frames):
  """One training clip: random start, Inception crop shared by all frames, optional flip."""
  start_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  span = (cfg.num_frames - 1) * cfg.stride + 1
  max_start = tf.maximum(num_frames - span, 0)
  start = tf.random.stateless_uniform([], start_seed, 0, max_start + 1, dtype=tf.int32)
  clip = _take(source, frames, start + tf.range(cfg.num_frames) * cfg.stride)
  if not cfg.augment:
    return _views(clip[None], cfg, crops=1)[0]
  # Scale jitter: the same box of every frame.
  begin, box = stream.inception_crop_box(tf.shape(clip)[1:], crop_seed, cfg.crop_min_area)
  clip = tf.slice(clip, tf.concat([[0], begin], 0), tf.concat([[-1], box], 0))
  clip = stream.resize(clip, cfg.image_size)
  if cfg.random_flip:
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    clip = tf.cond(flip, lambda: tf.reverse(clip, [2]), lambda: clip)
  return clip


def _views(clips, cfg: VideoData, crops: int):
  """`[K, T, h, w, 3]` -> `[K * crops, T, H, W, 3]`: resize the short side (eval_short_side,
  default max(H, W)), then 1 centre crop or 3 crops (start / centre / end of the longer side)."""
  k, t = clips.shape[0], cfg.num_frames
  ch, cw = cfg.image_size
  frames = tf.reshape(clips, tf.concat([[-1], tf.shape(clips)[2:]], 0))
  frames, hw = stream.resize_short_side(frames, cfg.eval_short_side or max(ch, cw),
                                        cfg.image_size)
  out = [frames[:, top:top + ch, left:left + cw]
         for top, left in stream.crop_offsets(hw, cfg.image_size, crops)]
  out = tf.stack([tf.reshape(o, [k, t, ch, cw, 3]) for o in out], axis=1)  # [K, crops, T, ...]
  return tf.reshape(out, [k * crops, t, ch, cw, 3])


def _eval_views(source, cfg: VideoData, frames, num_frames):
  """K clips spread uniformly over the video x eval_crops crops -> `[K * crops, T, H, W, 3]`."""
  span = (cfg.num_frames - 1) * cfg.stride + 1
  max_start = tf.cast(tf.maximum(num_frames - span, 0), tf.float32)
  starts = tf.cast(tf.round(tf.linspace(0.0, max_start, cfg.eval_clips)), tf.int32)
  indices = starts[:, None] + tf.range(cfg.num_frames)[None, :] * cfg.stride
  clips = _take(source, frames, tf.reshape(indices, [-1]))
  clips = tf.reshape(clips, tf.concat([[cfg.eval_clips, cfg.num_frames],
                                       tf.shape(clips)[1:]], 0))
  return _views(clips, cfg, cfg.eval_crops)


def _processor(source: _VideoSource, cfg: VideoData, make_inputs):
  """(q, index, where, *payload) -> {'inputs': make_inputs(q, frames, n), 'labels'}."""
  @tf.autograph.experimental.do_not_convert  # Plain TF ops; no Python control flow to convert.
  def process(q, index, where, *payload):
    del index
    frames, ids = _parse(source, cfg, payload)
    inputs = make_inputs(q, frames, _num_frames(frames, where))
    return {'inputs': stream.to_pixels(inputs),
            'labels': _labels(ids, where, cfg, source.num_classes)}
  return process


def _check(source: _VideoSource, cfg: VideoData):
  """Decodes every frame of a record eagerly; raises a ValueError naming the first bad one."""
  def check(q, index, where, *payload):
    del q, index
    if source.kind != 'serialized':
      return
    frames, _ = _parse(source, cfg, tuple(tf.constant(x) for x in payload))
    for f in range(int(tf.shape(frames)[0])):
      try:
        tf.io.decode_jpeg(frames[f], channels=3)
      except tf.errors.OpError as e:
        raise ValueError(f'{where.decode()}: frame {f} of {cfg.frames_key!r} is not a '
                         f'decodable JPEG ({e.message})') from None
  return check


# ---------------------------------------------------------------------------------------------
# Public entry points (through token_learner.data).


def train_iterator(cfg: VideoData, *, seed: int, start_step: int, global_batch: int,
                   local_batch: int, process_index: int, process_count: int):
  """Endless {'inputs': uint8 [L, T, H, W, 3], 'labels'} (see token_learner.data)."""
  del process_count
  source = _source(cfg, train=True)
  process = _processor(source, cfg, lambda q, frames, n: _train_clip(
      source, cfg, stream.augment_seed(seed, q), frames, n))
  return stream.train_batches(
      source, process, _check(source, cfg), seed=seed, start_step=start_step,
      global_batch=global_batch, local_batch_size=local_batch, row_block=process_index)


def eval_input(cfg: VideoData, *, global_batch: int, local_batch: int, process_index: int,
               process_count: int):
  """Whole videos once per pass: {'inputs': uint8 [L, V, T, H, W, 3], 'labels', 'mask'}."""
  del process_count
  source = _source(cfg, train=False)
  process = _processor(source, cfg, lambda q, frames, n: _eval_views(source, cfg, frames, n))
  return stream.eval_batches(
      source, process, _check(source, cfg), global_batch=global_batch,
      local_batch_size=local_batch, row_block=process_index)


def dataset_info(cfg: VideoData) -> DatasetInfo:
  """Class count, split sizes (videos), clip shape and views per eval video."""
  train, evaluation = _source(cfg, train=True), _source(cfg, train=False)
  return DatasetInfo(num_classes=train.num_classes, num_train=train.size,
                     num_eval=evaluation.size, example_shape=cfg.example_shape,
                     num_views=cfg.num_views, multi_label=cfg.multi_label)
