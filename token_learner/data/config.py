"""`config.dataset` as a typed frozen dataclass: `ImageData` or `VideoData` (chosen by name).

`from_dict(section, num_classes=...)` is the only place a config section becomes dataset
options: a misspelt key is an error naming it, every default lives in a dataclass field (or, where
it depends on the dataset, in `_DEFAULTS`), and `__post_init__` validates values with errors
naming `config.dataset.<field>`, so a bad config fails before any data is read.
"""
import dataclasses
import math
import os
from typing import Optional, Tuple, Union

from token_learner import fields
from token_learner.data import guide

WHERE = 'config.dataset'
# Video datasets (§5, §6.1.1). Any other name is an image dataset: 'digits', 'image_folder' or
# a TFDS name.
MOVING_DIGITS = 'moving_digits'
TFDS_VIDEO_NAMES = ('ucf101',)
DMVR_NAMES = ('dmvr', 'charades', 'avid', 'kinetics400', 'kinetics600')
VIDEO_NAMES = (MOVING_DIGITS,) + TFDS_VIDEO_NAMES + DMVR_NAMES

# Defaults that depend on the dataset: {field: {dataset name, else 'image' / 'video', else '*'}}.
_DEFAULTS = {
    'name': {'image': 'digits', 'video': MOVING_DIGITS},
    'image_size': {'digits': 8, MOVING_DIGITS: 32, '*': 224},
    'crop_min_area': {'image': 0.08, 'video': 0.3},
    # A mirrored moving digit is another symbol moving the other way: no flips.
    'random_flip': {MOVING_DIGITS: False, '*': True},
}


def _default(section, field: str):
  table = _DEFAULTS[field]
  modality = 'video' if section.is_video else 'image'
  for key in (section.name, modality, '*'):
    if key in table:
      return table[key]
  raise KeyError(field)


def _check_type(field: str, value, kind: type):
  if not isinstance(value, kind):
    raise ValueError(f'{WHERE}.{field}={value!r} must be a {kind.__name__}')
  return value


def _triple(field: str, value, positive: bool) -> Tuple[float, float, float]:
  try:
    out = tuple(fields.check_number(f'{WHERE}.{field}', v, minimum=-math.inf) for v in value)
  except TypeError:
    out = ()
  if len(out) != 3 or (positive and min(out) <= 0):
    raise ValueError(f'{WHERE}.{field}={value!r} must be 3 floats (one per RGB channel)'
                     + (', each > 0' if positive else ''))
  return out


@dataclasses.dataclass(frozen=True)
class _Data:
  """Fields of both modalities. `None` defaults are resolved from `_DEFAULTS`."""
  name: Optional[str] = None
  data_dir: Optional[str] = None  # TFDS data directory.
  train_split: str = 'train'
  eval_split: str = 'test'
  image_size: Union[int, Tuple[int, int], None] = None  # S or (H, W); normalised to (H, W).
  crop_min_area: Optional[float] = None  # Inception crop: area in [crop_min_area, 1].
  augment: bool = True
  mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)  # inputs = (pixels in [0, 1] - mean) / std
  std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
  # The model's head size (config.model.num_classes), passed by the boundary: DMVR records carry
  # no class count; other sources read theirs from the data.
  num_classes: Optional[int] = fields.derived()

  @property
  def is_video(self) -> bool:
    return isinstance(self, VideoData)

  def __post_init__(self):
    for field in ('name', 'image_size', 'crop_min_area'):
      if getattr(self, field) is None:
        fields.set_field(self, field, _default(self, field))
    for field in ('name', 'train_split', 'eval_split'):
      _check_type(field, getattr(self, field), str)
    if self.data_dir is not None:
      _check_type('data_dir', self.data_dir, str)
    size = self.image_size
    size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(size, (tuple, list)) or len(size) != 2:
      raise ValueError(f'{WHERE}.image_size={self.image_size!r} must be an int or (H, W)')
    fields.set_field(self, 'image_size',
                     tuple(fields.check_int(f'{WHERE}.image_size', s, 1) for s in size))
    area = self.crop_min_area
    if not isinstance(area, (int, float)) or isinstance(area, bool) or not 0.0 < area <= 1.0:
      raise ValueError(f'{WHERE}.crop_min_area={area!r} must be in (0, 1]')
    fields.set_field(self, 'crop_min_area', float(area))
    _check_type('augment', self.augment, bool)
    fields.set_field(self, 'mean', _triple('mean', self.mean, positive=False))
    fields.set_field(self, 'std', _triple('std', self.std, positive=True))
    if self.num_classes is not None:
      fields.check_int('config.model.num_classes', self.num_classes, 1)

  @property
  def example_shape(self) -> tuple:
    """Shape of one preprocessed example (one view): (H, W, 3) or (T, H, W, 3)."""
    return (*self.image_size, 3)


