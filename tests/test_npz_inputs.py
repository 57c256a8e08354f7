""".npz files for config.init_from as they come: only the arrays the model needs are read, and
members that are too large, lie about their size, are not floats or not finite are refused,
naming the key, before anything is compiled."""
import functools
import io
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import ModelConfig, build_model
from token_learner import pretrained
from token_learner.pretrained import InitConfig
from token_learner.tree import flatten, unflatten

NORM = 'Transformer/encoder_norm/scale'  # [64] in Mu/4


@functools.lru_cache(maxsize=None)
def _model():
  """A 2-layer Mu/4 ViT on 16x16 images: its config and parameter shapes (no init run)."""
  cfg = ModelConfig.from_dict(dict(variant='Mu/4', num_classes=5, num_layers=2,
                                   tokenlearner=dict(num_tokens=0)),
                              image_size=(16, 16))
  shapes = jax.eval_shape(
      lambda: build_model(cfg).init(jax.random.key(0), jnp.zeros((1, *cfg.input_shape)),
                                    train=False)['params'])
  return cfg, shapes


def _source(seed=0):
  """Random float32 parameters in the model's layout, flat."""
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in flatten(_model()[1]).items()}


def _load(path, load_head=False):
  """`init_from` of the `.npz` at `path` into the model (zero-initialised), flat."""
  cfg, shapes = _model()
  init = unflatten({k: np.zeros(v.shape, v.dtype) for k, v in flatten(shapes).items()})
  return flatten(pretrained.init_from(init, InitConfig(path, 'vit_npz', load_head=load_head),
                                      cfg))


def _npz(path, flat):
  np.savez(path, **flat)
  return str(path)


def _npy(shape, dtype='<f4', data=b''):
  out = io.BytesIO()
  np.lib.format.write_array_header_1_0(out, {'descr': dtype, 'fortran_order': False,
                                             'shape': shape})
  return out.getvalue() + data


def _declare_size(path, member, size):
  """Rewrites the uncompressed size the zip declares for `member` (local and central headers),
  as a zip bomb would."""
  blob = bytearray(open(path, 'rb').read())
  name = member.encode()
  for signature, size_at, name_at in ((b'PK\x03\x04', 22, 30), (b'PK\x01\x02', 24, 46)):
    start = 0
    while (start := blob.find(signature, start)) >= 0:
      if blob[start + name_at:start + name_at + len(name)] == name:
        blob[start + size_at:start + size_at + 4] = struct.pack('<I', size)
      start += 4
  open(path, 'wb').write(bytes(blob))


def test_reads_only_the_members_the_model_needs(tmp_path, monkeypatch):
  """Unused members (the old head with load_head=False, optimizer state, a huge array) are never
  read, whatever they hold; the loaded values are the file's."""
  flat = _source()
  flat['head/kernel'] = np.full((64, 7), np.nan, np.float32)  # Another task's head: unused.
  flat['opt_state/count'] = np.array(3, np.int64)
  flat['opt_state/mu'] = np.zeros((2000, 64), np.float32)
  path = _npz(tmp_path / 'vit.npz', flat)
  read = []
  original = np.lib.format.read_array
  monkeypatch.setattr(np.lib.format, 'read_array',
                      lambda f, *a, **k: read.append(f.name) or original(f, *a, **k))
  out = _load(path)
  needed = {k for k in flatten(_model()[1]) if not k.startswith('head/')}
  assert sorted(read) == sorted(f'{k}.npy' for k in needed)
  for key in needed:
    np.testing.assert_array_equal(out[key], flat[key], err_msg=key)
  np.testing.assert_array_equal(out['head/kernel'], 0.0)


@pytest.mark.parametrize('value,message', [
    (np.zeros(64, np.int32), 'dtype int32 .* not a floating-point'),
    (np.zeros(64, bool), 'dtype bool .* not a floating-point'),
    (np.zeros(64, np.complex64), 'dtype complex64 .* not a floating-point'),
    (np.array([None] * 64, object), 'dtype object .* not a floating-point'),
    (np.r_[np.ones(62), np.nan, np.inf].astype(np.float32), r'2 non-finite value\(s\)'),
])
def test_non_float_and_non_finite_arrays_are_refused_naming_the_key(tmp_path, value, message):
  flat = {**_source(), NORM: value}
  path = str(tmp_path / 'bad.npz')
  with zipfile.ZipFile(path, 'w') as zf:  # np.savez would refuse nothing, but pickle objects.
    for key, v in flat.items():
      out = io.BytesIO()
      np.lib.format.write_array(out, v, allow_pickle=True)
      zf.writestr(f'{key}.npy', out.getvalue())
  with pytest.raises(ValueError, match=f'{NORM}: {message}'):
    _load(path)


def test_zip_bomb_and_oversized_members_are_refused_before_reading(tmp_path, monkeypatch):
  monkeypatch.setattr(np.lib.format, 'read_array', lambda *a, **k: pytest.fail('read data'))
  # A member whose zip entry declares 3 GB, while its .npy header describes 64 float32.
  path = _npz(tmp_path / 'bomb.npz', {NORM: np.ones(64, np.float32)})
  _declare_size(path, f'{NORM}.npy', 3 << 30)
  with pytest.raises(ValueError, match=f'{NORM}: its zip member declares 3221225472 bytes'):
    _load(path)
  # A header of 2**27 float32 (512 MB), the zip sizes made to agree, only 8 bytes of data.
  path = str(tmp_path / 'huge.npz')
  header = _npy((1 << 27,), data=b'\0' * 8)
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr(f'{NORM}.npy', header)
  _declare_size(path, f'{NORM}.npy', len(header) - 8 + (4 << 27))
  with pytest.raises(ValueError, match=rf'{NORM}: checkpoint shape \(134217728,\) .* larger '
                     r'than the model parameter it maps to .*at most 64 values'):
    _load(path)


def test_a_bad_npz_is_a_config_error_before_compiling(tmp_path, tiny_config, monkeypatch):
  """Through the trainer: one config error naming the key; the state is never initialised
  (nothing compiled)."""
  from token_learner import fields  # pylint: disable=g-import-not-at-top
  from token_learner.train import loop, sharding  # pylint: disable=g-import-not-at-top
  path = _npz(tmp_path / 'int.npz', {'embedding/kernel': np.zeros((4, 4, 3, 64), np.int8)})
  monkeypatch.setattr(sharding, 'init_train_state', lambda *a: pytest.fail('compiled'))
  config = tiny_config(**{'init_from.path': path})
  with pytest.raises(fields.ConfigError, match='embedding/kernel: dtype int8'):
    loop.train_and_evaluate(config, str(tmp_path / 'work'))
