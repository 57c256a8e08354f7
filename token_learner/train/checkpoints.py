"""The checkpoint folder layout, and the only code that reads or writes it (orbax).

    WORKDIR/checkpoints/<step>/default/...   one folder per saved step (StandardSave of the state)
    WORKDIR/checkpoints/<step>/_CHECKPOINT_METADATA   orbax's step metadata; its custom part holds
        `digest` (per-array digests of the saved state), `config` (the run's config) and the
        `run` facts the trainer needs to resume its reports (train metrics, wall time)
    WORKDIR/checkpoints/<step>.corrupt.<t>   a corrupt step, moved aside on restore
    WORKDIR/checkpoints/<step>.unverified.<t>   a step without metadata to verify it, moved aside
    WORKDIR/checkpoints/<step>.orbax-checkpoint-tmp-<t>   a save in progress (removed if partial)

The trainer checks the folder is writable before anything is compiled (`check_writable`), saves
and resumes through `manager` / `save` / `restore_latest` (which verifies every restored array
against its digest and refuses a changed config, `check_config`); evaluate.py, visualize.py and
the pretrained loader read one checkpoint's parameters through `restore_verified` (the same
checks, never moving anything). Corruption is told from a read that failed for a reason outside
the checkpoint (I/O, memory, library versions): only the former moves a step aside.
"""
import errno
import functools
import json
import os
import re
import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from token_learner import fields
from token_learner import paths
from token_learner.train import preemption

CHECKPOINTS = 'checkpoints'
_ITEM = 'default'
_STEP_METADATA = '_CHECKPOINT_METADATA'  # orbax's step metadata file, with our custom part.
_ITEM_FILES = ('_METADATA', 'manifest.ocdbt')  # Written by every finished OCDBT save.


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Asynchronous manager of WORKDIR/checkpoints keeping the newest `keep` steps; partial saves
  a killed or failed run left there are removed first (remove_partial_saves)."""
  directory = paths.join(paths.absolute(workdir), CHECKPOINTS)
  remove_partial_saves(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options)


# orbax writes a step to `<step>.orbax-checkpoint-tmp-<t>` and renames it to `<step>` when done.
_PARTIAL_SAVE = re.compile(r'\d+\.orbax-checkpoint-tmp(-\d+)?')


def remove_partial_saves(directory) -> Sequence[str]:
  """Removes (process 0) the unfinished step folders of the checkpoint folder `directory`: only
  `<step>.orbax-checkpoint-tmp-<t>` folders, never a finished step; call it only when no save is
  in flight (start-up, after a failed save). Returns the names removed."""
  directory = os.fspath(directory)
  if jax.process_index() != 0 or not paths.isdir(directory):
    return []
  removed = [name for name in paths.listdir(directory) if _PARTIAL_SAVE.fullmatch(name)]
  for name in removed:
    paths.rmtree(paths.join(directory, name))
  if removed:
    logging.warning('Removed partial checkpoint saves in %s: %s', directory, removed)
  return removed


# Config fields that may change between the runs of one workdir without changing what is trained
# (reporting and checkpoint cadence; the attention kernel, which computes the same function on
# the same parameters: configs stored before 'auto' have None there); any other change (e.g.
# model.dtype) needs `allow` in check_config.
SAFE_TO_CHANGE = ('log_every_steps', 'evals', 'checkpoint_every_steps', 'keep_checkpoints',
                  'profile_steps', 'eval_batch_size', 'model.attention_implementation',
                  'compilation_cache_dir')


class ConfigChangedError(fields.ConfigError):
  """The config differs from the one the workdir's checkpoints were trained with."""


