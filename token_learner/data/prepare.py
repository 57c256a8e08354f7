"""Turns a user's videos into the TFRecords the video reader trains on (`name='dmvr'`).

    examples = list_examples('/data/my_videos')            # <class>/ folders, or a CSV
    write_shards(examples, '/data/my_videos_tfr/train', num_shards=8, fps=12, short_side=256)

Inputs: regular video files (decoded with PyAV) or folders of frames (`*.jpg|*.jpeg|*.png`,
sorted by name); a FIFO or a device is refused before it is opened, and each video has a decode
deadline. Labels come from `<class>/` folders (one label per video) or from a CSV whose lines are
`path,label[,label...]` (class names; several for multi-label data, none for an unlabelled
video), paths relative to the CSV's folder and inside it (`allow_outside_root=True` lifts that).
A label is a non-empty name without control characters (the class list has one a line).

Output, the format `token_learner.data.videos` reads: shards `PREFIX-00000-of-0000N.tfrecord` of
`tf.train.SequenceExample`s with the JPEG frames in the feature list `image/encoded` and the
label ids (int64) in the context feature `clip/label/index`, plus `clip/label/text` (the class
names) and `video/filename`; the class list is `PREFIX.classes.txt` (line i = class i), and
`PREFIX.manifest.json` records the settings (classes, fps, short_side, shards, quality, the
videos) and, per finished shard, its videos and frames. Shards are written to a temporary file
and renamed when complete, so a rerun with the same settings resumes by skipping finished
shards and never reads a half-written one; a rerun with other settings over finished shards is
refused with the settings that differ (write to another PREFIX), so old and new shards never
mix. PREFIX may be a URL (`gs://...`; `token_learner.paths`).

Frames are resized and JPEG-encoded as they are decoded: memory does not grow with a video's
duration beyond its encoded frames.
"""
import csv
import dataclasses
import io
import math
import os
import re
import stat
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from absl import logging
from PIL import Image

from token_learner import paths
from token_learner.data import shard_manifest
from token_learner.data.config import VideoData

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.gif')
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
FRAMES_KEY, LABEL_KEY = VideoData.frames_key, VideoData.label_key
LABEL_TEXT_KEY, FILENAME_KEY = 'clip/label/text', 'video/filename'
DECODE_TIMEOUT_S = 600.0  # a video file's decode deadline (a stalled or endless stream)
_CONTROL = re.compile(r'[\x00-\x1f\x7f]')


@dataclasses.dataclass(frozen=True)
class Example:
  path: str  # a video file or a folder of frames
  labels: Tuple[str, ...]  # class names


def check_settings(fps: Optional[float] = None, short_side: Optional[int] = None,
                   num_shards: int = 1, quality: int = 90,
                   decode_timeout: float = DECODE_TIMEOUT_S):
  """Raises ValueError naming the first invalid setting (as its command-line flag)."""
  def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if fps is not None and not (number(fps) and math.isfinite(fps) and fps > 0):
    raise ValueError(f'--fps={fps!r} must be a number > 0 (or unset: as stored)')
  if short_side is not None and not (isinstance(short_side, int) and short_side > 0):
    raise ValueError(f'--short_side={short_side!r} must be an integer > 0 (or unset)')
  if not (isinstance(num_shards, int) and num_shards >= 1):
    raise ValueError(f'--shards={num_shards!r} must be an integer >= 1')
  if not (isinstance(quality, int) and 1 <= quality <= 100):
    raise ValueError(f'--quality={quality!r} must be an integer in [1, 100]')
  if not (number(decode_timeout) and decode_timeout > 0):
    raise ValueError(f'--decode_timeout={decode_timeout!r} must be a number of seconds > 0')


def check_label(label: str, where: str) -> str:
  """`label` if it can be a line of the class list; else a ValueError naming `where`."""
  if not label or _CONTROL.search(label) or label != label.strip():
    raise ValueError(f'{where}: label {label!r} must be a non-empty name without control '
                     'characters (newlines, tabs) or surrounding spaces')
  return label


def _inside(path: str, root: str) -> bool:
  real, real_root = os.path.realpath(path), os.path.realpath(root)
  return os.path.commonpath([real, real_root]) == real_root


def _is_video_input(path: str) -> bool:
  return os.path.isdir(path) or path.lower().endswith(VIDEO_EXTENSIONS)


