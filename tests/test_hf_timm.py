"""config.init_from.kind 'hf_vit' / 'timm_vit': Hugging Face and timm ViT `.safetensors` into this
project's models, checked against independent float64 numpy forward passes of each architecture
written here from its published definition, on random weights saved under each library's real
key names and shapes (PyTorch layouts: Linear [out, in], Conv2d [out, in, kh, kw]).

- transformers `ViTForImageClassification`: embeddings = concat(cls, patches) + position
  embeddings; layers: h + attn(layernorm_before(h)); h + output(gelu(intermediate(
  layernorm_after(h)))); final `layernorm`; `classifier` on token 0. LayerNorm eps 1e-12, exact
  (erf) GELU. `ViTModel`: no `vit.` prefix, `pooler` = tanh(dense(token 0)).
- timm `VisionTransformer` (global_pool='token', class_token, no_embed_class=False): cat(cls, x)
  + pos_embed; blocks x + attn(norm1(x)) with one fused qkv [3C, C] (rows q | k | v, heads
  major), x + mlp(norm2(x)); `norm`; `head` on token 0. LayerNorm eps 1e-6, exact GELU.

The linen models use flax's tanh GELU and eps 1e-6: against them the same forward with those two
choices is the reference (the mapping is exact); the NNX ViT with gelu_approximate=False and the
source's eps matches the source definition itself.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from token_learner import ModelConfig, build_model, pretrained
from token_learner import nnx as tnnx
from token_learner.pretrained import InitConfig
from token_learner.tree import flatten

D, HEADS, MLP, PATCH, DEPTH, K, IMAGE = 64, 4, 128, 4, 2, 5, 16
TOL = 1e-5
SPEC = {'hf_vit': dict(eps=1e-12), 'timm_vit': dict(eps=1e-6)}


def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x, exact):
  if exact:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _lin(x, sd, name):
  """PyTorch nn.Linear: x W^T + b."""
  y = x @ sd[f'{name}.weight'].T
  return y + sd[f'{name}.bias'] if f'{name}.bias' in sd else y


def _mhsa(x, q, k, v):
  """[N, C] q, k, v -> [N, C]: heads split as view(N, H, D) (both libraries)."""
  n = x.shape[0]
  q, k, v = (a.reshape(n, HEADS, D // HEADS).transpose(1, 0, 2) for a in (q, k, v))
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(D // HEADS)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  return (w @ v).transpose(1, 0, 2).reshape(n, D)


def _embed(images, sd, conv, cls, pos):
  """Conv2d(stride = kernel = P) on NCHW images, flatten(2).transpose(1, 2), CLS, position."""
  x = np.transpose(images, (0, 3, 1, 2))  # NCHW, as the PyTorch models take it.
  b, c, h, w = x.shape
  x = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
  x = np.einsum('bcipjq,ocpq->bijo', x, sd[f'{conv}.weight']) + sd[f'{conv}.bias']
  x = x.reshape(b, -1, x.shape[-1])
  x = np.concatenate([np.broadcast_to(sd[cls], (b, 1, D)), x], axis=1)
  return x + sd[pos]


def hf_forward(sd, images, eps=1e-12, exact=True):
  """transformers ViTForImageClassification / ViTModel -> (logits or None, pooler or None)."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  p = 'vit.' if 'vit.layernorm.weight' in sd else ''
  x = _embed(images, sd, f'{p}embeddings.patch_embeddings.projection', f'{p}embeddings.cls_token',
             f'{p}embeddings.position_embeddings')
  out = []
  for e in x:
    for i in range(DEPTH):
      s = f'{p}encoder.layer.{i}'
      y = _ln(e, sd[f'{s}.layernorm_before.weight'], sd[f'{s}.layernorm_before.bias'], eps)
      a = f'{s}.attention.attention'
      y = _mhsa(y, _lin(y, sd, f'{a}.query'), _lin(y, sd, f'{a}.key'), _lin(y, sd, f'{a}.value'))
      e = e + _lin(y, sd, f'{s}.attention.output.dense')
      y = _ln(e, sd[f'{s}.layernorm_after.weight'], sd[f'{s}.layernorm_after.bias'], eps)
      y = _gelu(_lin(y, sd, f'{s}.intermediate.dense'), exact)
      e = e + _lin(y, sd, f'{s}.output.dense')
    out.append(_ln(e, sd[f'{p}layernorm.weight'], sd[f'{p}layernorm.bias'], eps)[0])
  token = np.stack(out)
  logits = _lin(token, sd, 'classifier') if 'classifier.weight' in sd else None
  pooled = np.tanh(_lin(token, sd, 'pooler.dense')) if 'pooler.dense.weight' in sd else None
  return logits, pooled