def check_writable(workdir: str, needed_bytes: int = 0):
  """Raises OSError naming the folder unless WORKDIR/checkpoints is (or can be made) a writable
  directory with room for about `needed_bytes`: found before compiling, not at the first save.

  A URL (gs://...) gets the same probe object written and removed; free space is checked only on
  a local disk (an object store has no such probe)."""
  path = paths.join(paths.absolute(workdir), CHECKPOINTS)
  probe = paths.join(path, f'.write_probe.{jax.process_index()}.{os.getpid()}')
  try:
    paths.makedirs(path)
    paths.write_bytes_atomic(probe, b'\0' * 4096)  # fsynced on a local disk.
    paths.remove(probe)
    free = paths.free_bytes(path)
    if free is not None and free < needed_bytes:
      raise OSError(errno.ENOSPC, f'{free / 2**20:.1f} MiB free, a checkpoint needs about '
                    f'{needed_bytes / 2**20:.1f} MiB')
  except Exception as e:  # pylint: disable=broad-except  # An object store's client errors too.
    raise OSError(getattr(e, 'errno', None), f'Cannot write checkpoints to {path}: '
                  f'{getattr(e, "strerror", None) or e}') from None


def _leaf_digest(x):
  """Two uint32 sums of a position-mixed hash of the array's bits: any changed byte changes them
  (but for 2^-64), and integer sums do not depend on the order, so on the sharding."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  index = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
  h = bits * jnp.uint32(0x9E3779B1) + index * jnp.uint32(0x85EBCA77) + jnp.uint32(1)
  h = (h ^ (h >> 15)) * jnp.uint32(0x2C1B3C6D)
  h = h ^ (h >> 12)
  g = (h ^ index) * jnp.uint32(0x27D4EB2F)
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
  return jnp.stack([jnp.sum(h), jnp.sum(g ^ (g >> 13))]), jnp.asarray(finite)


@jax.jit
def _device_digests(leaves):
  return [_leaf_digest(x) for x in leaves]


def digest(state) -> Dict[str, Any]:
  """{'arrays': {path: hex digest}, 'non_finite': [paths]} of a (sharded) state."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  results = jax.device_get(_device_digests([leaf for _, leaf in paths_leaves]))
  arrays, non_finite = {}, []
  for (path, _), (sums, finite) in zip(paths_leaves, results):
    name = jax.tree_util.keystr(path)
    arrays[name] = '%08x%08x' % tuple(int(v) for v in np.asarray(sums))
    if not bool(finite):
      non_finite.append(name)
  return {'arrays': arrays, 'non_finite': non_finite}


def _jsonable(tree):
  return json.loads(json.dumps(tree, default=str))


def save(mngr: ocp.CheckpointManager, step: int, state, *,
         config: Optional[Mapping[str, Any]] = None, run: Optional[Mapping[str, Any]] = None):
  """Saves `state` at `step` asynchronously, with its digest, the config and the `run` facts.

  An error of the previous asynchronous save is raised here, not lost in its thread.
  """
  check_errors(mngr)
  metadata = {'digest': digest(state)['arrays'], 'config': _jsonable(config or {}),
              'run': _jsonable(run or {})}
  try:  # Waits for the previous save first, raising its error.
    mngr.save(step, args=ocp.args.StandardSave(state), custom_metadata=metadata)
  except Exception as e:  # pylint: disable=broad-except
    _after_failed_save(mngr)
    raise OSError(f'Saving a checkpoint to {mngr.directory} failed: {_first_line(e)}') from e


def _after_failed_save(mngr: ocp.CheckpointManager):
  """Removes the failed save's partial folder (the next save, if any, has not started)."""
  try:
    remove_partial_saves(mngr.directory)
  except OSError as e:  # The error of the save is the one to report.
    logging.error('Could not remove partial saves in %s: %s', mngr.directory, e)


def check_errors(mngr: ocp.CheckpointManager, step: Optional[int] = None):
  """Raises OSError if the asynchronous save of `step` (the last one started) failed.

  Called after every train step: orbax's finalize thread logs a failed write and drops the
  step, so without this a full disk is found only by the next save.
  """
  try:
    mngr.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except
    _after_failed_save(mngr)
    raise OSError(f'Saving a checkpoint to {mngr.directory} failed: {e}') from e
  if (step is not None and jax.process_index() == 0 and not mngr.is_saving_in_progress()
      and not paths.isdir(paths.join(os.fspath(mngr.directory), str(step)))):
    _after_failed_save(mngr)
    raise OSError(f'Saving the checkpoint of step {step} to {mngr.directory} failed (the '
                  'error is logged above); is the disk full?')


