"""token_learner.pretrained: ViT .npz and project checkpoints into ViT / ViT+TL / ViViT, checked
against independent numpy forward passes of the public vit_jax and big_vision models."""
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


def test_posemb_resize_exact_when_size_unchanged_and_corner_aligned_otherwise():
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + 16, 8)).astype(np.float32)
  same = pretrained.resize_posemb(posemb, (1, 17, 8), source_cls=True, target_cls=True,
                                  target_grid=(1, 4, 4))
  np.testing.assert_array_equal(same, posemb)
  bigger = pretrained.resize_posemb(posemb, (1, 36, 8), source_cls=True, target_cls=False,
                                    target_grid=(1, 6, 6))
  want = resample_reference(posemb[0, 1:].reshape(4, 4, 8).astype(np.float64), (6, 6))
  np.testing.assert_allclose(bigger[0], want.reshape(36, 8), rtol=1e-6, atol=1e-6)
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
  checkpoints.save(manager, 3, {'params': src, 'step': np.int32(3)},
                   config={'model': {'name': 'vivit'}})  # Verified on reading: needs a config.
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


# ----------------------------------------------------------------------------- public layouts
# Independent forward passes of the public models, written from their published definitions
# (float64 numpy): vit_jax `models_vit.VisionTransformer` (CLS prepended, *then* the position
# embedding added: entry 0 is the CLS token's) and big_vision `models/vit._Model` (position
# embedding added to the patches, *then* the CLS token prepended for pool_type='tok'). Both use
# pre-LN blocks, LayerNorm eps 1e-6, tanh-approximated GELU (flax's nn.gelu default), a final
# `encoder_norm` and a `head` Dense. The checkpoints hold random weights under the real key names.
D, HEADS, MLP, PATCH, DEPTH, K = 64, 4, 128, 4, 2, 5  # Mu/4, two layers, five classes.


