"""The data layer: `config.dataset` -> deterministic, resumable, per-process batches.

    cfg = data.from_dict(config.dataset, num_classes=config.model.num_classes)
    info = data.dataset_info(cfg)          # DatasetInfo: classes, sizes, example shape, views
    batches = data.train_iterator(cfg, seed=..., batch_size=..., start_step=...,
                                  process_index=..., process_count=...)
    evaluation = data.eval_input(cfg, batch_size=..., process_index=..., process_count=...)
    for batch in evaluation: ...           # one finite pass; iterate again for the next eval

Train batches: {'inputs': uint8 pixels [L, H, W, 3] (images) or [L, T, H, W, 3] (videos),
'labels': int32 [L] (float32 [L, K] multi-hot for multi-label videos)}, L = batch_size //
process_count, process p holding rows [p*L, (p+1)*L) of global batch `step`, a pure function of
(cfg, seed, step) (see `stream`). Eval batches add 'mask': float32 [L] (0 for padding); video eval inputs
are [L, V, T, H, W, 3], V = eval_clips * eval_crops views of each video. Image sources, decoding
and augmentation are in `images`, video ones in `videos`; `Prefetcher` puts batches on device.

Pixels are uint8 (decoded, cropped, resized, then rounded to 0..255): a quarter of the bytes of
float32 to the device. Every consumer normalises them inside its jitted function with
`normalize.normalize(inputs, cfg.mean, cfg.std)` = (pixels / 255 - mean) / std (jax, no
TensorFlow). Eval padding rows are zero pixels.

Importing this package loads no TensorFlow: the dataset dataclasses (`config`) and `Prefetcher`
(jax) are light, and `images`, `videos` and `stream` (TensorFlow / TFDS) are imported on first
use: by a function here that reads data, or on access (`data.images`, `data.BatchIterator`).
"""
import importlib
import numbers
from typing import Union

from token_learner.data.config import VIDEO_NAMES, DatasetInfo, ImageData, VideoData, from_dict
from token_learner.data.prefetch import Prefetcher, make_global_batch

DataConfig = Union[ImageData, VideoData]

__all__ = ['BatchIterator', 'DataConfig', 'DatasetInfo', 'EvalInput', 'ImageData', 'Prefetcher',
           'VIDEO_NAMES', 'VideoData', 'check_run', 'dataset_info', 'eval_input', 'from_dict',
           'make_global_batch',
           'train_iterator']


# Submodules and names imported on first access: `images`, `stream` and `videos` import
# TensorFlow; `digits` (scikit-learn's digits, loaded by `images`) stays reachable as before.
_LAZY_SUBMODULES = ('digits', 'images', 'stream', 'videos')
_LAZY_NAMES = {'BatchIterator': 'stream', 'EvalInput': 'stream'}


def _submodule(name: str):
  return importlib.import_module(f'{__name__}.{name}')


def __getattr__(name: str):  # PEP 562: `data.images`, `data.BatchIterator`, ... on first use
  if name in _LAZY_SUBMODULES:
    return _submodule(name)
  if name in _LAZY_NAMES:
    value = getattr(_submodule(_LAZY_NAMES[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_NAMES))


def _module(cfg: DataConfig):
  if not isinstance(cfg, (ImageData, VideoData)):
    raise TypeError(f'Expected ImageData or VideoData (data.from_dict), got {type(cfg)}.')
  return _submodule('videos' if cfg.is_video else 'images')


def dataset_info(cfg: DataConfig) -> DatasetInfo:
  """Class count, split sizes, example shape, eval views: from metadata, before any batch."""
  return _module(cfg).dataset_info(cfg)


def check_run(cfg: DataConfig, *, batch_size: int, process_count: int):
  """The dataset options that depend on the run's topology (`read_shards`): a ValueError naming
  the field, before anything is read or compiled."""
  if not cfg.is_video:
    cfg.num_read_shards(batch_size, process_count)


def train_iterator(cfg: DataConfig, *, seed: int, batch_size: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1) -> 'BatchIterator':
  """The endless train stream from batch `start_step`: this process's rows of each batch.

  Batch k is the same on every run with the same (cfg, seed, batch_size); start_step=k starts at
  batch k without reading the batches before it.
  """
  local = _submodule('stream').local_batch(batch_size, 'batch_size', process_index, process_count)
  if not isinstance(start_step, numbers.Integral) or start_step < 0:
    raise ValueError(f'start_step must be an integer >= 0, got {start_step!r}.')
  return _module(cfg).train_iterator(
      cfg, seed=int(seed), start_step=int(start_step), global_batch=int(batch_size),
      local_batch=local, process_index=process_index, process_count=process_count)


def eval_input(cfg: DataConfig, *, batch_size: int, process_index: int = 0,
               process_count: int = 1) -> 'EvalInput':
  """The eval split, built once per run (sources indexed, corrupt images scanned once).

  Each `iter()` is one pass: every example exactly once over all processes (mask 1), padding
  (mask 0, zero inputs and labels) to the same number of batches on every process.
  """
  local = _submodule('stream').local_batch(batch_size, 'eval_batch_size', process_index,
                                           process_count)
  return _module(cfg).eval_input(cfg, global_batch=int(batch_size), local_batch=local,
                                 process_index=process_index, process_count=process_count)