def close(mngr: ocp.CheckpointManager):
  """Waits for the pending save and closes `mngr`; after an exception, a failed save is only
  logged, so the original error is the one raised."""
  # Called from a `finally` of a failing block? (A preemption has already waited for its save.)
  failing = sys.exc_info()[0] not in (None, preemption.Preempted)
  if failing and jax.process_count() > 1:
    # Closing syncs with the other processes: after a failure (often a dead peer) that would
    # wait minutes for them. A save still in flight is incomplete and ignored on restore.
    logging.error('Not waiting for pending checkpoint writes of a failed multi-process run.')
    return
  try:
    mngr.close()
  except Exception as e:  # pylint: disable=broad-except
    if not failing:
      raise
    logging.error('Closing the checkpoint manager failed: %s', e)


def step_metadata(mngr: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
  """The custom metadata `save` stored with `step` ({} if it has none or it cannot be read)."""
  verdict, _, metadata = _read_metadata(paths.join(os.fspath(mngr.directory), str(step)))
  return metadata if verdict in (_OK, _UNVERIFIED) else {}


def saved_config(path: str) -> Dict[str, Any]:
  """The config stored with a checkpoint (`path`: anything `item_dir` accepts, e.g. a workdir
  for its newest step); a ValueError naming the file if it has none."""
  step_dir = paths.parent(item_dir(path))
  verdict, reason, metadata = _read_metadata(step_dir)
  if verdict != _OK:
    raise ValueError(f'{paths.join(step_dir, _STEP_METADATA)}: {reason}: pass --config=the '
                     "run's config file")
  return metadata['config']


# ----------------------------------------------------------------------------- reading a step
# A step that cannot be read is either *corrupt* (its bytes are wrong: a digest mismatch,
# non-finite values, truncated or missing array data, torn metadata) or the read *failed* for a
# reason outside the checkpoint (an I/O error such as EIO, host or device out of memory, an
# orbax / tensorstore version or API error). Only corruption moves a step aside; a failure is
# retried and then raised, the checkpoint left as it is. A step without its metadata (or with
# metadata lacking the digest or the config) cannot be verified and is treated like corruption
# unless `allow_unverified` is passed.
_OK, _UNVERIFIED, _CORRUPT, _FAILED = 0, 1, 2, 3  # Combined over processes by max: worst wins.
RETRIES = 3  # Attempts of a read that failed for a reason outside the checkpoint.
BACKOFF_S = 2.0  # Wait before the 2nd attempt; doubled for each further one.
# tensorstore / XLA status codes in an error's text.
_FAILURE_STATUS = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED', 'ABORTED',
                   'CANCELLED', 'UNIMPLEMENTED', 'PERMISSION_DENIED', 'UNAUTHENTICATED')
_CORRUPT_STATUS = ('DATA_LOSS', 'OUT_OF_RANGE', 'FAILED_PRECONDITION', 'NOT_FOUND')
# tensorstore's errors decoding garbled array data (no status code in the text); failures such
# as EIO are recognised first, by _FAILURE_ERRNO / _FAILURE_TEXT.
_CORRUPT_TEXT = ('Error opening "zarr" driver', 'in OCDBT database')
_FAILURE_ERRNO = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.EBUSY,
                  errno.ENOMEM, errno.ESTALE, errno.ECONNRESET, errno.ECONNREFUSED,
                  errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES,
                  errno.EPERM, errno.EMFILE, errno.ENFILE}
_FAILURE_TEXT = ('Input/output error', 'out of memory', 'Out of memory', 'OutOfMemory',
                 'Resource temporarily unavailable', 'Connection reset', 'Permission denied')


class CheckpointReadError(RuntimeError):
  """A checkpoint cannot be used (the subclasses say why)."""


