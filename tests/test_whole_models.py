"""Whole ViT / ViViT + TokenLearner models against a forward pass written here in numpy float64.

The reference reads only the model's parameter tree and follows the paper: patch (tubelet)
embedding, position embedding (§3.1, "identical to ViT"), the standard blocks before the
TokenLearner, then Fig. 3(a) (one TokenLearner, §2.1, and blocks on its S tokens) or Fig. 3(b)
(every later layer TokenLearner -> block -> TokenFuser, §2.2, or the §3.5.3 alternatives),
final LayerNorm, 'gap' / 'token' pooling, pre-logits, head. It never calls the library's plan,
blocks or modules. Parameters are randomised (zero-initialised heads, fusers and CLS tokens would
hide mistakes); tiny widths (Mu/4: 64 channels, 4 heads) on 16 x 16 images.
"""
import jax
import numpy as np
import pytest

from token_learner import ModelConfig, build_model
from test_modules import (np_dense, np_gelu, np_layernorm, np_softmax, np_tokenfuser,
                          np_tokenlearner_v1, np_tokenlearner_v11)


def np_mha(xq, xkv, p):
  """flax MultiHeadDotProductAttention: q/k/v kernels [C, H, D], out kernel [H, D, C]."""
  proj = lambda x, n: np.einsum('bnc,chd->bnhd', x, p[n]['kernel']) + p[n]['bias']
  q, k, v = proj(xq, 'query'), proj(xkv, 'key'), proj(xkv, 'value')
  w = np_softmax(np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1]), axis=-1)
  y = np.einsum('bhqk,bkhd->bqhd', w, v)
  return np.einsum('bqhd,hdc->bqc', y, p['out']['kernel']) + p['out']['bias']


def np_mlp(x, p):
  return np_dense(np_gelu(np_dense(x, p['Dense_0'])), p['Dense_1'])


def np_block(x, p):
  """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""
  y = np_layernorm(x, p['LayerNorm_0'])
  x = x + np_mha(y, y, p['MultiHeadDotProductAttention_1'])
  return x + np_mlp(np_layernorm(x, p['LayerNorm_2']), p['MlpBlock_3'])


def np_reprojection(tokens, residual, p):
  """§3.5.3 reprojection: the grid positions attend to the tokens, then an MLP."""
  x = residual + np_mha(np_layernorm(residual, p['LayerNorm_0']),
                        np_layernorm(tokens, p['LayerNorm_1']), p['MultiHeadDotProductAttention_2'])
  return x + np_mlp(np_layernorm(x, p['LayerNorm_3']), p)


def np_unpool(tokens, residual, maps, ln):
  """§3.5.3 unpool: residual + sum_i A_i LN(y_i), per frame (maps [B, T, S, N])."""
  b, t = maps.shape[:2]
  normed = np_layernorm(tokens, ln).reshape(b, t, -1, tokens.shape[-1])
  return residual + np.einsum('btsn,btsc->btnc', maps, normed).reshape(residual.shape)


def np_learn(x, grid, p, tl):
  """TokenLearner on a [B, T*H*W, C] sequence, per frame -> ([B, T*S, C], maps [B, T, S, H*W])."""
  t, h, w = grid
  b, _, c = x.shape
  frames = x.reshape(b * t, h, w, c)
  if tl['version'] == 'v1':
    tokens, maps = np_tokenlearner_v1(frames, p)
  else:
    tokens, maps = np_tokenlearner_v11(frames, p)
  return tokens.reshape(b, -1, c), maps.reshape(b, t, -1, h * w)


def np_vit(images, params, cfg, tl):
  """The whole model in float64 from `params`. `images` [B, H, W, 3] or [B, T, H, W, 3]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  patch, video = cfg.patch_size, images.ndim == 5
  if not video:
    images = images[:, None]
  tube = cfg.tubelet_size if video else 1
  b, nt, nh, nw, _ = images.shape
  grid = (nt // tube, nh // patch, nw // patch)
  cut = images.reshape(b, grid[0], tube, grid[1], patch, grid[2], patch, 3)
  cut = cut.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, np.prod(grid), -1)
  kernel = p['embedding']['kernel'].reshape(-1, cfg.hidden_size)  # [(t) p p 3, C]
  x = cut @ kernel + p['embedding']['bias']
  cls = cfg.classifier == 'token'
  if cls:
    x = np.concatenate([np.broadcast_to(p['cls'], (b, 1, x.shape[-1])), x], axis=1)
  enc = p['Transformer']
  x = x + enc['posembed_input']['pos_embedding']
  split = lambda x: (x[:, :int(cls)], x[:, int(cls):])
  loc = tl['loc']
  for lyr in range(cfg.num_layers):
    if lyr == loc and not tl['fuser']:  # Fig. 3(a): the patches become S (x T) tokens
      prefix, patches = split(x)
      x = np.concatenate([prefix, np_learn(patches, grid, enc[f'tokenlearner_{lyr}'], tl)[0]], 1)
    if lyr >= loc and tl['fuser']:  # Fig. 3(b): TokenLearner -> block -> fuser, grid kept
      prefix, patches = split(x)
      tokens, maps = np_learn(patches, grid, enc[f'tokenlearner_{lyr}'], tl)
      prefix, tokens = split(np_block(np.concatenate([prefix, tokens], 1),
                                      enc[f'encoderblock_{lyr}']))
      fp = enc[f'fuser_{lyr}']
      if tl['fuser_type'] == 'tokenfuser':
        fused = np_tokenfuser(tokens, patches.reshape(b, grid[0], grid[1], grid[2], -1), fp,
                              tl.get('fuser_mixing', 'global')).reshape(patches.shape)
      elif tl['fuser_type'] == 'reprojection':
        fused = np_reprojection(tokens, patches, fp)
      else:
        fused = np_unpool(tokens, patches, maps, fp['LayerNorm_0'])
      x = np.concatenate([prefix, fused], 1)
    else:
      x = np_block(x, enc[f'encoderblock_{lyr}'])
  if loc == cfg.num_layers and not tl['fuser']:
    prefix, patches = split(x)
    x = np.concatenate([prefix, np_learn(patches, grid, enc[f'tokenlearner_{loc}'], tl)[0]], 1)
  x = np_layernorm(x, enc['encoder_norm'])
  x = x[:, 0] if cls else x.mean(1)
  if cfg.representation_size:
    x = np.tanh(np_dense(x, p['pre_logits']))
  return np_dense(x, p['head'])