def _csv_path(cell: str, root: str, where: str, allow_outside_root: bool) -> str:
  """The video path of a CSV row: relative to `root` and inside it (unless allowed)."""
  if _CONTROL.search(cell):
    raise ValueError(f'{where}: path {cell!r} holds control characters')
  path = cell if os.path.isabs(cell) else os.path.join(root, cell)
  if not allow_outside_root:
    if '..' in re.split(r'[/\\]', cell) or not _inside(path, root):
      raise ValueError(f'{where}: path {cell!r} is outside {root!r} (the CSV\'s folder; '
                       '--allow_outside_root to read it anyway)')
  if os.path.isdir(path) and (path.lower().endswith(VIDEO_EXTENSIONS) or not any(
      n.lower().endswith(FRAME_EXTENSIONS) for n in os.listdir(path))):
    raise ValueError(f'{where}: {cell!r} is a folder, not a video file or a folder of frames '
                     f'({", ".join(FRAME_EXTENSIONS)})')
  return path


def list_examples(source: str, allow_outside_root: bool = False) -> List[Example]:
  """Examples of `source`: a folder of `<class>/` subfolders, or a CSV `path,label[,label...]`
  (paths inside the CSV's folder unless `allow_outside_root`)."""
  if os.path.isfile(source):
    examples = []
    root = os.path.dirname(os.path.abspath(source))
    with paths.open_file(source) as f:
      for line, row in enumerate(csv.reader(f), 1):
        row = [c.strip() for c in row]
        if not row or not row[0] or row[0].startswith('#'):
          continue
        where = f'{source}:{line}'
        labels = tuple(check_label(c, f'{where} ({row[0]})') for c in row[1:])
        examples.append(Example(_csv_path(row[0], root, where, allow_outside_root), labels))
    if not examples:
      raise ValueError(f'--videos={source!r}: the CSV lists no videos (path,label[,label...])')
    return examples
  if not os.path.isdir(source):
    raise FileNotFoundError(f'--videos={source!r} is neither a CSV file nor a folder')
  classes = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)))
  examples = []
  for cls in classes:
    folder = os.path.join(source, cls)
    check_label(cls, f'class folder {folder!r}')
    entries = sorted(os.path.join(folder, e) for e in os.listdir(folder))
    found = [Example(p, (cls,)) for p in entries if _is_video_input(p)]
    if not found:
      raise ValueError(f'Class folder {folder!r} holds no videos ({", ".join(VIDEO_EXTENSIONS)})'
                       ' or frame folders')
    examples.extend(found)
  if not examples:
    raise ValueError(f'--videos={source!r} has no <class>/ subfolders with videos')
  return examples


ANNOTATIONS = ('paths', 'kinetics', 'charades')
CHARADES_CLASSES = tuple(f'c{i:03d}' for i in range(157))


def list_annotated(csv_path: str, annotations: str, video_root: str,
                   allow_outside_root: bool = False
                   ) -> Tuple[List[Example], Optional[List[str]]]:
  """(examples, fixed class list or None) of a dataset's public annotation CSV.

  'kinetics': the Kinetics-400/600 lists (`label,youtube_id,time_start,time_end,split`), clips
  named `<youtube_id>_<start:06d>_<end:06d>.mp4` in `video_root` or `video_root/<label>/`.
  'charades': Charades_v1_{train,test}.csv (`id,...,actions,...`, actions `c092 11.9 21.2;...`),
  videos `video_root/<id>.mp4`, the 157 classes c000..c156 in that order. 'paths': `list_examples`.
  A row naming a file outside `video_root` is an error naming the row.
  """
  if annotations == 'paths':
    return list_examples(csv_path, allow_outside_root), None
  if annotations not in ANNOTATIONS:
    raise ValueError(f'--annotations={annotations!r} must be one of {list(ANNOTATIONS)}')
  if not video_root or not os.path.isdir(video_root):
    raise ValueError(f'--video_root={video_root!r} must be the folder of the downloaded videos')
  with paths.open_file(csv_path) as f:
    rows = list(csv.DictReader(f))
  examples = []
  for line, row in enumerate(rows, 2):
    where = f'{csv_path}:{line}'
    if annotations == 'kinetics':
      label = (row.get('label') or '').strip()
      if label:
        check_label(label, where)
      name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
      candidates = [os.path.join(video_root, name)] + [
          os.path.join(video_root, d, name) for d in (label, label.replace(' ', '_')) if d]
      path = next((c for c in candidates if os.path.exists(c)), candidates[0])
      labels = (label,) if label else ()
    else:
      actions = (row.get('actions') or '').strip()
      labels = tuple(sorted({check_label(a.split()[0], where)
                             for a in actions.split(';') if a.strip()}))
      path = os.path.join(video_root, f"{row['id']}.mp4")
    if not allow_outside_root and not _inside(path, video_root):
      raise ValueError(f'{where}: video {path!r} is outside --video_root={video_root!r}')
    examples.append(Example(path, labels))
  if not examples:
    raise ValueError(f'--videos={csv_path!r} lists no videos')
  return examples, list(CHARADES_CLASSES) if annotations == 'charades' else None