class CorruptCheckpointError(CheckpointReadError):
  """No checkpoint of the workdir can be restored intact (or the one asked for is corrupt)."""


class UnverifiedCheckpointError(CorruptCheckpointError):
  """A checkpoint without the metadata (digest, config) to verify it against."""


class CheckpointUnavailableError(CheckpointReadError):
  """A checkpoint not found corrupt could not be read (I/O, memory, library versions); it is left
  in place and a later attempt may succeed."""


def _causes(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def is_corruption(error: BaseException) -> bool:
  """True if `error` (raised reading a checkpoint) says the checkpoint's bytes are wrong; False
  for failures outside it (EIO, out of memory, library errors) and for anything unrecognised,
  so that an unknown error never moves a checkpoint aside."""
  causes = list(_causes(error))
  for e in causes:
    text = str(e)
    if (isinstance(e, (MemoryError, ImportError, AttributeError, TypeError, NotImplementedError,
                       CheckpointUnavailableError))
        or (isinstance(e, OSError) and e.errno in _FAILURE_ERRNO)
        or any(f'{s}:' in text for s in _FAILURE_STATUS)
        or any(t in text for t in _FAILURE_TEXT)):
      return False
  for e in causes:
    if isinstance(e, (CorruptCheckpointError, json.JSONDecodeError, FileNotFoundError)):
      return True
    if (any(f'{s}:' in str(e) for s in _CORRUPT_STATUS)
        or any(t in str(e) for t in _CORRUPT_TEXT)):
      return True
  return False


def _attempt(read, what: str):
  """(verdict, reason, result) of `read()`, retried with backoff unless the error is
  corruption."""
  for attempt in range(RETRIES):
    try:
      return _OK, '', read()
    except Exception as e:  # pylint: disable=broad-except  # Classified below.
      if is_corruption(e):
        return _CORRUPT, _first_line(e), None
      reason = f'{type(e).__name__}: {_first_line(e)}'
      if attempt + 1 < RETRIES:
        wait = BACKOFF_S * 2 ** attempt
        logging.warning('Reading %s failed (%s); the checkpoint is not found corrupt, retrying '
                        'in %.0f s.', what, reason, wait)
        time.sleep(wait)
  return _FAILED, reason, None


def _read_metadata(step_dir: str, allow_unverified: bool = False):
  """(verdict, reason, custom metadata) of the step folder `step_dir`."""
  path = paths.join(step_dir, _STEP_METADATA)

  def read():
    try:
      return paths.read_text(path)
    except FileNotFoundError:
      return None
  verdict, reason, text = _attempt(read, path)
  if verdict != _OK:
    return verdict, reason, {}
  if text is None:
    verdict, reason, custom = _UNVERIFIED, f'no {_STEP_METADATA} (digest and config)', {}
  else:
    try:
      custom = json.loads(text).get('custom_metadata') or {}
      custom = dict(custom)
    except (ValueError, AttributeError, TypeError):
      return _CORRUPT, f'{_STEP_METADATA} is torn or not orbax metadata', {}
    missing = [k for k in ('digest', 'config') if not custom.get(k)]
    verdict, reason = ((_UNVERIFIED, f'{_STEP_METADATA} has no {" or ".join(missing)}')
                       if missing else (_OK, ''))
  # The item's index files (orbax's OCDBT format): without them orbax reports a pytree
  # structure error, which would otherwise read as a failure, not as missing array data.
  lost, reason_lost, missing_files = _attempt(
      lambda: [f for f in _ITEM_FILES if paths.isdir(paths.join(step_dir, _ITEM))
               and not paths.exists(paths.join(step_dir, _ITEM, f))],
      step_dir)
  if lost != _OK:
    return lost, reason_lost, {}
  if missing_files:
    return _CORRUPT, f'{_ITEM}/{missing_files[0]} is missing (array data or its index)', {}
  if verdict == _UNVERIFIED and allow_unverified:
    logging.warning('%s: %s; restored unverified (allow_unverified), only checked finite.',
                    step_dir, reason)
    return _OK, '', custom
  return verdict, reason, custom


def _all_verdicts(verdict: int) -> np.ndarray:
  """Every process's verdict (one collective call on each process)."""
  if jax.process_count() == 1:
    return np.asarray([verdict])
  return np.asarray(multihost_utils.process_allgather(np.int32(verdict)))


def _agree(verdict: int) -> int:
  """The verdict every process acts on: the worst of all processes' verdicts, so that all
  restore the same step (or all raise) and none renames a step another could not judge."""
  return int(np.max(_all_verdicts(verdict)))


def _unavailable(step: int, where: str, reason: str) -> CheckpointUnavailableError:
  return CheckpointUnavailableError(
      f'Checkpoint at step {step} in {where} is intact as far as can be told, but it could not '
      f'be read after {RETRIES} attempts ({reason or "on another process"}). It was left in '
      'place: fix the cause (I/O errors, memory, the orbax / tensorstore versions, a state that '
      'does not fit this config) and run the same command again.')


def _verify(state, metadata: Mapping[str, Any], allow_unverified: bool = False,
            prefix: str = ''):
  """Raises CorruptCheckpointError unless every array matches its stored digest and is finite.

  `prefix`: the stored digests are of the whole state and `state` is its part under this key
  (e.g. 'params').
  """
  found = digest(state)
  stored = metadata.get('digest')
  if stored and prefix:  # State keys: '.params[...]' (TrainState) or "['params'][...]" (dict).
    heads = (f'.{prefix}', f"['{prefix}']")
    part = {k[len(h):]: v for k, v in stored.items() for h in heads if k.startswith(h + '[')}
    stored = part or stored  # A checkpoint of the parameters alone has no prefix.
  if stored:
    bad = [k for k, v in found['arrays'].items() if stored.get(k) != v]
    if bad or set(stored) != set(found['arrays']):
      raise CorruptCheckpointError(f'{len(bad)} array(s) differ from their digest at save '
                                   f'time, e.g. {(bad or sorted(stored))[0]}')
  elif not allow_unverified:
    raise UnverifiedCheckpointError(f'no digest in {_STEP_METADATA}')
  if found['non_finite']:
    raise CorruptCheckpointError(f'non-finite values in {found["non_finite"][0]}')


def _set_aside(directory: str, bad: Sequence):
  """Process 0 renames the corrupt (unverified) steps `<step>.corrupt.<t>`
  (`<step>.unverified.<t>`); every process then waits for it."""
  if jax.process_index() == 0:
    for step, verdict, _ in bad:
      kind = 'unverified' if verdict == _UNVERIFIED else 'corrupt'
      paths.rename(paths.join(directory, str(step)),
                   paths.join(directory, f'{step}.{kind}.{int(time.time())}'))
  multihost_utils.sync_global_devices('checkpoints:corrupt_moved')


def restore_latest(mngr: ocp.CheckpointManager, abstract_state,
                   config: Optional[Mapping[str, Any]] = None, allow: Sequence[str] = (),
                   allow_unverified: bool = False):
  """Restores the newest verified checkpoint into the shardings of `abstract_state`.

  Newest first, each step is judged on every process and the verdicts combined (the worst
  wins), so all processes restore the same step:
  - corrupt (arrays truncated, missing or differing from the digests stored at save time,
    non-finite values, torn metadata) or unverifiable (no metadata, digest or config; unless
    `allow_unverified`): skipped with a warning, and once an older step restores intact, moved
    aside by process 0 as `<step>.corrupt.<t>` / `<step>.unverified.<t>`;
  - a read that failed for another reason (EIO, out of memory, orbax / tensorstore errors) is
    retried RETRIES times with backoff, then CheckpointUnavailableError is raised and nothing is
    moved.
  If checkpoints exist but none is intact this raises CorruptCheckpointError (nothing moved)
  instead of silently starting over. `config` is compared with the config stored with the step
  about to be restored (check_config).

  Returns:
    (state or None, manager, metadata): the manager is re-created if directories were moved;
    metadata is what `save` stored with the restored step ({} if none).
  """
  directory = os.fspath(mngr.directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  bad = []  # (step, verdict, reason) of corrupt / unverifiable steps.
  for step in steps:
    step_dir = paths.join(directory, str(step))
    read = functools.partial(mngr.restore, step, args=ocp.args.StandardRestore(abstract_state))
    verdict, reason, metadata = _read_metadata(step_dir, allow_unverified)
    verdict = _agree(verdict)
    if verdict == _OK:
      if config is not None and metadata.get('config'):
        check_config(metadata['config'], config, allow)
      verdict, reason, state = _attempt(read, step_dir)
      verdict = _agree(verdict)
    if verdict == _FAILED:
      raise _unavailable(step, directory, reason)
    if verdict == _OK:
      try:  # The digest is of the global arrays: the same verdict on every process.
        _verify(state, metadata, allow_unverified)
      except CorruptCheckpointError as e:
        verdict, reason = _CORRUPT, _first_line(e)
    if verdict != _OK:
      logging.warning('Checkpoint at step %d is %s, trying the previous one: %s', step,
                      'unverifiable' if verdict == _UNVERIFIED else 'unreadable or corrupt',
                      reason or 'so found on another process')
      bad.append((step, verdict, reason))
      continue
    if bad:
      mngr.close()
      _set_aside(directory, bad)
      mngr = ocp.CheckpointManager(directory, options=mngr._options)  # pylint: disable=protected-access
    logging.info('Restored checkpoint at step %d (%s).', step,
                 'verified against its digest' if metadata.get('digest') else
                 'unverified: no digest; checked finite')
    return state, mngr, metadata
  if bad:
    details = '; '.join(f'{s}: {r}' for s, _, r in bad)
    raise CorruptCheckpointError(
        f'None of the checkpoints {steps} in {directory} can be restored intact ({details}). '
        'They are left in place. To train anyway, use a new workdir; a checkpoint without '
        'metadata restores with allow_unverified.')
  return None, mngr, {}


def restore_verified(path: str, allow_unverified: bool = False):
  """(params as numpy, metadata) of one checkpoint, verified: the read path of evaluate.py,
  visualize.py and `init_from` kind 'checkpoint'. Never moves or writes anything.

  `path`: anything `item_dir` accepts. Corrupt or unverifiable (no metadata, digest or config;
  unless `allow_unverified`): CorruptCheckpointError / UnverifiedCheckpointError; a read that
  failed for another reason after RETRIES attempts: CheckpointUnavailableError.
  """
  item = item_dir(path)
  step_dir = paths.parent(item)
  verdict, reason, metadata = _read_metadata(step_dir, allow_unverified)
  if verdict == _OK:
    verdict, reason, params = _attempt(lambda: _restore_raw(item), item)
  step = paths.name(step_dir)
  if verdict == _FAILED:
    raise _unavailable(step, paths.parent(step_dir), reason)
  if verdict == _UNVERIFIED:
    raise UnverifiedCheckpointError(
        f'{step_dir}: {reason}, so it cannot be verified; refused (pass '
        '--allow_unverified_checkpoint to read it anyway)')
  if verdict == _CORRUPT:
    raise CorruptCheckpointError(f'{step_dir} is unreadable or corrupt: {reason}')
  try:
    _verify(params, metadata, allow_unverified, prefix='params')
  except CorruptCheckpointError as e:
    raise type(e)(f'{step_dir} is corrupt: {e}') from None
  logging.info('Read the parameters of %s (verified against its digest).', step_dir)
  return params, metadata


def _first_line(error: Exception, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:limit]


def _flat(tree, prefix='config') -> Dict[str, Any]:
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f'{prefix}.{key}'))
  return out