def random_params(model, x, randomise):
  """Randomised parameters without compiling the initialiser: the tree's shapes (eval_shape),
  LayerNorm / GroupNorm scales 1 and everything else 0, plus 0.1 x N(0, 1) (`randomise`)."""
  shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))['params']
  base = jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, float(path[-1].key == 'scale'), np.float32), shapes)
  return randomise(base, scale=0.1)


_CASES = {
    # Fig. 3(a), v1 (4 convs, sigmoid, sum pooling), GAP, pre-logits.
    'fig3a_v1': dict(tl=dict(num_tokens=3, loc=1, version='v1', fuser=False),
                     model=dict(representation_size=8)),
    # Fig. 3(a), v1.1, a CLS token carried past the TokenLearner (the block after it mixes the
    # learned tokens into the CLS token the classifier reads).
    'fig3a_v11_cls': dict(tl=dict(num_tokens=3, loc=1, version='v1.1', fuser=False),
                          model=dict(classifier='token')),
    # Fig. 3(a) after the last layer (loc = num_layers), GAP over the learned tokens.
    'fig3a_v11_last': dict(tl=dict(num_tokens=3, loc=2, version='v1.1', fuser=False), model={}),
    # Fig. 3(b) with the TokenFuser (Eq. 2) from layer 1 on, a CLS token riding along.
    'fig3b_tokenfuser': dict(tl=dict(num_tokens=3, loc=0, version='v1', fuser=True,
                                     fuser_type='tokenfuser'), model=dict(classifier='token')),
    # §3.5.3 alternatives.
    'fig3b_reprojection': dict(tl=dict(num_tokens=2, loc=1, version='v1.1', fuser=True,
                                       fuser_type='reprojection'), model={}),
    'fig3b_unpool': dict(tl=dict(num_tokens=2, loc=1, version='v1', fuser=True,
                                 fuser_type='unpool'), model={}),
    # ViViT (§5.1): 2x4x4 tubelets, a TokenLearner per temporal slice, per-frame fuser mixing.
    'vivit_fig3b': dict(tl=dict(num_tokens=2, loc=1, version='v1', fuser=True,
                                fuser_type='tokenfuser', fuser_mixing='per_frame'),
                        model=dict(name='vivit', tubelet_size=2)),
}


@pytest.mark.parametrize('case', sorted(_CASES))
def test_whole_model_matches_numpy(case, randomise):
  spec = _CASES[case]
  section = dict(dict(variant='Mu/4', num_layers=2, num_classes=5), **spec['model'],
                 tokenlearner=spec['tl'])
  cfg = ModelConfig.from_dict(section, image_size=(16, 16), num_frames=4)
  model = build_model(cfg)
  x = np.random.default_rng(0).standard_normal((2, *cfg.input_shape)).astype(np.float32)
  params = random_params(model, x, randomise)
  logits, _ = jax.jit(lambda p: model.apply({'params': p}, x, train=False))(params)
  want = np_vit(x.astype(np.float64), params, cfg, spec['tl'])
  assert np.abs(want).max() > 0.1  # the head is not silent
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
