"""JAX's persistent compilation cache, in the folder of `config.compilation_cache_dir`.

A compiled train or eval step is written to the folder and read back by the next process that
compiles the same program on the same backend (a restarted or resumed run, a rerun, another host
of a pod), so its start skips XLA's compilation (`benchmarks/compile_cache.py` measures it). The
folder may be local (`~` expanded) or a URL: jax reads and writes it through etils.epath, so a
`gs://bucket/jax_cache` is shared by every host of a TPU pod and survives their VMs. '' turns the
cache off.

An already configured cache wins over the field: the environment variable
`JAX_COMPILATION_CACHE_DIR`, or a caller that set `jax_compilation_cache_dir` before (the test
suite's session cache, tests/conftest.py), is left as it is.
"""
import os
from typing import Optional

from absl import logging
import jax

from token_learner import experiment
from token_learner import fields
from token_learner import paths

# Programs that compile faster than this are not written: reading a file back (a round trip
# to an object store on a pod) would cost about as much as compiling them. Every train and eval
# step of a model compiles for longer.
MIN_COMPILE_TIME_SECS = 0.5


def enable(cache_dir: str) -> Optional[str]:
  """Turns the cache on in `cache_dir` (config.compilation_cache_dir) before anything compiles;
  returns the folder jax uses (None: off). Raises fields.ConfigError naming the field when the
  folder cannot be created or written (also when an earlier setting wins)."""
  folder = paths.absolute(cache_dir) if cache_dir else None
  if folder:
    _check_folder(folder, f'config.compilation_cache_dir={cache_dir!r}')
  current = jax.config.jax_compilation_cache_dir
  if current:
    if folder and current != folder:
      logging.info('Compilation cache: %s (set before the config; config.compilation_cache_dir='
                   '%r is not used)', current, cache_dir)
    return current
  if not folder:
    return None
  jax.config.update('jax_compilation_cache_dir', folder)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_SECS)
  logging.info('Compilation cache: %s', folder)
  return folder


def _check_folder(folder: str, where: str):
  """Creates `folder` (local or URL); a file there or an unwritable local folder is an error."""
  if paths.exists(folder) and not paths.isdir(folder):
    raise fields.ConfigError(f'{where} is a file, not a folder')
  try:
    paths.makedirs(folder)
  except OSError as e:
    raise fields.ConfigError(f'{where}: cannot create the folder ({e.strerror or e})') from None
  if not paths.is_url(folder) and not os.access(folder, os.W_OK | os.X_OK):
    raise fields.ConfigError(f'{where}: the folder is not writable')


def enable_for(config) -> Optional[str]:
  """`enable` with the `compilation_cache_dir` of an experiment config (a ConfigDict or dict),
  validated like every trainer field."""
  with fields.config_errors():
    cache_dir = experiment.from_config(config).train.compilation_cache_dir
  return enable(cache_dir)
