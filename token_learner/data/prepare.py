"""Turns a user's videos into the TFRecords the video reader trains on (`name='dmvr'`).

    examples = list_examples('/data/my_videos')            # <class>/ folders, or a CSV
    write_shards(examples, '/data/my_videos_tfr/train', num_shards=8, fps=12, short_side=256)

Inputs: video files (decoded with PyAV) or folders of frames (`*.jpg|*.jpeg|*.png`, sorted by
name). Labels come from `<class>/` folders (one label per video) or from a CSV whose lines are
`path,label[,label...]` (class names; several for multi-label data, none for an unlabelled
video), paths relative to the CSV's folder.

Output, the format `token_learner.data.videos` reads: shards `PREFIX-00000-of-0000N.tfrecord` of
`tf.train.SequenceExample`s with the JPEG frames in the feature list `image/encoded` and the
label ids (int64) in the context feature `clip/label/index`, plus `clip/label/text` (the class
names) and `video/filename`; the class list is `PREFIX.classes.txt` (line i = class i). Shards are
written to a temporary file and renamed when complete, so a rerun resumes by skipping finished
shards and never reads a half-written one.
"""
import csv
import dataclasses
import io
import os
from typing import List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from token_learner.data.config import VideoData

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.gif')
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
FRAMES_KEY, LABEL_KEY = VideoData.frames_key, VideoData.label_key
LABEL_TEXT_KEY, FILENAME_KEY = 'clip/label/text', 'video/filename'


@dataclasses.dataclass(frozen=True)
class Example:
  path: str  # a video file or a folder of frames
  labels: Tuple[str, ...]  # class names


def _is_video_input(path: str) -> bool:
  return os.path.isdir(path) or path.lower().endswith(VIDEO_EXTENSIONS)


def list_examples(source: str) -> List[Example]:
  """Examples of `source`: a folder of `<class>/` subfolders, or a CSV `path,label[,label...]`."""
  if os.path.isfile(source):
    examples = []
    root = os.path.dirname(os.path.abspath(source))
    with open(source, newline='') as f:
      for line, row in enumerate(csv.reader(f), 1):
        row = [c.strip() for c in row]
        if not row or not row[0] or row[0].startswith('#'):
          continue
        path = row[0] if os.path.isabs(row[0]) else os.path.join(root, row[0])
        examples.append(Example(path, tuple(c for c in row[1:] if c)))
    if not examples:
      raise ValueError(f'--videos={source!r}: the CSV lists no videos (path,label[,label...])')
    return examples
  if not os.path.isdir(source):
    raise FileNotFoundError(f'--videos={source!r} is neither a CSV file nor a folder')
  classes = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)))
  examples = []
  for cls in classes:
    folder = os.path.join(source, cls)
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


def list_annotated(csv_path: str, annotations: str,
                   video_root: str) -> Tuple[List[Example], Optional[List[str]]]:
  """(examples, fixed class list or None) of a dataset's public annotation CSV.

  'kinetics': the Kinetics-400/600 lists (`label,youtube_id,time_start,time_end,split`), clips
  named `<youtube_id>_<start:06d>_<end:06d>.mp4` in `video_root` or `video_root/<label>/`.
  'charades': Charades_v1_{train,test}.csv (`id,...,actions,...`, actions `c092 11.9 21.2;...`),
  videos `video_root/<id>.mp4`, the 157 classes c000..c156 in that order. 'paths': `list_examples`.
  """
  if annotations == 'paths':
    return list_examples(csv_path), None
  if annotations not in ANNOTATIONS:
    raise ValueError(f'--annotations={annotations!r} must be one of {list(ANNOTATIONS)}')
  if not video_root or not os.path.isdir(video_root):
    raise ValueError(f'--video_root={video_root!r} must be the folder of the downloaded videos')
  with open(csv_path, newline='') as f:
    rows = list(csv.DictReader(f))
  examples = []
  for row in rows:
    if annotations == 'kinetics':
      label = (row.get('label') or '').strip()
      name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
      candidates = [os.path.join(video_root, name)] + [
          os.path.join(video_root, d, name) for d in (label, label.replace(' ', '_')) if d]
      path = next((c for c in candidates if os.path.exists(c)), candidates[0])
      examples.append(Example(path, (label,) if label else ()))
    else:
      actions = (row.get('actions') or '').strip()
      labels = sorted({a.split()[0] for a in actions.split(';') if a.strip()})
      examples.append(Example(os.path.join(video_root, f"{row['id']}.mp4"), tuple(labels)))
  if not examples:
    raise ValueError(f'--videos={csv_path!r} lists no videos')
  return examples, list(CHARADES_CLASSES) if annotations == 'charades' else None


