"""The checkpoint folder layout, and the only code that reads or writes it (orbax).

    WORKDIR/checkpoints/<step>/default/...   one folder per saved step (StandardSave of the state)
    WORKDIR/checkpoints/<step>/_CHECKPOINT_METADATA   orbax's step metadata; its custom part holds
        `digest` (per-array digests of the saved state), `config` (the run's config) and the
        `run` facts the trainer needs to resume its reports (train metrics, wall time)
    WORKDIR/checkpoints/<step>.corrupt.<t>   an unreadable or corrupt step, moved aside on restore

The trainer checks the folder is writable before anything is compiled (`check_writable`), saves
and resumes through `manager` / `save` / `restore_latest` (which verifies every restored array
against its digest and refuses a changed config, `check_config`); the pretrained loader reads the
parameters of any of these folders through `restore_params`.
"""
import errno
import functools
import json
import os
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


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Asynchronous manager of WORKDIR/checkpoints keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(paths.join(paths.absolute(workdir), CHECKPOINTS),
                               options=options)


# Config fields that may change between the runs of one workdir without changing what is trained
# (reporting and checkpoint cadence; the attention kernel, which computes the same function on
# the same parameters: configs stored before 'auto' have None there); any other change (e.g.
# model.dtype) needs `allow` in check_config.
SAFE_TO_CHANGE = ('log_every_steps', 'evals', 'checkpoint_every_steps', 'keep_checkpoints',
                  'profile_steps', 'eval_batch_size', 'model.attention_implementation')


class ConfigChangedError(fields.ConfigError):
  """The config differs from the one the workdir's checkpoints were trained with."""


class CorruptCheckpointError(RuntimeError):
  """No checkpoint of the workdir can be restored intact."""


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
    raise OSError(f'Saving a checkpoint to {mngr.directory} failed: {_first_line(e)}') from e


def check_errors(mngr: ocp.CheckpointManager, step: Optional[int] = None):
  """Raises OSError if the asynchronous save of `step` (the last one started) failed.

  Called after every train step: orbax's finalize thread logs a failed write and drops the
  step, so without this a full disk is found only by the next save.
  """
  try:
    mngr.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f'Saving a checkpoint to {mngr.directory} failed: {e}') from e
  if (step is not None and jax.process_index() == 0 and not mngr.is_saving_in_progress()
      and not paths.isdir(paths.join(os.fspath(mngr.directory), str(step)))):
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
  """The custom metadata `save` stored with `step` ({} for checkpoints written before it)."""
  path = paths.join(os.fspath(mngr.directory), str(step), _STEP_METADATA)
  try:
    return dict(json.loads(paths.read_text(path)).get('custom_metadata') or {})
  except (OSError, ValueError, AttributeError):  # Missing, torn or not a JSON object.
    return {}


def saved_config(path: str) -> Dict[str, Any]:
  """The config stored with a checkpoint (`path`: anything `item_dir` accepts, e.g. a workdir
  for its newest step); a ValueError naming the file if it has none."""
  step_dir = paths.parent(item_dir(path))
  metadata = paths.join(step_dir, _STEP_METADATA)
  try:
    config = (json.loads(paths.read_text(metadata)).get('custom_metadata') or {}).get('config')
  except (OSError, ValueError, AttributeError):
    config = None
  if not config:
    raise ValueError(f'{metadata} holds no config (a checkpoint of another program, or torn): '
                     'pass --config=the run\'s config file')
  return config


def _verify(state, metadata: Mapping[str, Any]):
  """Raises CorruptCheckpointError unless every array matches its stored digest and is finite."""
  found = digest(state)
  stored = metadata.get('digest')
  if stored:
    bad = [k for k, v in found['arrays'].items() if stored.get(k) != v]
    if bad or set(stored) != set(found['arrays']):
      raise CorruptCheckpointError(f'{len(bad)} array(s) differ from their digest at save '
                                   f'time, e.g. {(bad or sorted(stored))[0]}')
  if found['non_finite']:
    raise CorruptCheckpointError(f'non-finite values in {found["non_finite"][0]}')
  if not stored:
    logging.warning('Checkpoint has no digest (written before digests); only checked finite.')


