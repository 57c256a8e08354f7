"""The checkpoint folder layout, and the only code that reads or writes it (orbax).

    WORKDIR/checkpoints/<step>/default/...   one folder per saved step (StandardSave of the state)
    WORKDIR/checkpoints/<step>.corrupt.<t>   an unreadable step, moved aside on restore

The trainer saves and resumes through `manager` / `restore_latest`; the pretrained loader reads
the parameters of any of these folders through `restore_params`.
"""
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

CHECKPOINTS = 'checkpoints'
_ITEM = 'default'


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Asynchronous manager of WORKDIR/checkpoints keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, state):
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """Restores the newest readable checkpoint into the shardings of `abstract_state`.

  Unreadable newer checkpoints (a step directory missing files, or with garbage) are skipped
  with a warning and moved aside as `<step>.corrupt.<time>`, so the run continues from the
  previous one. If checkpoints exist but none is readable (e.g. the config changed the model)
  this raises instead of silently starting over.

  Returns:
    (state or None, manager): the manager is re-created if directories were moved.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except  # Any read error means unusable.
      logging.warning('Checkpoint at step %d is unreadable, trying the previous one: %s', step,
                      e)
      failures.append((step, e))
      continue
    if failures:
      directory = mngr.directory
      mngr.close()
      if jax.process_index() == 0:
        for bad_step, _ in failures:
          os.replace(os.path.join(directory, str(bad_step)),
                     os.path.join(directory, f'{bad_step}.corrupt.{int(time.time())}'))
      multihost_utils.sync_global_devices('checkpoints:corrupt_moved')
      mngr = ocp.CheckpointManager(directory, options=mngr._options)  # pylint: disable=protected-access
    logging.info('Restored checkpoint at step %d.', step)
    return state, mngr
  if failures:
    raise RuntimeError(f'None of the checkpoints {steps} in {mngr.directory} can be restored '
                       f'into this config (last error: {failures[-1][1]}). Use a new workdir or '
                       'remove the checkpoints.')
  return None, mngr


def item_dir(path: str) -> str:
  """workdir | workdir/checkpoints | .../checkpoints/<step> | .../<step>/default -> item folder
  (the newest step when `path` holds several)."""
  if os.path.isdir(os.path.join(path, CHECKPOINTS)):
    path = os.path.join(path, CHECKPOINTS)
  steps = [d for d in os.listdir(path) if d.isdigit()]
  if steps:
    path = os.path.join(path, max(steps, key=int))
  if os.path.isdir(os.path.join(path, _ITEM)):
    path = os.path.join(path, _ITEM)
  return os.path.abspath(path)


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
