"""The one path layer for everything the system reads or writes: local folders and URLs alike.

A workdir, a dataset root or a checkpoint may be a local path or a URL such as `gs://bucket/run`
(TPU VM pods share a bucket, not a disk). Every file operation of the library goes through this
module, which wraps `etils.epath` (tf.io.gfile or fsspec under a URL), so that:

- a URL is never turned into a local folder (`os.path.abspath('gs://b/run')` is `./gs:/b/run`);
- local-only probes (free space, fsync) run only on local paths;
- a file written "atomically" is a temp file renamed over the target on a local disk, and a single
  object upload on an object store (both are all-or-nothing for readers).

Functions take and return `str` (what orbax, TensorBoard and tf.data want), never epath objects.
"""
import os
import shutil
from typing import List, Optional

from etils import epath


def is_url(path) -> bool:
  """True for `scheme://...` (gs://, s3://, ...), False for a local path."""
  return '://' in os.fspath(path)


def _p(path) -> epath.Path:
  return epath.Path(os.fspath(path))


def absolute(path) -> str:
  """A local path made absolute; a URL unchanged (never `./gs:/...`)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(path, *parts) -> str:
  """`path/part/...` for local paths and URLs (no os.path quirks on a URL)."""
  path = os.fspath(path)
  if is_url(path):
    return '/'.join([path.rstrip('/'), *(os.fspath(p).strip('/') for p in parts)])
  return os.path.join(path, *map(os.fspath, parts))


def name(path) -> str:
  """The last component of `path`."""
  return os.fspath(path).rstrip('/').rsplit('/', 1)[-1]


def parent(path) -> str:
  """`path` without its last component."""
  path = os.fspath(path)
  if is_url(path):
    return path.rstrip('/').rsplit('/', 1)[0]
  return os.path.dirname(path)


def exists(path) -> bool:
  return _p(path).exists()


def isdir(path) -> bool:
  return _p(path).is_dir()


def isfile(path) -> bool:
  return _p(path).is_file()


def makedirs(path):
  """Creates `path` and its parents (a no-op on an object store whose folders are prefixes)."""
  _p(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> List[str]:
  """The names (not paths) in folder `path`, sorted (on an object store without the folder's own
  `name/` marker object, which TensorFlow writes and gcsfs lists as an entry)."""
  own = os.fspath(path).rstrip('/')
  return sorted(name(p) for p in _p(path).iterdir() if os.fspath(p).rstrip('/') != own)


def glob(path, pattern: str) -> List[str]:
  """The paths in folder `path` whose names match `pattern`, sorted."""
  return sorted(os.fspath(p) for p in _p(path).glob(pattern))


def remove(path):
  _p(path).unlink()


def rmtree(path):
  """Removes folder `path` and everything in it."""
  if is_url(path):
    _p(path).rmtree()
  else:
    shutil.rmtree(path)


def rename(src, dst):
  """Moves file or folder `src` to `dst` (an atomic rename on a local disk)."""
  if is_url(src):
    if _p(src).is_file():  # Copy and delete: a new "folder" of an object store has no object yet,
      _p(dst).write_bytes(_p(src).read_bytes())  # which epath's rename would take as missing.
      _p(src).unlink()
    else:
      _p(src).rename(os.fspath(dst))
  else:
    os.replace(src, dst)


def read_bytes(path) -> bytes:
  return _p(path).read_bytes()


def read_text(path) -> str:
  return _p(path).read_text()


def write_bytes_atomic(path, data: bytes):
  """Writes `data` to `path` so that a reader sees the old file or the new one, never half."""
  path = os.fspath(path)
  if is_url(path):
    _p(path).write_bytes(data)  # One object upload: all or nothing.
    return
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def create_exclusive(path, data: bytes) -> bool:
  """Writes `data` to `path` unless it exists, as one atomic test-and-create; False if it exists.

  O_CREAT | O_EXCL on a local disk; on gs:// an upload with the precondition ifGenerationMatch=0
  through gcsfs (its 'x' mode). NotImplementedError elsewhere (or without gcsfs)."""
  path = os.fspath(path)
  if not is_url(path):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return True
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
    import fsspec  # pylint: disable=g-import-not-at-top
  except ImportError:
    gcsfs = None
  if gcsfs is None or not path.startswith('gs://'):
    raise NotImplementedError(f'no exclusive create for {path}')
  try:
    with fsspec.filesystem('gcs').open(path, 'xb') as f:
      f.write(data)
  except FileExistsError:
    return False
  return True


def write_text_atomic(path, text: str):
  write_bytes_atomic(path, text.encode('utf-8'))


def open_file(path, mode: str = 'r'):
  """A file object for `path` (local or URL)."""
  return _p(path).open(mode)


def free_bytes(path) -> Optional[int]:
  """Free bytes on the local disk holding `path`; None for a URL (no such probe there)."""
  if is_url(path):
    return None
  stats = os.statvfs(path)
  return stats.f_bavail * stats.f_frsize