def timm_forward(sd, images, eps=1e-6, exact=True):
  """timm VisionTransformer (global_pool='token') -> logits."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = _embed(images, sd, 'patch_embed.proj', 'cls_token', 'pos_embed')
  out = []
  for e in x:
    for i in range(DEPTH):
      s = f'blocks.{i}'
      y = _ln(e, sd[f'{s}.norm1.weight'], sd[f'{s}.norm1.bias'], eps)
      qkv = _lin(y, sd, f'{s}.attn.qkv').reshape(len(y), 3, D)  # reshape(B, N, 3, H, Dh)
      e = e + _lin(_mhsa(y, qkv[:, 0], qkv[:, 1], qkv[:, 2]), sd, f'{s}.attn.proj')
      y = _ln(e, sd[f'{s}.norm2.weight'], sd[f'{s}.norm2.bias'], eps)
      e = e + _lin(_gelu(_lin(y, sd, f'{s}.mlp.fc1'), exact), sd, f'{s}.mlp.fc2')
    out.append(_ln(e, sd['norm.weight'], sd['norm.bias'], eps)[0])
  return _lin(np.stack(out), sd, 'head')


def _rng_tensors(shapes, seed):
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in shapes.items():
    if k.endswith(('norm.weight', 'norm1.weight', 'norm2.weight', 'layernorm_before.weight',
                   'layernorm_after.weight', 'layernorm.weight')):
      out[k] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    else:
      fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if len(shape) >= 2 \
          and not k.endswith(('cls_token', 'position_embeddings', 'pos_embed')) else 25
      out[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
  return out


def hf_checkpoint(grid=IMAGE // PATCH, head=True, seed=0):
  """Random weights under ViTForImageClassification's names (`head`) or ViTModel's."""
  p = 'vit.' if head else ''
  shapes = {f'{p}embeddings.cls_token': (1, 1, D),
            f'{p}embeddings.position_embeddings': (1, 1 + grid * grid, D),
            f'{p}embeddings.patch_embeddings.projection.weight': (D, 3, PATCH, PATCH),
            f'{p}embeddings.patch_embeddings.projection.bias': (D,)}
  for i in range(DEPTH):
    s = f'{p}encoder.layer.{i}'
    for n in ('layernorm_before', 'layernorm_after'):
      shapes.update({f'{s}.{n}.weight': (D,), f'{s}.{n}.bias': (D,)})
    for n in ('query', 'key', 'value'):
      shapes.update({f'{s}.attention.attention.{n}.weight': (D, D),
                     f'{s}.attention.attention.{n}.bias': (D,)})
    shapes.update({f'{s}.attention.output.dense.weight': (D, D),
                   f'{s}.attention.output.dense.bias': (D,),
                   f'{s}.intermediate.dense.weight': (MLP, D),
                   f'{s}.intermediate.dense.bias': (MLP,),
                   f'{s}.output.dense.weight': (D, MLP), f'{s}.output.dense.bias': (D,)})
  shapes.update({f'{p}layernorm.weight': (D,), f'{p}layernorm.bias': (D,)})
  if head:
    shapes.update({'classifier.weight': (K, D), 'classifier.bias': (K,)})
  else:
    shapes.update({'pooler.dense.weight': (D, D), 'pooler.dense.bias': (D,)})
  return _rng_tensors(shapes, seed)


def timm_checkpoint(grid=IMAGE // PATCH, seed=0):
  """Random weights under timm vit_*'s names (VisionTransformer, qkv_bias=True)."""
  shapes = {'cls_token': (1, 1, D), 'pos_embed': (1, 1 + grid * grid, D),
            'patch_embed.proj.weight': (D, 3, PATCH, PATCH), 'patch_embed.proj.bias': (D,)}
  for i in range(DEPTH):
    s = f'blocks.{i}'
    for n in ('norm1', 'norm2'):
      shapes.update({f'{s}.{n}.weight': (D,), f'{s}.{n}.bias': (D,)})
    shapes.update({f'{s}.attn.qkv.weight': (3 * D, D), f'{s}.attn.qkv.bias': (3 * D,),
                   f'{s}.attn.proj.weight': (D, D), f'{s}.attn.proj.bias': (D,),
                   f'{s}.mlp.fc1.weight': (MLP, D), f'{s}.mlp.fc1.bias': (MLP,),
                   f'{s}.mlp.fc2.weight': (D, MLP), f'{s}.mlp.fc2.bias': (D,)})
  shapes.update({'norm.weight': (D,), 'norm.bias': (D,), 'head.weight': (K, D),
                 'head.bias': (K,)})
  return _rng_tensors(shapes, seed)


def _cfg(name='vit', image=IMAGE, num_frames=4, representation_size=None, **tl):
  return ModelConfig.from_dict(
      dict(name=name, variant='Mu/4', num_layers=DEPTH, num_classes=K, classifier='token',
           tubelet_size=2, representation_size=representation_size,
           tokenlearner=dict(num_tokens=tl.pop('num_tokens', 0), loc=1, **tl)),
      image_size=image, num_frames=num_frames)


def _load(tmp_path, sd, kind, cfg, **init):
  path = str(tmp_path / 'model.safetensors')
  save_file(sd, path)
  model = build_model(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, *cfg.input_shape)), train=False)['params']
  init = InitConfig(path, kind, **init)
  pretrained.check_path(init)
  return model, pretrained.init_from(jax.device_get(params), init, cfg)


