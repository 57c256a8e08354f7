"""config.compilation_cache_dir: JAX's persistent compilation cache, as main.py turns it on."""
import os

import jax
from jax._src import compilation_cache
import jax.numpy as jnp
import pytest

from token_learner import fields
from token_learner.train import compile_cache
from token_learner.train import config as train_config


@pytest.fixture
def no_cache_yet(monkeypatch):
  """A process whose cache is not configured yet (as main.py starts); the session cache of
  tests/conftest.py is put back afterwards."""
  monkeypatch.delenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', raising=False)
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update('jax_compilation_cache_dir', None)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_the_field_turns_the_cache_on(tmp_path, tiny_config, no_cache_yet):
  folder = tmp_path / 'jax_cache'
  assert compile_cache.enable_for(tiny_config(compilation_cache_dir=str(folder))) == str(folder)
  assert jax.config.jax_compilation_cache_dir == str(folder)
  assert (jax.config.jax_persistent_cache_min_compile_time_secs
          == compile_cache.MIN_COMPILE_TIME_SECS)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # This program is tiny.
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.25).lower(jnp.ones((7,))).compile()
  assert os.listdir(folder)  # A cache entry.


def test_off_and_an_earlier_setting_win(tmp_path, tiny_config, no_cache_yet):
  assert compile_cache.enable('') is None
  assert not jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'earlier'))
  assert compile_cache.enable(str(tmp_path / 'mine')) == str(tmp_path / 'earlier')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'earlier')


def test_default_is_under_the_users_cache():
  default = train_config.TrainConfig(num_train_steps=1).compilation_cache_dir
  assert default == train_config.COMPILATION_CACHE_DIR and default.startswith('~/.cache/')


def test_bad_values_are_one_config_error(tmp_path, tiny_config):
  config = tiny_config().to_dict()
  config['compilation_cache_dir'] = 5
  with pytest.raises(fields.ConfigError, match='config.compilation_cache_dir=5 must be a string'):
    compile_cache.enable_for(config)
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  # Checked even while an earlier setting (the suite's session cache) wins.
  with pytest.raises(fields.ConfigError, match='config.compilation_cache_dir=.* is a file'):
    compile_cache.enable_for(tiny_config(compilation_cache_dir=str(a_file)))
  with pytest.raises(fields.ConfigError, match='cannot create the folder'):
    compile_cache.enable(str(a_file / 'below'))
