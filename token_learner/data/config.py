"""`config.dataset` as a typed frozen dataclass: `ImageData` or `VideoData` (chosen by name).

`from_dict(section, num_classes=...)` is the only place a config section becomes dataset
options: a misspelt key is an error naming it, every default lives in a dataclass field (or, where
it depends on the dataset, in `_DEFAULTS`), and `__post_init__` validates values with errors
naming `config.dataset.<field>`, so a bad config fails before any data is read.
"""
import dataclasses
import math
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


@dataclasses.dataclass(frozen=True)
class _Data:
  """Fields of both modalities. `None` defaults are resolved from `_DEFAULTS`."""
  name: Optional[str] = None
  data_dir: Optional[str] = None  # TFDS data directory.
  train_split: str = 'train'
  eval_split: str = 'test'
  # S or (H, W); normalised to (H, W).
  image_size: Union[int, Tuple[int, int], None] = fields.field(None, custom=True)
  # Inception crop: area in [crop_min_area, 1].
  crop_min_area: Optional[float] = fields.field(None, maximum=1.0, above_min=True)
  augment: bool = True
  # inputs = (pixels in [0, 1] - mean) / std, one per RGB channel
  mean: Tuple[float, float, float] = fields.field((0.5, 0.5, 0.5), minimum=-math.inf)
  std: Tuple[float, float, float] = fields.field((0.5, 0.5, 0.5), above_min=True)
  # The model's head size (config.model.num_classes, validated there), passed by the boundary:
  # DMVR records carry no class count; other sources read theirs from the data.
  num_classes: Optional[int] = fields.derived()

  @property
  def is_video(self) -> bool:
    return isinstance(self, VideoData)

  def __post_init__(self):
    for field in ('name', 'image_size', 'crop_min_area'):
      if getattr(self, field) is None:
        fields.set_field(self, field, _default(self, field))
    fields.validate(self, WHERE)
    size = self.image_size
    size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(size, (tuple, list)) or len(size) != 2:
      raise ValueError(f'{WHERE}.image_size={self.image_size!r} must be an int or (H, W)')
    fields.set_field(self, 'image_size',
                     tuple(fields.check_int(f'{WHERE}.image_size', s, 1) for s in size))

  @property
  def example_shape(self) -> tuple:
    """Shape of one preprocessed example (one view): (H, W, 3) or (T, H, W, 3)."""
    return (*self.image_size, 3)


@dataclasses.dataclass(frozen=True)
class ImageData(_Data):
  """An image dataset: 'digits' (scikit-learn, offline), 'image_folder' or a TFDS name."""
  # image_folder: ROOT/<split>/<class>/<images> (guide.IMAGE_EXTENSIONS), a folder or a URL.
  root: Optional[str] = None
  skip_corrupt: bool = False  # Drop undecodable images (scanned once) instead of failing.
  # TFDS: the seeded per-epoch shuffle of the record stream.
  shuffle_buffer: int = fields.field(10_000, minimum=1)
  per_process_split: bool = False  # TFDS / in-memory: each process reads its own part.
  # TFDS train split: read as this many contiguous shards, each shuffled by its own seeded
  # buffer; batch rows come in `read_shards` blocks, block s from shard s, and each of P
  # processes reads read_shards / P shards (1/P of the records). Batches depend on
  # `read_shards`, not on P: a fixed value (a multiple of every P used) keeps them the same
  # across process counts. None: P (each process reads 1/P; batches depend on P). 1: one
  # stream that every process reads whole (batches independent of P).
  read_shards: Optional[int] = fields.field(None, minimum=1)
  # TFDS: the dataset of eval_split when it is not `name`, e.g. 'imagenet2012_real' (its
  # 'validation' split: ImageNet val with ReaL labels; the trainer then reports real_accuracy).
  eval_name: Optional[str] = None

  def __post_init__(self):
    super().__post_init__()
    if self.name in VIDEO_NAMES:
      raise ValueError(f'{WHERE}.name={self.name!r} is a video dataset: use VideoData')
    if self.eval_name is not None and self.source != 'tfds':
      raise ValueError(f'{WHERE}.eval_name={self.eval_name!r} needs a TFDS {WHERE}.name')
    if self.source == 'image_folder':
      if not self.root:
        raise ValueError(f"{WHERE}.root must be set when {WHERE}.name='image_folder'.")
      if not isinstance(self.root, str):
        raise ValueError(f'{WHERE}.root={self.root!r} must be a path (a folder or a URL such '
                         'as gs://bucket/data)')
      from token_learner import paths  # pylint: disable=g-import-not-at-top (etils: not light)
      try:
        found = paths.isdir(self.root)
      except Exception as e:  # pylint: disable=broad-except
        # A URL's file system may fail (no credentials, no such bucket): one line, no traceback.
        raise ValueError(f'{WHERE}.root={self.root!r} cannot be read: '
                         f'{type(e).__name__}: {e}'.splitlines()[0]) from None
      if not found:
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
  num_frames: int = fields.field(8, minimum=1)  # T frames per clip...
  stride: int = fields.field(1, minimum=1)  # ...taken every `stride` frames.
  eval_clips: int = fields.field(1, minimum=1)  # Clips per eval video, spread over it...
  eval_crops: int = fields.field(1, choices=(1, 3))  # ...times 1 centre or 3 along the long side.
  # Eval resize of the short side; None: max(H, W).
  eval_short_side: Optional[int] = fields.field(None, minimum=1)
  random_flip: Optional[bool] = None
  file_pattern_train: str = ''  # DMVR: comma-separated globs of TFRecord files.
  file_pattern_eval: str = ''
  frames_key: str = 'image/encoded'  # DMVR: feature list of JPEG frames...
  label_key: str = 'clip/label/index'  # ...and context feature of int64 label ids.
  tfds_name: Optional[str] = None  # TFDS video dataset; None: `name`.
  directions: int = fields.field(4, choices=(2, 4))  # moving_digits: 2 (right, left) or 4.
  # moving_digits: digits overlaid per video; > 1 is multi-label (labels = their set of
  # (digit, direction) classes), needs multi_label=True.
  digits_per_video: int = fields.field(1, minimum=1)

  def __post_init__(self):
    if self.random_flip is None:
      fields.set_field(self, 'random_flip', _default(self, 'random_flip'))
    if self.tfds_name is None:
      fields.set_field(self, 'tfds_name', self.name or _default(self, 'name'))
    for field in ('file_pattern_train', 'file_pattern_eval'):
      fields.set_field(self, field, getattr(self, field) or '')
    super().__post_init__()
    if self.name not in VIDEO_NAMES:
      raise ValueError(f'{WHERE}.name={self.name!r} is not a video dataset {list(VIDEO_NAMES)}')
    if self.digits_per_video > 1 and not (self.name == MOVING_DIGITS and self.multi_label):
      raise ValueError(f'{WHERE}.digits_per_video={self.digits_per_video} needs '
                       f"{WHERE}.name='moving_digits' and {WHERE}.multi_label=True")
    if self.source == 'dmvr' and self.num_classes is None:
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
  # extension that is not an image's (guide.IMAGE_EXTENSIONS).
  ignored_hidden: int = 0
  ignored_other: int = 0