def read_classes(path: str) -> List[str]:
  """The class list of a `.classes.txt` (one name a line), each name checked."""
  lines = paths.read_text(path).splitlines()
  return [check_label(line.strip(), f'{path}:{i}') for i, line in enumerate(lines, 1)
          if line.strip()]


def class_names(examples: Sequence[Example]) -> List[str]:
  """Sorted class names of all examples (the label ids index this list)."""
  return sorted({label for e in examples for label in e.labels})


def _resize(image: Image.Image, short_side: Optional[int]) -> Image.Image:
  if not short_side:
    return image
  w, h = image.size
  scale = short_side / min(w, h)
  return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def _regular_file(path: str):
  """Raises ValueError unless `path` is a regular file: a FIFO or a device named `x.mp4` would
  block (or never end) when opened; os.stat does not open it."""
  mode = os.stat(path).st_mode
  if not stat.S_ISREG(mode):
    raise ValueError('not a regular file (a FIFO, device or socket)')


def iter_frames(path: str, fps: Optional[float] = None, short_side: Optional[int] = None,
                decode_timeout: float = DECODE_TIMEOUT_S) -> Iterator[Image.Image]:
  """The RGB frames of a video file (resampled to `fps` when given) or of a folder of frames,
  each resized as soon as it is decoded (one full-size frame in memory at a time).

  Raises:
    ValueError: naming `path` if it is not a regular file or a folder, cannot be decoded, holds
      no frames or takes longer than `decode_timeout` seconds.
  """
  count, deadline = 0, time.monotonic() + decode_timeout
  try:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
      frames = (_frame_file(os.path.join(path, n)) for n in names)
    else:
      _regular_file(path)
      frames = _decode_video(path, fps, decode_timeout)
    for frame in frames:
      if time.monotonic() > deadline:
        raise TimeoutError()  # named below
      count += 1
      yield _resize(frame, short_side)
  except Exception as e:  # pylint: disable=broad-except  # Any decoder error: name the file.
    if time.monotonic() > deadline:  # PyAV's own timeout interrupts with an opaque message.
      e = f'decoding took longer than {decode_timeout:g} s (--decode_timeout)'
    raise ValueError(f'Cannot read video {path!r}: {e}') from None
  if not count:
    raise ValueError(f'Cannot read video {path!r}: no frames')


def read_frames(path: str, fps: Optional[float] = None, short_side: Optional[int] = None,
                decode_timeout: float = DECODE_TIMEOUT_S) -> List[Image.Image]:
  """`iter_frames` as a list."""
  return list(iter_frames(path, fps, short_side, decode_timeout))


def _frame_file(path: str) -> Image.Image:
  _regular_file(path)
  with Image.open(path) as image:
    return image.convert('RGB')


def _decode_video(path: str, fps: Optional[float], timeout: float) -> Iterator[Image.Image]:
  import av  # pylint: disable=g-import-not-at-top  # Only needed for video files.
  kept, next_time = 0, 0.0
  with av.open(path, timeout=timeout) as container:
    stream = container.streams.video[0]
    for frame in container.decode(stream):
      if fps:
        t = float(frame.time) if frame.time is not None else kept / fps
        if t + 1e-6 < next_time:
          continue  # Keep the first frame at or after each 1/fps tick.
        next_time += 1.0 / fps
        while next_time <= t:
          next_time += 1.0 / fps
      kept += 1
      yield frame.to_image().convert('RGB')


def _jpeg(image: Image.Image, quality: int) -> bytes:
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=quality)
  return out.getvalue()


