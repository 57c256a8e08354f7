"""PREFIX.manifest.json: the settings a set of video shards was written with, and its progress.

`prepare.write_shards` writes it beside the shards: `settings` (classes, fps, short_side, shards,
quality, the number and a digest of the videos and their labels) and `shards_complete`
({shard file: {videos, frames, skipped}}, updated as each shard is renamed into place). A rerun
over finished shards continues only under the same settings (`resume`); otherwise old and new
shards would mix (another --shards count: every video twice), so it is refused with the
settings that differ.
"""
import hashlib
import json
import re
from typing import Any, List, Optional, Sequence, Tuple

from token_learner import paths

VERSION = 1


def path(prefix: str) -> str:
  return f'{prefix}.manifest.json'


def settings(videos: Sequence[Tuple[str, Sequence[str]]], classes: Sequence[str],
             num_shards: int, **encoding: Any) -> dict:
  """What the shards' content depends on: `videos` (path, labels), the class list, the shard
  count and the `encoding` options (fps, short_side, quality)."""
  listing = json.dumps([[p, list(labels)] for p, labels in videos]).encode()
  return dict(version=VERSION, classes=list(classes), **encoding, shards=num_shards,
              videos=len(videos), videos_sha256=hashlib.sha256(listing).hexdigest())


def differences(old: dict, new: dict) -> List[str]:
  """`key old -> new` for each setting that differs."""
  out = []
  for key, now in new.items():
    was = old.get(key)
    if was == now:
      continue
    if key == 'classes':
      same_count = len(was or []) == len(now)
      was, now = f'{len(was or [])} classes', f'{len(now)} classes' + (
          ' (other names)' if same_count else '')
    elif key == 'videos_sha256':
      was, now = 'one list of videos / labels', 'another'
    out.append(f'{key} {was} -> {now}')
  return out


def finished_shards(prefix: str) -> List[str]:
  """Names of the complete shards `PREFIX-iiiii-of-nnnnn.tfrecord` of any count."""
  folder, stem = paths.parent(prefix) or '.', paths.name(prefix)
  if not paths.isdir(folder):
    return []
  pattern = re.compile(re.escape(stem) + r'-\d{5}-of-\d{5}\.tfrecord')
  return [n for n in paths.listdir(folder) if pattern.fullmatch(n)]


def resume(prefix: str, shard_files: Sequence[str], new: dict) -> dict:
  """The manifest to continue from: the old one if its settings are `new`, a fresh one if no
  shard is finished yet; finished shards of other settings (or of no manifest, or not among
  `shard_files`) are a ValueError naming the difference."""
  finished = finished_shards(prefix)
  old: Optional[dict] = json.loads(paths.read_text(path(prefix))) if paths.exists(
      path(prefix)) else None
  if not finished:
    return dict(settings=new, shards_complete={})
  if old is None:
    raise ValueError(f'--out={prefix!r}: {len(finished)} shards exist without a manifest '
                     f'({finished[0]}, ...): write to another --out, or delete them')
  strays = sorted(set(finished) - {paths.name(p) for p in shard_files})
  differ = differences(old['settings'], new)
  if differ or strays:
    what = ', '.join(differ) or f'other shards ({strays[0]}, ...)'
    raise ValueError(f'--out={prefix!r} holds shards written with other settings ({what}): '
                     'write to another --out, or delete its shards and manifest')
  old['shards_complete'] = {k: v for k, v in old.get('shards_complete', {}).items()
                            if k in finished}
  return old


def write(prefix: str, manifest: dict):
  paths.write_text_atomic(path(prefix), json.dumps(manifest, indent=1))