def restore_latest(mngr: ocp.CheckpointManager, abstract_state,
                   config: Optional[Mapping[str, Any]] = None, allow: Sequence[str] = ()):
  """Restores the newest intact checkpoint into the shardings of `abstract_state`.

  A newer checkpoint that cannot be read (files missing or truncated), or whose arrays differ
  from the digests stored when it was saved (bytes overwritten), or holds non-finite values, is
  skipped with a warning and moved aside as `<step>.corrupt.<time>`, so the run continues from
  the previous one. If checkpoints exist but none is intact (or none fits the config) this
  raises instead of silently starting over.

  `config` is first compared with the config saved with the newest checkpoint (check_config).

  Returns:
    (state or None, manager, metadata): the manager is re-created if directories were moved;
    metadata is what `save` stored with the restored step ({} if none).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if config is not None:
    saved = next((m['config'] for m in map(functools.partial(step_metadata, mngr), steps)
                  if m.get('config')), None)
    check_config(saved, config, allow)
  failures = []
  for step in steps:
    metadata = step_metadata(mngr, step)
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      _verify(state, metadata)
    except Exception as e:  # pylint: disable=broad-except  # Any read error means unusable.
      logging.warning('Checkpoint at step %d is unreadable or corrupt, trying the previous '
                      'one: %s', step, e)
      failures.append((step, _first_line(e)))
      continue
    if failures:
      directory = mngr.directory
      mngr.close()
      if jax.process_index() == 0:
        for bad_step, _ in failures:
          folder = os.fspath(directory)
          paths.rename(paths.join(folder, str(bad_step)),
                       paths.join(folder, f'{bad_step}.corrupt.{int(time.time())}'))
      multihost_utils.sync_global_devices('checkpoints:corrupt_moved')
      mngr = ocp.CheckpointManager(directory, options=mngr._options)  # pylint: disable=protected-access
    logging.info('Restored checkpoint at step %d (verified against its digest).', step)
    return state, mngr, metadata
  if failures:
    raise CorruptCheckpointError(
        f'None of the checkpoints {steps} in {mngr.directory} can be restored intact into this '
        f'config (last error: {failures[-1][1]}). Use a new workdir or remove the checkpoints.')
  return None, mngr, {}


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


def check_config(saved: Mapping[str, Any], config: Mapping[str, Any],
                 allow: Sequence[str] = ()):
  """Raises ConfigChangedError listing every field of `config` that differs from `saved` (the
  config stored with the restored checkpoint) other than SAFE_TO_CHANGE and `allow` (names like
  'num_train_steps' or 'config.model.dropout_rate', or a section: 'model.tokenlearner')."""
  if not saved:
    return
  old, new = _flat(_jsonable(saved)), _flat(_jsonable(config))
  allowed = tuple(a if a.startswith('config.') else f'config.{a}'
                  for a in (*SAFE_TO_CHANGE, *allow))
  is_allowed = lambda k: any(k == a or k.startswith(a + '.') for a in allowed)  # Or a section.
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k, '<unset>') != new.get(k, '<unset>') and not is_allowed(k))
  if changed:
    details = ', '.join(f'{k}: {old.get(k, "<unset>")!r} -> {new.get(k, "<unset>")!r}'
                        for k in changed)
    raise ConfigChangedError(
        f'The config differs from the one the checkpoints in this workdir were trained with: '
        f'{details}. Use a new workdir, or pass --allow_config_change={",".join(changed)} if the '
        'change is intended.')


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


def restore_params(path: str):
  """Parameters of a checkpoint as numpy, whatever devices or processes wrote it.

  `path`: anything `item_dir` accepts. The restore target is built from the checkpoint's own
  metadata with a single-device sharding, so a checkpoint written by a multi-process run loads
  anywhere.
  """
  path = item_dir(path)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(checkpointer.metadata(path).item_metadata.tree))
  restored = jax.device_get(checkpointer.restore(path, target))
  return restored.get('params', restored)
