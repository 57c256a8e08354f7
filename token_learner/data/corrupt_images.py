"""Corrupt images of an image split (`token_learner.data.images`): finding, dropping, naming.

A source here is an image `stream.Source` whose records are (index, where, raw, label) and whose
`decode(raw)` decodes one image. By default the first decode failure stops the iterator with a
ValueError naming the file or record (`checks`); with `config.dataset.skip_corrupt=True` the
split is scanned once (`drop_corrupt`: one decode per image) and corrupt records are dropped from
`source.keep` before the stream is built.

Image folders (`scan_files`) are always scanned before training, train and eval splits alike:
every file fully decoded once, with the decoder that training and evaluation use, so a truncated
JPEG fails before the first step (or is skipped and counted), not at the first evaluation. The
results are cached in `ROOT/.token_learner_image_scan.json` (SCAN_CACHE; a hidden file beside
the split folders), keyed by each file's path, size and modification time and by the TensorFlow
version: a restart decodes only the files that changed. A root that cannot be written (read-only
disk or bucket) is scanned every time, with a warning.
"""
from concurrent import futures
import json
import os
import re
from typing import Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from token_learner import paths
from token_learner.data import stream


def find_corrupt(source: stream.Source) -> list:
  """Decodes every record once; returns [(index, where, error)] of those that fail."""
  def check(i, where, raw, label):
    del where, label
    return i, tf.shape(source.decode(raw))[0]
  good = source.ordered().map(stream.as_written(check), num_parallel_calls=stream.AUTOTUNE,
                              deterministic=False)
  good = {int(i) for i, _ in good.ignore_errors().as_numpy_iterator()}
  return [(int(i), where.decode('utf-8', 'backslashreplace'), decode_error(source, raw))
          for i, where, raw, _ in source.ordered().as_numpy_iterator() if int(i) not in good]


def decode_error(source: stream.Source, raw) -> Optional[str]:
  """The first line of the error decoding `raw` (TensorFlow's op decorations removed), None if
  it decodes."""
  try:
    source.decode(tf.constant(raw))
  except (tf.errors.OpError, ValueError) as e:
    line = getattr(e, 'message', str(e)).strip().splitlines()[0]
    line = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', line)
    return re.sub(r'\s*\[Op:\w+\].*$', '', line) or 'undecodable'
  return None


def drop_corrupt(source: stream.Source) -> int:
  """Scans the split and removes corrupt records from `source`; returns how many."""
  return drop(source, find_corrupt(source))


def drop(source: stream.Source, bad) -> int:
  """Removes the records `bad` ([(index, where, error)]) from `source`; returns how many."""
  if bad:
    dropped = {i for i, _, _ in bad}
    keep = np.arange(source.num_examples) if source.keep is None else source.keep
    source.keep = np.asarray([i for i in keep if i not in dropped], np.int64)
    logging.warning('Skipped %d corrupt image(s) of %s (config.dataset.skip_corrupt=True), '
                    'e.g. %s: %s', len(bad), source.description, bad[0][1], bad[0][2])
  return len(bad)


def corrupt_error(source: stream.Source, bad) -> ValueError:
  """The error naming the first of `bad` ([(index, where, error)])."""
  index, where, error = bad[0]
  more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
  return ValueError(f'Corrupt or unreadable image in {source.description}: {where} (record '
                    f'{index}){more}: {(error or "unreadable record").rstrip(".")}. Set '
                    'config.dataset.skip_corrupt=True to skip such images.')


def checks(source: stream.Source):
  """(check of one record, full scan): both raise a ValueError naming a corrupt image."""
  def check(q, index, where, raw, label):
    del q, label
    error = decode_error(source, raw)
    if error is not None:
      raise corrupt_error(source, [(int(index), where.decode('utf-8', 'backslashreplace'), error)]) from None

  def scan():
    bad = find_corrupt(source)
    if bad:
      raise corrupt_error(source, bad) from None
  return check, scan


SCAN_CACHE = '.token_learner_image_scan.json'
_IO_THREADS = 16  # stat / EXIF reads in flight at once (each a request on a bucket)
_CACHE_VERSION = 1