def _differences(saved: Mapping[str, Any], config: Mapping[str, Any], allowed: Sequence[str]):
  """[(field, old, new)] of the fields that differ, but those under `allowed` (names like
  'num_train_steps' or 'config.model.dropout_rate', or a section: 'model.tokenlearner')."""
  old, new = _flat(_jsonable(saved)), _flat(_jsonable(config))
  allowed = tuple(a if a.startswith('config.') else f'config.{a}' for a in allowed)
  is_allowed = lambda k: any(k == a or k.startswith(a + '.') for a in allowed)  # Or a section.
  return [(k, old.get(k, '<unset>'), new.get(k, '<unset>')) for k in sorted(set(old) | set(new))
          if old.get(k, '<unset>') != new.get(k, '<unset>') and not is_allowed(k)]


def _listed(differences) -> str:
  return ', '.join(f'{k}: {old!r} -> {new!r}' for k, old, new in differences)


def check_config(saved: Mapping[str, Any], config: Mapping[str, Any],
                 allow: Sequence[str] = ()):
  """Raises ConfigChangedError listing every field of `config` that differs from `saved` (the
  config stored with the restored checkpoint) other than SAFE_TO_CHANGE and `allow` (names like
  'num_train_steps' or 'config.model.dropout_rate', or a section: 'model.tokenlearner')."""
  if not saved:
    return
  changed = _differences(saved, config, (*SAFE_TO_CHANGE, *allow))
  if changed:
    raise ConfigChangedError(
        f'The config differs from the one the checkpoints in this workdir were trained with: '
        f'{_listed(changed)}. Use a new workdir, or pass '
        f'--allow_config_change={",".join(k for k, _, _ in changed)} if the change is intended.')