@pytest.mark.parametrize('kind', ['hf_vit', 'timm_vit'])
def test_checkpoint_logits_match_the_published_forward(tmp_path, kind):
  sd = hf_checkpoint() if kind == 'hf_vit' else timm_checkpoint()
  forward = (lambda *a, **k: hf_forward(*a, **k)[0]) if kind == 'hf_vit' else timm_forward
  eps = SPEC[kind]['eps']
  cfg = _cfg()
  linen, params = _load(tmp_path, sd, kind, cfg, load_head=True)
  images = np.random.default_rng(1).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
  source = forward(sd, images.astype(np.float64), eps=eps, exact=True)
  # The NNX ViT with the source's GELU and eps computes the source's function.
  exact = tnnx.ViT(cfg, gelu_approximate=False, layernorm_epsilon=eps, rngs=nnx.Rngs(0))
  tnnx.from_linen_params(exact, params)
  d_nnx = float(np.abs(np.asarray(exact(jnp.asarray(images))[0]) - source).max())
  # The linen model (tanh GELU, eps 1e-6) against the same forward with those choices.
  ours = forward(sd, images.astype(np.float64), eps=1e-6, exact=False)
  got = np.asarray(linen.apply({'params': params}, jnp.asarray(images), train=False)[0])
  d_linen = float(np.abs(got - ours).max())
  print(f'{kind}: max |delta logits| NNX(exact GELU, eps {eps:g}) vs source definition '
        f'{d_nnx:.1e}; linen vs source weights in our definition {d_linen:.1e}; source vs '
        f'our definition (the GELU / eps difference itself) '
        f'{float(np.abs(source - ours).max()):.1e}; |logits| ~ {np.abs(source).max():.2f}')
  assert d_nnx <= TOL and d_linen <= TOL


def test_hf_vit_model_pooler_is_pre_logits(tmp_path):
  sd = hf_checkpoint(head=False)
  cfg = _cfg(representation_size=D)
  _, params = _load(tmp_path, sd, 'hf_vit', cfg)
  images = np.random.default_rng(2).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
  _, pooled = hf_forward(sd, images.astype(np.float64))
  model = tnnx.from_linen_params(
      tnnx.ViT(cfg, gelu_approximate=False, layernorm_epsilon=1e-12, rngs=nnx.Rngs(0)), params)
  got = np.asarray(model(jnp.asarray(images))[1]['pre_logits'])
  assert float(np.abs(got - pooled).max()) <= TOL


@pytest.mark.parametrize('kind', ['hf_vit', 'timm_vit'])
def test_into_vivit_with_tokenlearner_new_resolution(tmp_path, kind):
  """Position embedding resized (4x4 -> 6x6) and tiled over time, patch kernel inflated to
  tubelets, the TokenLearner and fusers inserted fresh, the blocks taken from the source."""
  sd = hf_checkpoint() if kind == 'hf_vit' else timm_checkpoint()
  cfg = _cfg(name='vivit', image=24, num_tokens=4, fuser=True)
  model, params = _load(tmp_path, sd, kind, cfg, inflation='central_frame')
  flat = flatten(params)
  assert flat['Transformer/posembed_input/pos_embedding'].shape == (1, 1 + 2 * 36, D)
  kernel = flat['embedding/kernel']
  assert kernel.shape == (2, PATCH, PATCH, 3, D) and not kernel[0].any()
  np.testing.assert_allclose(kernel[1], np.transpose(
      sd['patch_embed.proj.weight' if kind == 'timm_vit' else
         'vit.embeddings.patch_embeddings.projection.weight'], (2, 3, 1, 0)))
  assert any('/tokenlearner_1/' in k for k in flat) and any('/fuser_1/' in k for k in flat)
  logits, aux = model.apply({'params': params}, jnp.ones((1, *cfg.input_shape)), train=False)
  assert logits.shape == (1, K) and aux['attention_maps'][0].shape == (1, 2, 4, 6, 6)


def test_pickles_and_unsupported_timm_models_are_refused(tmp_path):
  bin_path = str(tmp_path / 'pytorch_model.bin')
  open(bin_path, 'wb').close()
  with pytest.raises(ValueError, match='pickle'):
    pretrained.check_path(InitConfig(bin_path, 'hf_vit'))
  with pytest.raises(ValueError, match='not a .safetensors file'):
    pretrained.check_path(InitConfig(str(tmp_path / 'missing'), 'timm_vit'))
  sd = timm_checkpoint()
  sd['fc_norm.weight'], sd['fc_norm.bias'] = sd.pop('norm.weight'), sd.pop('norm.bias')
  with pytest.raises(ValueError, match='fc_norm'):
    _load(tmp_path, sd, 'timm_vit', _cfg())
  sd = timm_checkpoint()
  sd['blocks.0.ls1.gamma'] = np.ones(D, np.float32)
  with pytest.raises(ValueError, match='LayerScale'):
    _load(tmp_path, sd, 'timm_vit', _cfg())
  sd = hf_checkpoint()
  sd['vit.encoder.layer.0.extra.weight'] = np.ones(D, np.float32)
  with pytest.raises(ValueError, match='extra'):
    _load(tmp_path, sd, 'hf_vit', _cfg())