def _stat(path: str):
  """(size, mtime in ns) of `path`, local or a URL; raises OSError / tf OpError."""
  if paths.is_url(path):
    st = tf.io.gfile.stat(path)
    return int(st.length), int(st.mtime_nsec)
  st = os.stat(path)
  return int(st.st_size), int(st.st_mtime_ns)


def _decoder() -> str:
  return f'tensorflow {tf.__version__}'  # What decodes (and so what fails) may change with it.


def _read_cache(cache_path: str) -> dict:
  try:
    if not paths.exists(cache_path):
      return {}
    cache = json.loads(paths.read_text(cache_path))
  except (OSError, tf.errors.OpError, ValueError) as e:
    logging.warning('Ignoring the image scan cache %s: %s', cache_path, e)
    return {}
  ok = (isinstance(cache, dict) and cache.get('version') == _CACHE_VERSION and
        cache.get('decoder') == _decoder() and isinstance(cache.get('files'), dict))
  return cache['files'] if ok else {}


def _write_cache(cache_path: str, files: dict):
  text = json.dumps({'version': _CACHE_VERSION, 'decoder': _decoder(), 'files': files},
                    sort_keys=True)  # ASCII: a non-UTF-8 name is kept as \udcNN escapes.
  try:
    paths.write_text_atomic(cache_path, text)
  except (OSError, tf.errors.OpError) as e:
    logging.warning('Cannot write the image scan cache %s (%s): the folder is scanned again '
                    'next time.', cache_path, e)


def exif_orientation(path: str) -> int:
  """The EXIF Orientation tag (0x0112) of the image file `path`, 1 when it has none."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with paths.open_file(path, 'rb') as f, Image.open(f) as image:
      tag = image.getexif().get(0x0112, 1)
  except Exception:  # pylint: disable=broad-except
    return 1  # PIL cannot read it although TensorFlow decodes it: as stored.
  return tag if isinstance(tag, int) and 1 <= tag <= 8 else 1


def _try_stat(path: str):
  try:
    return _stat(path)
  except (OSError, tf.errors.OpError) as e:
    return f'unreadable: {getattr(e, "strerror", None) or e}'


def scan_files(source: stream.Source, files: Sequence[str], cache_path: str) -> list:
  """[(error or None, EXIF orientation)] of each of `files` (the records of `source`, in order):
  each file not in the cache at `cache_path` (or changed since) is decoded in full once by
  `source.decode`; the cache is then updated. Its keys are the paths relative to the cache's
  folder (the root), so a moved dataset keeps its cache."""
  cache = _read_cache(cache_path)
  root = paths.parent(cache_path).rstrip('/') + '/'
  key = lambda path: path[len(root):] if path.startswith(root) else path
  with futures.ThreadPoolExecutor(_IO_THREADS) as pool:  # Latency-bound on a bucket.
    stats = list(pool.map(_try_stat, files))
  results, todo = [None] * len(files), []
  for i, (path, stat) in enumerate(zip(files, stats)):
    entry = cache.get(key(path))
    if isinstance(stat, str):
      results[i] = (stat, 1)
    elif isinstance(entry, list) and len(entry) == 4 and entry[:2] == list(stat):
      results[i] = (entry[2], entry[3])
    else:
      todo.append((i, *stat))
  if todo:
    logging.info('Decoding %d image(s) of %s once (%d cached).', len(todo), source.description,
                 len(files) - len(todo))
    raws = [os.fsencode(files[i]) for i, _, _ in todo]
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(todo)), raws)).map(
        stream.as_written(lambda k, raw: (k, tf.shape(source.decode(raw))[0])),
        num_parallel_calls=stream.AUTOTUNE, deterministic=False)
    good = {int(k) for k, _ in ds.ignore_errors().as_numpy_iterator()}
    with futures.ThreadPoolExecutor(_IO_THREADS) as pool:
      tags = list(pool.map(lambda k: exif_orientation(files[todo[k][0]]) if k in good else 1,
                           range(len(todo))))
    for k, (i, size, mtime) in enumerate(todo):
      error = None if k in good else (decode_error(source, raws[k]) or 'unreadable')
      results[i] = (error, tags[k])
      cache[key(files[i])] = [size, mtime, error, tags[k]]
    _write_cache(cache_path, cache)
  return results