def check_model_config(saved: Mapping[str, Any], config: Mapping[str, Any],
                       allow: Sequence[str] = (), where: str = 'the checkpoint'):
  """For a program that reads a checkpoint with a config of its own (evaluate.py, visualize.py):
  logs one line listing every field of `config` that differs from `saved`, the config stored
  with the checkpoint, and raises ConfigChangedError if any of them is a model field (other than
  SAFE_TO_CHANGE and `allow`): the parameters were trained for the stored model."""
  differences = _differences(saved, config, ())
  if not differences:
    return
  logging.info('The config differs from the one stored with %s in: %s', where,
               _listed(differences))
  allowed = tuple(a if a.startswith('config.') else f'config.{a}'
                  for a in (*SAFE_TO_CHANGE, *allow))
  model = [d for d in _differences(saved, config, allowed) if d[0].startswith('config.model.')]
  if model:
    raise ConfigChangedError(
        f'The model config differs from the one stored with {where}: {_listed(model)}. Leave '
        'out --config to use the stored one, or pass '
        f'--allow_config_change={",".join(k for k, _, _ in model)} if the change is intended.')


def item_dir(path: str) -> str:
  """workdir | workdir/checkpoints | .../checkpoints/<step> | .../<step>/default -> item folder
  (the newest step when `path` holds several)."""
  path = paths.absolute(path)
  if paths.isdir(paths.join(path, CHECKPOINTS)):
    path = paths.join(path, CHECKPOINTS)
  steps = [d for d in paths.listdir(path) if d.isdigit()]
  if steps:
    path = paths.join(path, max(steps, key=int))
  if paths.isdir(paths.join(path, _ITEM)):
    path = paths.join(path, _ITEM)
  return path


def restore_params(path: str, verify: bool = True, allow_unverified: bool = False):
  """Parameters of a checkpoint as numpy, whatever devices or processes wrote it, verified
  against its digest (`restore_verified`); `verify=False` reads them as they are (tests and the
  fault suite, to look at a garbled checkpoint).

  `path`: anything `item_dir` accepts.
  """
  if verify:
    return restore_verified(path, allow_unverified)[0]
  return _restore_raw(item_dir(path))


def _restore_raw(item: str):
  """The parameters of item folder `item`: the restore target is built from the checkpoint's own
  metadata with a single-device sharding, so a checkpoint written by a multi-process run loads
  anywhere."""
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(checkpointer.metadata(item).item_metadata.tree))
  restored = jax.device_get(checkpointer.restore(item, target))
  return restored.get('params', restored)