def class_names(examples: Sequence[Example]) -> List[str]:
  """Sorted class names of all examples (the label ids index this list)."""
  return sorted({label for e in examples for label in e.labels})


def _resize(image: Image.Image, short_side: Optional[int]) -> Image.Image:
  if not short_side:
    return image
  w, h = image.size
  scale = short_side / min(w, h)
  return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def read_frames(path: str, fps: Optional[float] = None,
                short_side: Optional[int] = None) -> List[Image.Image]:
  """RGB frames of a video file (resampled to `fps` when given) or of a folder of frames.

  Raises:
    ValueError: naming `path` if it cannot be decoded or holds no frames.
  """
  try:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
      frames = [Image.open(os.path.join(path, n)).convert('RGB') for n in names]
    else:
      frames = _decode_video(path, fps)
  except Exception as e:  # pylint: disable=broad-except  # Any decoder error: name the file.
    raise ValueError(f'Cannot read video {path!r}: {e}') from None
  if not frames:
    raise ValueError(f'Cannot read video {path!r}: no frames')
  return [_resize(f, short_side) for f in frames]


def _decode_video(path: str, fps: Optional[float]) -> List[Image.Image]:
  import av  # pylint: disable=g-import-not-at-top  # Only needed for video files.
  frames, next_time = [], 0.0
  with av.open(path) as container:
    stream = container.streams.video[0]
    for frame in container.decode(stream):
      if fps:
        t = float(frame.time) if frame.time is not None else len(frames) / fps
        if t + 1e-6 < next_time:
          continue  # Keep the first frame at or after each 1/fps tick.
        next_time += 1.0 / fps
        while next_time <= t:
          next_time += 1.0 / fps
      frames.append(frame.to_image().convert('RGB'))
  return frames


def _jpeg(image: Image.Image, quality: int) -> bytes:
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=quality)
  return out.getvalue()


def encode_example(frames: Sequence[Image.Image], label_ids: Sequence[int],
                   labels: Sequence[str], filename: str, quality: int = 90) -> bytes:
  """One serialized SequenceExample in the reader's format."""
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
                 quality: int = 90, progress: bool = True) -> dict:
  """Writes `examples` (example i to shard i % num_shards) and `PREFIX.classes.txt`.

  Finished shards are kept (a rerun resumes). An unreadable video is a ValueError naming it, or,
  with `skip_unreadable`, counted and left out.

  Returns:
    {'written': videos written now, 'skipped': unreadable videos left out, 'shards_done': shards
     already complete before this call, 'classes': number of classes}.
  """
  if num_shards < 1:
    raise ValueError(f'--shards={num_shards} must be >= 1')
  classes = list(classes or class_names(examples))
  index = {c: i for i, c in enumerate(classes)}
  for e in examples:
    unknown = [l for l in e.labels if l not in index]
    if unknown:
      raise ValueError(f'{e.path!r}: label {unknown[0]!r} is not in the class list')
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with open(f'{prefix}.classes.txt', 'w') as f:
    f.write(''.join(f'{c}\n' for c in classes))
  stats = dict(written=0, skipped=0, shards_done=0, classes=len(classes))
  paths = shard_paths(prefix, num_shards)
  todo = [s for s, p in enumerate(paths) if not os.path.exists(p)]
  stats['shards_done'] = num_shards - len(todo)
  total = sum(len(examples[s::num_shards]) for s in todo)
  bar = _progress(total, progress)
  for s in todo:
    with tf.io.TFRecordWriter(paths[s] + '.tmp') as writer:
      for e in examples[s::num_shards]:
        bar.update(1)
        try:
          frames = read_frames(e.path, fps, short_side)
        except ValueError as err:
          if not skip_unreadable:
            raise
          logging.warning('Skipping: %s', err)
          stats['skipped'] += 1
          continue
        writer.write(encode_example(frames, [index[l] for l in e.labels], e.labels,
                                    os.path.basename(e.path.rstrip('/')), quality))
        stats['written'] += 1
    os.replace(paths[s] + '.tmp', paths[s])
  bar.close()
  return stats


def _progress(total: int, enabled: bool):
  from tqdm import auto  # pylint: disable=g-import-not-at-top  # tqdm ships with TFDS.
  return auto.tqdm(total=total, unit='video', disable=not enabled)
