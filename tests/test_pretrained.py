"""token_learner.pretrained: ViT .npz and project checkpoints into ViT / ViT+TL / ViViT."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import ModelConfig, build_model
from token_learner import pretrained
from token_learner.pretrained import InitConfig
from token_learner.tree import flatten

POSEMB = 'Transformer/posembed_input/pos_embedding'


@functools.lru_cache(maxsize=None)  # Inits are the slow part; nothing below mutates them.
def _model(name='vit', classifier='gap', num_tokens=0, image_size=16, num_frames=4,
           num_classes=5, fuser=False):
  cfg = ModelConfig.from_dict(
      dict(name=name, variant='Mu/4', num_classes=num_classes, num_layers=2,
           classifier=classifier, tubelet_size=2,
           tokenlearner=dict(num_tokens=num_tokens, loc=1, fuser=fuser)),
      image_size=image_size, num_frames=num_frames)
  model = build_model(cfg)
  params = model.init(jax.random.key(len(name) + num_tokens), jnp.zeros((1, *cfg.input_shape)),
                      train=False)['params']
  return cfg, model, jax.device_get(params)


def _write_npz(tmp_path, params, name='vit.npz'):
  path = str(tmp_path / name)
  pretrained.save_npz(path, params)
  return path


def test_vit_npz_into_vit_recreates_head(tmp_path, randomise):
  _, _, src = _model(classifier='token', num_classes=7)
  src = randomise(src, replace=True)
  cfg, _, init = _model(classifier='token', num_classes=5)
  out = pretrained.init_from(init, InitConfig(_write_npz(tmp_path, src), 'vit_npz'), cfg)
  flat_out, flat_src, flat_init = map(flatten, (out, src, init))
  assert set(flat_out) == set(flat_init)
  for key, value in flat_out.items():
    want = flat_init[key] if key.startswith('head/') else flat_src[key]
    np.testing.assert_array_equal(value, want, err_msg=key)


def test_vit_npz_into_tokenlearner_keeps_fresh_tl_and_drops_cls(tmp_path, randomise):
  _, _, src = _model(classifier='token')
  src = randomise(src, replace=True)
  cfg, _, init = _model(classifier='gap', num_tokens=4, fuser=True)
  out = flatten(pretrained.init_from(
      init, InitConfig(_write_npz(tmp_path, src), 'vit_npz'), cfg))
  flat_src, flat_init = flatten(src), flatten(init)
  tl_keys = [k for k in out if '/tokenlearner_' in k or '/fuser_' in k]
  assert tl_keys
  for key in tl_keys:
    np.testing.assert_array_equal(out[key], flat_init[key], err_msg=key)
  np.testing.assert_array_equal(out['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'],
                                flat_src['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'])
  assert 'cls' not in out
  np.testing.assert_array_equal(out[POSEMB], flat_src[POSEMB][:, 1:])


@pytest.mark.parametrize('inflation', ['average', 'central_frame'])
def test_inflated_vivit_embeds_static_clip_like_the_image_model(tmp_path, inflation, randomise):
  _, vit, src = _model(classifier='token')
  src = randomise(src, replace=True)
  cfg, vivit, init = _model(name='vivit', classifier='token', num_frames=4)
  out = pretrained.init_from(
      init, InitConfig(_write_npz(tmp_path, src), 'vit_npz', inflation=inflation), cfg)
  image = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  clip = jnp.repeat(image[:, None], 4, axis=1)  # A static video: the image in every frame.
  embed = lambda model, p, x: model.apply({'params': p}, x, train=False,
                                          capture_intermediates=True)[1]['intermediates'][
                                              'embedding']['__call__'][0]
  want = embed(vit, src, image)  # [2, 4, 4, D]
  got = embed(vivit, out, clip)  # [2, T'=2, 4, 4, D]
  for t in range(got.shape[1]):
    np.testing.assert_allclose(got[:, t], want, rtol=1e-5, atol=1e-5)
  # Position embedding: the image grid repeated for each temporal slice; CLS entry kept.
  posemb, src_posemb = np.asarray(out['Transformer']['posembed_input']['pos_embedding']), \
      src['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(posemb[:, 0], src_posemb[:, 0])
  np.testing.assert_array_equal(posemb[:, 1:17], src_posemb[:, 1:])
  np.testing.assert_array_equal(posemb[:, 17:], src_posemb[:, 1:])


def test_inflate_kernel_values():
  k = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
  central = pretrained.inflate_kernel(k, 3, 'central_frame')
  np.testing.assert_array_equal(central[1], k)
  assert not central[0].any() and not central[2].any()
  np.testing.assert_allclose(pretrained.inflate_kernel(k, 4, 'average').sum(0), k)


def test_posemb_resize_exact_when_size_unchanged_and_bilinear_otherwise():
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + 16, 8)).astype(np.float32)
  same = pretrained.resize_posemb(posemb, (1, 17, 8), source_cls=True, target_cls=True,
                                  target_grid=(1, 4, 4))
  np.testing.assert_array_equal(same, posemb)
  bigger = pretrained.resize_posemb(posemb, (1, 36, 8), source_cls=True, target_cls=False,
                                    target_grid=(1, 6, 6))
  want = jax.image.resize(posemb[0, 1:].reshape(4, 4, 8), (6, 6, 8), method='bilinear')
  np.testing.assert_allclose(bigger[0], np.asarray(want).reshape(36, 8), rtol=1e-6)
  added = pretrained.resize_posemb(posemb[:, 1:], (1, 17, 8), source_cls=False, target_cls=True,
                                   target_grid=(1, 4, 4))
  assert not added[0, 0].any()


def test_new_resolution_loads(tmp_path, randomise):
  _, _, src = _model(image_size=16)
  cfg, _, init = _model(image_size=24)  # 4x4 -> 6x6 grid
  path = _write_npz(tmp_path, randomise(src, replace=True))
  out = pretrained.init_from(init, InitConfig(path, 'vit_npz'), cfg)
  assert out['Transformer']['posembed_input']['pos_embedding'].shape == (1, 36, 64)


def test_mismatch_names_parameter_and_both_shapes(tmp_path, randomise):
  _, _, src = _model()
  flat = flatten(randomise(src, replace=True))
  flat['Transformer/encoderblock_0/LayerNorm_0/scale'] = np.ones(32, np.float32)
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **flat)
  cfg, _, init = _model()
  with pytest.raises(ValueError, match=r'encoderblock_0/LayerNorm_0/scale.*\(32,\).*\(64,\)'):
    pretrained.init_from(init, InitConfig(path, 'vit_npz'), cfg)
  del flat['Transformer/encoderblock_0/LayerNorm_0/scale']
  np.savez(path, **flat)
  with pytest.raises(ValueError, match='encoderblock_0/LayerNorm_0/scale: missing'):
    pretrained.init_from(init, InitConfig(path, 'vit_npz'), cfg)


def test_big_vision_layout_is_mapped(tmp_path, randomise):
  _, _, src = _model()
  flat = flatten(randomise(src, replace=True))
  bv = {}
  for key, value in flat.items():
    key = key.replace(POSEMB, 'pos_embedding').replace('MlpBlock_3', 'MlpBlock_0')
    bv['params/' + key.replace('LayerNorm_2', 'LayerNorm_1')] = value
  # Scanned layers: one 'encoderblock' with a leading layer axis.
  for key in [k for k in bv if '/encoderblock_0/' in k]:
    bv[key.replace('encoderblock_0', 'encoderblock')] = np.stack(
        [bv.pop(key), bv.pop(key.replace('encoderblock_0', 'encoderblock_1'))])
  path = str(tmp_path / 'bv.npz')
  np.savez(path, **bv)
  cfg, _, init = _model()
  out = flatten(pretrained.init_from(init, InitConfig(path, 'vit_npz'), cfg))
  for key in flat:
    if not key.startswith('head/'):
      np.testing.assert_array_equal(out[key], flat[key], err_msg=key)


def test_project_checkpoint_into_new_task(tmp_path, randomise):
  from token_learner.train import checkpoints  # pylint: disable=g-import-not-at-top
  _, _, src = _model(name='vivit', num_tokens=4, num_classes=40)
  src = randomise(src, replace=True)
  manager = checkpoints.manager(str(tmp_path / 'workdir'), keep=1)
  checkpoints.save(manager, 3, {'params': src, 'step': np.int32(3)})
  manager.wait_until_finished()
  manager.close()
  cfg, _, init = _model(name='vivit', num_tokens=4, num_classes=157)
  out = flatten(pretrained.init_from(
      init, InitConfig(str(tmp_path / 'workdir'), 'checkpoint'), cfg))
  flat_src, flat_init = flatten(src), flatten(init)
  for key in out:
    want = flat_init[key] if key.startswith('head/') else flat_src[key]
    np.testing.assert_array_equal(out[key], want, err_msg=key)


def test_empty_path_is_a_no_op():
  cfg, _, init = _model()
  assert pretrained.init_from(init, InitConfig(), cfg) is init