@dataclasses.dataclass(frozen=True)
class ImageData(_Data):
  """An image dataset: 'digits' (scikit-learn, offline), 'image_folder' or a TFDS name."""
  root: Optional[str] = None  # image_folder: ROOT/<split>/<class>/*.png|jpg|jpeg
  skip_corrupt: bool = False  # Drop undecodable images (scanned once) instead of failing.
  shuffle_buffer: int = 10_000  # TFDS: the seeded per-epoch shuffle of the record stream.
  per_process_split: bool = False  # TFDS / in-memory: each process reads its own part.
  # TFDS train split: read as this many contiguous shards, each shuffled by its own seeded
  # buffer; batch rows come in `read_shards` blocks, block s from shard s, and each of P
  # processes reads read_shards / P shards (1/P of the records). Batches depend on
  # `read_shards`, not on P: a fixed value (a multiple of every P used) keeps them the same
  # across process counts. None: P (each process reads 1/P; batches depend on P). 1: one
  # stream that every process reads whole (batches independent of P).
  read_shards: Optional[int] = None
  # TFDS: the dataset of eval_split when it is not `name`, e.g. 'imagenet2012_real' (its
  # 'validation' split: ImageNet val with ReaL labels; the trainer then reports real_accuracy).
  eval_name: Optional[str] = None

  def __post_init__(self):
    super().__post_init__()
    if self.name in VIDEO_NAMES:
      raise ValueError(f'{WHERE}.name={self.name!r} is a video dataset: use VideoData')
    if self.eval_name is not None:
      _check_type('eval_name', self.eval_name, str)
      if self.source != 'tfds':
        raise ValueError(f'{WHERE}.eval_name={self.eval_name!r} needs a TFDS {WHERE}.name')
    for field in ('skip_corrupt', 'per_process_split'):
      _check_type(field, getattr(self, field), bool)
    fields.check_int(f'{WHERE}.shuffle_buffer', self.shuffle_buffer, 1)
    if self.read_shards is not None:
      fields.check_int(f'{WHERE}.read_shards', self.read_shards, 1)
    if self.source == 'image_folder':
      if not self.root:
        raise ValueError(f"{WHERE}.root must be set when {WHERE}.name='image_folder'.")
      if not os.path.isdir(self.root):
        raise ValueError(guide.image_folder_missing(
            self.root, f'{WHERE}.root={self.root!r} is not a directory', self.train_split,
            self.eval_split))

  def num_read_shards(self, global_batch: int, process_count: int) -> int:
    """`read_shards` resolved for a run (1 where it does not apply); errors name the field."""
    if self.source != 'tfds' or self.per_process_split:
      return 1
    k = process_count if self.read_shards is None else self.read_shards
    if k > 1 and (k % process_count or global_batch % k):
      raise ValueError(f'{WHERE}.read_shards={k} must be 1 (one stream, read whole by every '
                       f'process) or a multiple of the process count ({process_count}) that '
                       f'divides config.batch_size={global_batch}')
    return k

  @property
  def source(self) -> str:
    """'digits', 'image_folder' or 'tfds'."""
    return self.name if self.name in ('digits', 'image_folder') else 'tfds'