def encode_example(frames, label_ids: Sequence[int], labels: Sequence[str], filename: str,
                   quality: int = 90) -> bytes:
  """One serialized SequenceExample in the reader's format; `frames` (PIL images, e.g. an
  `iter_frames`) are JPEG-encoded one at a time."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # The command line starts fast.
  ex = tf.train.SequenceExample()
  ex.context.feature[LABEL_KEY].int64_list.value.extend(label_ids)
  ex.context.feature[LABEL_TEXT_KEY].bytes_list.value.extend(l.encode() for l in labels)
  ex.context.feature[FILENAME_KEY].bytes_list.value.append(filename.encode())
  frame_list = ex.feature_lists.feature_list[FRAMES_KEY]
  for frame in frames:
    frame_list.feature.add().bytes_list.value.append(_jpeg(frame, quality))
  return ex.SerializeToString()


def shard_paths(prefix: str, num_shards: int) -> List[str]:
  return [f'{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord' for i in range(num_shards)]


def write_shards(examples: Sequence[Example], prefix: str, *, num_shards: int = 1,
                 fps: Optional[float] = None, short_side: Optional[int] = None,
                 skip_unreadable: bool = False, classes: Optional[Sequence[str]] = None,
                 quality: int = 90, decode_timeout: float = DECODE_TIMEOUT_S,
                 progress: bool = True) -> dict:
  """Writes `examples` (example i to shard i % num_shards), `PREFIX.classes.txt` and
  `PREFIX.manifest.json`.

  Finished shards are kept when the settings match those of the manifest (a rerun resumes);
  other settings over finished shards are a ValueError naming the differences. An unreadable
  video is a ValueError naming it, or, with `skip_unreadable`, counted and left out.

  Returns:
    {'written': videos written now, 'skipped': unreadable videos left out, 'shards_done': shards
     already complete before this call, 'classes': number of classes}.
  """
  check_settings(fps, short_side, num_shards, quality, decode_timeout)
  classes = list(classes or class_names(examples))
  for i, c in enumerate(classes):
    check_label(c, f'class {i}')
  index = {c: i for i, c in enumerate(classes)}
  for e in examples:
    unknown = [l for l in e.labels if l not in index]
    if unknown:
      raise ValueError(f'{e.path!r}: label {unknown[0]!r} is not in the class list')
  wanted = shard_manifest.settings([(e.path, e.labels) for e in examples], classes, num_shards,
                                   fps=fps, short_side=short_side, quality=quality)
  manifest = shard_manifest.resume(prefix, shard_paths(prefix, num_shards), wanted)
  paths.makedirs(paths.parent(paths.absolute(prefix)))
  shard_manifest.write(prefix, manifest)
  paths.write_text_atomic(f'{prefix}.classes.txt', ''.join(f'{c}\n' for c in classes))
  stats = dict(written=0, skipped=0, shards_done=0, classes=len(classes))
  shard_files = shard_paths(prefix, num_shards)
  todo = [s for s, p in enumerate(shard_files) if not paths.exists(p)]
  stats['shards_done'] = num_shards - len(todo)
  bar = _progress(sum(len(examples[s::num_shards]) for s in todo), progress)
  for s in todo:
    counts = _write_shard(shard_files[s], examples[s::num_shards], index, bar, fps=fps,
                          short_side=short_side, quality=quality,
                          decode_timeout=decode_timeout, skip_unreadable=skip_unreadable)
    stats['written'] += counts['videos']
    stats['skipped'] += counts['skipped']
    manifest['shards_complete'][paths.name(shard_files[s])] = counts
    shard_manifest.write(prefix, manifest)
  bar.close()
  return stats


def _write_shard(path: str, examples: Sequence[Example], index, bar, *, fps, short_side,
                 quality, decode_timeout, skip_unreadable) -> dict:
  """One shard, written under a temporary name and renamed when complete; its counts."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # The command line starts fast.
  counts = dict(videos=0, frames=0, skipped=0)
  tmp = f'{path}.tmp'
  with tf.io.TFRecordWriter(tmp) as writer:
    for e in examples:
      bar.update(1)
      frames = []  # one entry per frame: counted as they stream into the record
      stream = (frames.append(None) or f
                for f in iter_frames(e.path, fps, short_side, decode_timeout))
      try:
        record = encode_example(stream, [index[l] for l in e.labels], e.labels,
                                paths.name(e.path), quality)
      except ValueError as err:
        if not skip_unreadable:
          raise
        logging.warning('Skipping: %s', err)
        counts['skipped'] += 1
        continue
      writer.write(record)
      counts['videos'] += 1
      counts['frames'] += len(frames)
  paths.rename(tmp, path)
  return counts


def _progress(total: int, enabled: bool):
  from tqdm import auto  # pylint: disable=g-import-not-at-top  # tqdm ships with TFDS.
  return auto.tqdm(total=total, unit='video', disable=not enabled)