def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _block(x, p, attn, ln1, mlp):
  """x + MHSA(LN(x)); x + MLP(LN(x)) for one example `[N, D]`; names differ per codebase."""
  y = _ln(x, p['LayerNorm_0'])
  a = p[attn]
  q, k, v = (np.einsum('nd,dhc->nhc', y, a[n]['kernel']) + a[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = np.einsum('qhc,khc->hqk', q / np.sqrt(q.shape[-1]), k)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  y = np.einsum('hqk,khc->qhc', w, v)
  x = x + np.einsum('qhc,hcd->qd', y, a['out']['kernel']) + a['out']['bias']
  y = _ln(x, p[ln1])
  m = p[mlp]
  y = _gelu(y @ m['Dense_0']['kernel'] + m['Dense_0']['bias'])
  return x + y @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


def _patches(images, p):
  """Non-overlapping p x p patch embedding `[B, H, W, 3]` -> `[B, h*w, D]` (a VALID conv)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)
  return x @ p['kernel'].reshape(-1, D) + p['bias']


def _tree(flat):
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float64)
  return out


def vit_jax_forward(flat, images, classifier, blocks=None):
  """vit_jax VisionTransformer; returns logits, or the output of block `blocks - 1`."""
  p = _tree(flat)
  x = _patches(images, p['embedding'])
  if classifier == 'token':
    x = np.concatenate([np.broadcast_to(p['cls'], (len(x), 1, D)), x], axis=1)
  x = x + p['Transformer']['posembed_input']['pos_embedding']
  depth = len([k for k in p['Transformer'] if k.startswith('encoderblock_')])
  for i in range(depth if blocks is None else blocks):
    x = np.stack([_block(e, p['Transformer'][f'encoderblock_{i}'], 'MultiHeadDotProductAttention_1',
                         'LayerNorm_2', 'MlpBlock_3') for e in x])
  if blocks is not None:
    return x
  x = _ln(x, p['Transformer']['encoder_norm'])
  x = x[:, 0] if classifier == 'token' else x.mean(1)
  if 'pre_logits' in p:
    x = np.tanh(x @ p['pre_logits']['kernel'] + p['pre_logits']['bias'])
  return x @ p['head']['kernel'] + p['head']['bias']


def big_vision_forward(flat, images, pool_type):
  """big_vision vit._Model (posemb 'learn', scanned or not)."""
  p = _tree({k[len('params/'):] if k.startswith('params/') else k: v for k, v in flat.items()})
  x = _patches(images, p['embedding']) + p['pos_embedding']
  if pool_type == 'tok':
    x = np.concatenate([np.broadcast_to(p['cls'], (len(x), 1, D)), x], axis=1)
  t = p['Transformer']
  if 'encoderblock' in t:  # scan=True: one block with a leading layer axis.
    layers = [jax.tree.map(lambda a, i=i: a[i], t['encoderblock']) for i in range(DEPTH)]
  else:
    layers = [t[f'encoderblock_{i}'] for i in range(DEPTH)]
  for layer in layers:
    x = np.stack([_block(e, layer, 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
                  for e in x])
  x = _ln(x, t['encoder_norm'])
  x = x[:, 0] if pool_type == 'tok' else x.mean(1)
  return x @ p['head']['kernel'] + p['head']['bias']


def _block_weights(rng, attn, ln1, mlp):
  n = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
  ln = lambda: {'scale': 1 + n(D, s=0.2), 'bias': n(D, s=0.2)}
  qkv = lambda: {'kernel': n(D, HEADS, D // HEADS, s=D ** -0.5), 'bias': n(HEADS, D // HEADS, s=0.2)}
  return {
      'LayerNorm_0': ln(), ln1: ln(),
      attn: {'query': qkv(), 'key': qkv(), 'value': qkv(),
             'out': {'kernel': n(HEADS, D // HEADS, D, s=D ** -0.5), 'bias': n(D, s=0.2)}},
      mlp: {'Dense_0': {'kernel': n(D, MLP, s=D ** -0.5), 'bias': n(MLP, s=0.2)},
            'Dense_1': {'kernel': n(MLP, D, s=MLP ** -0.5), 'bias': n(D, s=0.2)}}}


def vit_jax_checkpoint(grid, classifier, representation_size=None, seed=0):
  """Random weights under vit_jax's key names (models_vit.py), a ViT-Mu/4 of DEPTH layers."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
  tree = {'embedding': {'kernel': n(PATCH, PATCH, 3, D, s=0.2), 'bias': n(D, s=0.2)},
          'Transformer': {
              'posembed_input': {'pos_embedding': n(1, int(classifier == 'token') + grid * grid,
                                                    D, s=0.5)},
              'encoder_norm': {'scale': 1 + n(D, s=0.2), 'bias': n(D, s=0.2)},
              **{f'encoderblock_{i}': _block_weights(rng, 'MultiHeadDotProductAttention_1',
                                                     'LayerNorm_2', 'MlpBlock_3')
                 for i in range(DEPTH)}}}
  width = D
  if classifier == 'token':
    tree['cls'] = n(1, 1, D, s=0.5)
  if representation_size:
    tree['pre_logits'] = {'kernel': n(D, representation_size, s=D ** -0.5),
                          'bias': n(representation_size, s=0.2)}
    width = representation_size
  tree['head'] = {'kernel': n(width, K, s=width ** -0.5), 'bias': n(K, s=0.2)}
  return flatten(tree)


def big_vision_checkpoint(grid, pool_type, scan, seed=0):
  """Random weights under big_vision's key names (models/vit.py), as its .npz files hold them."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
  blocks = [_block_weights(rng, 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
            for _ in range(DEPTH)]
  transformer = {'encoder_norm': {'scale': 1 + n(D, s=0.2), 'bias': n(D, s=0.2)}}
  if scan:
    transformer['encoderblock'] = jax.tree.map(lambda *a: np.stack(a), *blocks)
  else:
    transformer.update({f'encoderblock_{i}': b for i, b in enumerate(blocks)})
  tree = {'embedding': {'kernel': n(PATCH, PATCH, 3, D, s=0.2), 'bias': n(D, s=0.2)},
          'pos_embedding': n(1, grid * grid, D, s=0.5), 'Transformer': transformer,
          'head': {'kernel': n(D, K, s=D ** -0.5), 'bias': n(K, s=0.2)}}
  if pool_type == 'tok':
    tree['cls'] = n(1, 1, D, s=0.5)
  return {f'params/{k}': v for k, v in flatten(tree).items()}


def resample_reference(grid, shape):
  """Corner-aligned bilinear resampling, one output sample at a time (scipy.ndimage.zoom,
  order=1, grid_mode=False): output (i, j) reads input (i (h-1)/(H-1), j (w-1)/(W-1))."""
  h, w, d = grid.shape
  out = np.zeros((*shape, d))
  for i in range(shape[0]):
    for j in range(shape[1]):
      y = i * (h - 1) / (shape[0] - 1) if shape[0] > 1 else 0.0
      x = j * (w - 1) / (shape[1] - 1) if shape[1] > 1 else 0.0
      y0, x0 = min(int(y), h - 2), min(int(x), w - 2)
      fy, fx = y - y0, x - x0
      out[i, j] = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x0 + 1] +
                   fy * (1 - fx) * grid[y0 + 1, x0] + fy * fx * grid[y0 + 1, x0 + 1])
  return out


def _resampled_vit_jax(flat, new_grid, classifier):
  """The vit_jax checkpoint as the public code fine-tunes it at `new_grid` (load_pretrained)."""
  flat = dict(flat)
  posemb = flat[POSEMB].astype(np.float64)
  tok, grid = (posemb[:, :1], posemb[0, 1:]) if classifier == 'token' else (posemb[:, :0], posemb[0])
  side = int(np.sqrt(len(grid)))
  grid = resample_reference(grid.reshape(side, side, D), (new_grid, new_grid))
  flat[POSEMB] = np.concatenate([tok, grid.reshape(1, -1, D)], axis=1)
  return flat


def _target(classifier, image_size, representation_size=None, **tl):
  cfg = ModelConfig.from_dict(
      dict(name='vit', variant='Mu/4', num_classes=K, num_layers=DEPTH, classifier=classifier,
           representation_size=representation_size, tokenlearner={'num_tokens': 0, **tl}),
      image_size=image_size)
  model = build_model(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, *cfg.input_shape)), train=False)['params']
  return cfg, model, jax.device_get(params)


def _load_and_run(tmp_path, flat, classifier, image_size, representation_size=None, **tl):
  path = str(tmp_path / 'ckpt.npz')
  np.savez(path, **flat)
  cfg, model, init = _target(classifier, image_size, representation_size, **tl)
  params = pretrained.init_from(init, InitConfig(path, 'vit_npz', load_head=True), cfg)
  images = np.random.default_rng(7).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
  logits, _ = model.apply({'params': params}, images, train=False)
  return np.asarray(logits, np.float64), images, model, params


# (source layout, target model) -> max |Δ logits|, printed for the report (pytest -s).
DELTAS = {}


def _record(name, got, want, tol=1e-5):
  delta = float(np.abs(got - want).max())
  DELTAS[name] = delta
  print(f'\nmax |delta logits| {name}: {delta:.2e} (logits up to {np.abs(want).max():.1f})')
  assert delta <= tol, (name, delta)


@pytest.mark.parametrize('classifier, representation_size, image_size', [
    ('token', None, 16), ('gap', None, 16), ('token', 24, 16),
    ('token', None, 24), ('gap', None, 32)])  # new resolutions: 4x4 -> 6x6, 4x4 -> 8x8
def test_vit_jax_checkpoint_logits_match_public_forward(tmp_path, classifier,
                                                        representation_size, image_size):
  flat = vit_jax_checkpoint(4, classifier, representation_size)
  got, images, _, _ = _load_and_run(tmp_path, flat, classifier, image_size, representation_size)
  reference = flat if image_size == 16 else _resampled_vit_jax(flat, image_size // PATCH,
                                                                classifier)
  want = vit_jax_forward(reference, images.astype(np.float64), classifier)
  _record(f'vit_jax {classifier} rep={representation_size} 16px -> ViT {classifier} '
          f'{image_size}px', got, want)


@pytest.mark.parametrize('pool_type, scan, grid', [
    ('tok', False, 4), ('tok', True, 8), ('gap', True, 4), ('gap', False, 8)])
def test_big_vision_checkpoint_logits_match_public_forward(tmp_path, pool_type, scan, grid):
  """big_vision 'tok' (posemb before CLS): 8x8 = 64 entries used to be read as 1 CLS + 63."""
  flat = big_vision_checkpoint(grid, pool_type, scan)
  classifier = 'token' if pool_type == 'tok' else 'gap'
  got, images, _, params = _load_and_run(tmp_path, flat, classifier, grid * PATCH)
  want = big_vision_forward(flat, images.astype(np.float64), pool_type)
  _record(f'big_vision {pool_type} scan={scan} {grid}x{grid} -> ViT {classifier}', got, want)
  if pool_type == 'tok':  # vit_jax layout: the CLS token's entry is zero, the token itself kept.
    assert not params['Transformer']['posembed_input']['pos_embedding'][0, 0].any()
    np.testing.assert_array_equal(params['cls'], flat['params/cls'])


def test_big_vision_new_resolution_matches_public_resampling(tmp_path):
  flat = big_vision_checkpoint(4, 'tok', scan=True)
  got, images, _, _ = _load_and_run(tmp_path, flat, 'token', 6 * PATCH)
  reference = dict(flat)
  reference['params/pos_embedding'] = resample_reference(
      flat['params/pos_embedding'][0].reshape(4, 4, D).astype(np.float64), (6, 6)).reshape(1, 36, D)
  want = big_vision_forward(reference, images.astype(np.float64), 'tok')
  _record('big_vision tok scan=True 16px -> ViT token 24px', got, want)


@pytest.mark.parametrize('fuser', [False, True])
def test_cls_is_carried_into_a_tokenlearner_model(tmp_path, fuser):
  """A vit_jax 'token' checkpoint into ViT + TokenLearner (loc=1, classifier='token'): block 0
  sees the CLS token and computes exactly the source's activations."""
  flat = vit_jax_checkpoint(4, 'token')
  _, images, model, params = _load_and_run(tmp_path, flat, 'token', 16, num_tokens=3, loc=1,
                                           fuser=fuser)
  (logits, _), state = model.apply({'params': params}, images, train=False,
                                   capture_intermediates=True)
  got = state['intermediates']['Transformer']['encoderblock_0']['__call__'][0]
  want = vit_jax_forward(flat, images.astype(np.float64), 'token', blocks=1)
  assert got.shape == (2, 17, D)
  _record(f'vit_jax token -> ViT+TL(loc=1, fuser={fuser}) token: block 0 output',
          np.asarray(got, np.float64), want)
  assert logits.shape == (2, K) and np.isfinite(logits).all()
  # Later blocks see the CLS token in front of the S learned tokens.
  later = state['intermediates']['Transformer']['encoderblock_1']['__call__'][0]
  assert later.shape == (2, 1 + 3, D)


def test_map_head_is_an_error_naming_it(tmp_path):
  flat = big_vision_checkpoint(4, 'gap', scan=True)
  flat['params/MAPHead/probe'] = np.zeros((1, 1, D), np.float32)
  path = str(tmp_path / 'map.npz')
  np.savez(path, **flat)
  cfg, _, init = _target('gap', 16)
  with pytest.raises(ValueError, match='MAPHead/probe.*MAP head'):
    pretrained.init_from(init, InitConfig(path, 'vit_npz'), cfg)


def test_resampling_matches_scipy_zoom_and_a_per_sample_reference():
  scipy_ndimage = pytest.importorskip('scipy.ndimage')
  grid = np.random.default_rng(3).normal(size=(7, 5, 3))
  for shape in [(12, 12), (4, 9), (7, 5), (1, 3)]:
    got = pretrained.resample_grid(grid, shape)
    np.testing.assert_allclose(got, resample_reference(grid, shape), rtol=0, atol=1e-12)
    zoom = (shape[0] / 7, shape[1] / 5, 1)
    np.testing.assert_allclose(got, scipy_ndimage.zoom(grid, zoom, order=1), rtol=0, atol=1e-12)
