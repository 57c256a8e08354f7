"""Corrupt images of an image split (`token_learner.data.images`): finding, dropping, naming.

A source here is an image `stream.Source` whose records are (index, where, raw, label) and whose
`decode(raw)` decodes one image. By default the first decode failure stops the iterator with a
ValueError naming the file or record (`checks`); with `config.dataset.skip_corrupt=True` the
split is scanned once (`drop_corrupt`: one decode per image) and corrupt records are dropped from
`source.keep` before the stream is built. `check_headers` is the cheap up-front check of an
image_folder eval split (no decode).
"""
import os
from typing import Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from token_learner.data import stream


def find_corrupt(source: stream.Source) -> list:
  """Decodes every record once; returns [(index, where, error)] of those that fail."""
  def check(i, where, raw, label):
    del where, label
    return i, tf.shape(source.decode(raw))[0]
  good = source.ordered().map(check, num_parallel_calls=stream.AUTOTUNE, deterministic=False)
  good = {int(i) for i, _ in good.ignore_errors().as_numpy_iterator()}
  return [(int(i), where.decode(), decode_error(source, raw))
          for i, where, raw, _ in source.ordered().as_numpy_iterator() if int(i) not in good]


def decode_error(source: stream.Source, raw) -> Optional[str]:
  """The first line of the error decoding `raw`, None if it decodes."""
  try:
    source.decode(tf.constant(raw))
  except (tf.errors.OpError, ValueError) as e:
    return getattr(e, 'message', str(e)).strip().splitlines()[0]
  return None


def drop_corrupt(source: stream.Source) -> int:
  """Scans the split and removes corrupt records from `source`; returns how many."""
  bad = find_corrupt(source)
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
                    f'{index}){more}: {error or "unreadable record"}. Set '
                    'config.dataset.skip_corrupt=True to skip such images.')


# Signature at the start and what a complete file ends with (None: no end marker checked).
_FORMATS = ((b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'), (b'\xff\xd8\xff', None),
            (b'GIF8', None), (b'BM', None))


def check_headers(source: stream.Source, files: Sequence[str]):
  """Reads the first and last bytes of each of `files` (the records of `source`, in order): a
  ValueError names the first that is unreadable, empty, not an image or a truncated PNG. Cheap
  (no decode), so the eval split is checked before training instead of at the first evaluation."""
  for index, path in enumerate(files):
    try:
      with open(path, 'rb') as f:
        head = f.read(16)
        f.seek(max(0, os.path.getsize(path) - 16))
        tail = f.read(16)
    except OSError as e:
      raise corrupt_error(source, [(index, path, f'unreadable: {e.strerror}')]) from None
    ok = any(head.startswith(magic) and (end is None or tail.rstrip(b'\0').endswith(end))
             for magic, end in _FORMATS)
    if not ok:
      raise corrupt_error(source, [(index, path, 'empty, truncated or not a PNG / JPEG')])


def checks(source: stream.Source):
  """(check of one record, full scan): both raise a ValueError naming a corrupt image."""
  def check(q, index, where, raw, label):
    del q, label
    error = decode_error(source, raw)
    if error is not None:
      raise corrupt_error(source, [(int(index), where.decode(), error)]) from None

  def scan():
    bad = find_corrupt(source)
    if bad:
      raise corrupt_error(source, bad) from None
  return check, scan