@dataclasses.dataclass(frozen=True)
class VideoData(_Data):
  """A video dataset: clips for training, eval_clips x eval_crops views per eval video."""
  multi_label: bool = False  # Multi-hot labels (Charades), sigmoid loss + mAP.
  num_frames: int = 8  # T frames per clip...
  stride: int = 1  # ...taken every `stride` frames.
  eval_clips: int = 1  # Clips per eval video, spread uniformly over it...
  eval_crops: int = 1  # ...times 1 centre crop or 3 crops along the longer side.
  eval_short_side: Optional[int] = None  # Eval resize of the short side; None: max(H, W).
  random_flip: Optional[bool] = None
  file_pattern_train: str = ''  # DMVR: comma-separated globs of TFRecord files.
  file_pattern_eval: str = ''
  frames_key: str = 'image/encoded'  # DMVR: feature list of JPEG frames...
  label_key: str = 'clip/label/index'  # ...and context feature of int64 label ids.
  tfds_name: Optional[str] = None  # TFDS video dataset; None: `name`.
  directions: int = 4  # moving_digits: 2 (right, left) or 4 directions.
  # moving_digits: digits overlaid per video; > 1 is multi-label (labels = their set of
  # (digit, direction) classes), needs multi_label=True.
  digits_per_video: int = 1

  def __post_init__(self):
    if self.random_flip is None:
      fields.set_field(self, 'random_flip', _default(self, 'random_flip'))
    if self.tfds_name is None:
      fields.set_field(self, 'tfds_name', self.name or _default(self, 'name'))
    super().__post_init__()
    if self.name not in VIDEO_NAMES:
      raise ValueError(f'{WHERE}.name={self.name!r} is not a video dataset {list(VIDEO_NAMES)}')
    for field in ('multi_label', 'random_flip'):
      _check_type(field, getattr(self, field), bool)
    for field in ('num_frames', 'stride', 'eval_clips'):
      fields.check_int(f'{WHERE}.{field}', getattr(self, field), 1)
    fields.check_choice(f'{WHERE}.eval_crops', self.eval_crops, (1, 3))
    if self.eval_short_side is not None:
      fields.check_int(f'{WHERE}.eval_short_side', self.eval_short_side, 1)
    fields.check_choice(f'{WHERE}.directions', self.directions, (2, 4))
    fields.check_int(f'{WHERE}.digits_per_video', self.digits_per_video, 1)
    if self.digits_per_video > 1 and not (self.name == MOVING_DIGITS and self.multi_label):
      raise ValueError(f'{WHERE}.digits_per_video={self.digits_per_video} needs '
                       f"{WHERE}.name='moving_digits' and {WHERE}.multi_label=True")
    for field in ('file_pattern_train', 'file_pattern_eval'):
      fields.set_field(self, field, _check_type(field, getattr(self, field) or '', str))
    for field in ('frames_key', 'label_key', 'tfds_name'):
      _check_type(field, getattr(self, field), str)
    if self.source == 'dmvr':
      if self.num_classes is None:
        raise ValueError(f'config.model.num_classes must be set for {WHERE}.name='
                         f'{self.name!r}: DMVR records carry no class count.')

  @property
  def source(self) -> str:
    """'moving_digits', 'tfds' (`tfds.data_source`) or 'dmvr' (TFRecords)."""
    if self.name == MOVING_DIGITS:
      return MOVING_DIGITS
    return 'tfds' if self.name in TFDS_VIDEO_NAMES or self.tfds_name != self.name else 'dmvr'

  @property
  def num_views(self) -> int:
    return self.eval_clips * self.eval_crops

  @property
  def example_shape(self) -> tuple:
    return (self.num_frames, *self.image_size, 3)


def from_dict(section, *, num_classes: Optional[int] = None) -> Union[ImageData, VideoData]:
  """`config.dataset` (a dict) -> VideoData if its name is a video dataset, else ImageData.

  `num_classes` is the model's head size (`config.model.num_classes`); DMVR sources need it.
  """
  section = dict(section or {})
  cls = VideoData if section.get('name') in VIDEO_NAMES else ImageData
  return fields.from_dict(cls, section, WHERE, num_classes=num_classes)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs before it sees data: head size, split sizes, input shape."""
  num_classes: int
  num_train: int  # examples (videos for video datasets), as stored
  num_eval: int
  example_shape: tuple  # (H, W, 3) or (T, H, W, 3): one view after preprocessing.
  num_views: int = 1  # eval views per example: eval_clips * eval_crops for videos.
  multi_label: bool = False
  # image_folder: files of its split folders left out, hidden (a leading '.') or with an
  # extension other than .png/.jpg/.jpeg.
  ignored_hidden: int = 0
  ignored_other: int = 0
