"""Hugging Face and timm ViT checkpoints (`.safetensors`) in this project's parameter layout.

`config.init_from.kind='hf_vit'` (transformers `ViTForImageClassification` / `ViTModel`) and
`'timm_vit'` (timm `vision_transformer.VisionTransformer`, `vit_*`) read `.safetensors` files with
the `safetensors` package's numpy API (a file, or a folder with `model.safetensors` or its
`model-*-of-*.safetensors` shards) and map them onto the vit_jax layout of this project;
`token_learner.pretrained.map_params` then resizes the position embedding, inflates the patch
kernel to tubelets and inserts the TokenLearner exactly as for `vit_npz`. PyTorch pickles
(`.bin`, `.pt`, `.pth`) are refused: reading them runs pickle code; convert them to safetensors.

Layouts (PyTorch `Linear.weight` is `[out, in]`, `Conv2d.weight` `[out, in, kh, kw]`):
- patch embedding `[C, 3, P, P]` -> `embedding/kernel [P, P, 3, C]`; CLS `[1, 1, C]` -> `cls`;
  position embedding `[1, 1 + N, C]` -> `Transformer/posembed_input/pos_embedding` (both
  libraries prepend the CLS token, then add the embedding: the vit_jax semantics). timm's
  `no_embed_class` models (N entries, added before the CLS token is prepended) get a zero entry
  0, as big_vision checkpoints.
- q, k, v `[C, C]` (HF `query` / `key` / `value`; timm one fused `qkv [3C, C]`, rows q, k, v, each
  head-major) -> `[C, H, D]` kernels and `[H, D]` biases; the output projection `[C, C]` ->
  `out/kernel [H, D, C]`. H is the target model's `num_heads` (not stored in the weights).
- LayerNorm `weight` -> `scale`; MLP `[M, C]` / `[C, M]` -> `MlpBlock_3/Dense_{0,1}` transposed;
  final norm -> `encoder_norm`; classifier `[K, C]` -> `head`; HF `ViTModel`'s pooler (Dense +
  tanh on the CLS token) -> `pre_logits`.
What this project's models do not have is an error naming the key: timm LayerScale (`ls1`),
`fc_norm` (global_pool='avg': the norm after pooling), `norm_pre`, register tokens, qk-norm; HF
`ViTForMaskedImageModeling` decoders.

Activation and epsilon: both libraries use the exact (erf) GELU; HF's LayerNorm eps is 1e-12,
timm's 1e-6. The linen models use flax's tanh-approximated GELU and eps 1e-6 (no ModelConfig
field selects others), so a loaded linen model computes a slightly different function than the
source; `token_learner.nnx.ViT(cfg, gelu_approximate=False, layernorm_epsilon=...)` computes the
source's exactly (tests/test_hf_timm.py).
"""
import glob
import os
import re
from typing import Dict

import numpy as np

KINDS = ('hf_vit', 'timm_vit')
_PICKLES = ('.bin', '.pt', '.pth', '.ckpt')
_POSEMB = 'Transformer/posembed_input/pos_embedding'


def safetensors_files(path: str):
  """The `.safetensors` files of `path` (a file or a folder); a ValueError naming
  config.init_from.path otherwise."""
  if path.endswith(_PICKLES):
    raise ValueError(f'config.init_from.path={path!r}: PyTorch pickle checkpoints are not read '
                     '(loading them executes pickle code); convert the file to .safetensors '
                     '(e.g. `safetensors.torch.save_file(torch.load(path), "model.safetensors")` '
                     'on a trusted file) or use the .safetensors file the model hub provides')
  if os.path.isfile(path) and path.endswith('.safetensors'):
    return [path]
  if os.path.isdir(path):
    single = os.path.join(path, 'model.safetensors')
    files = [single] if os.path.isfile(single) else sorted(
        glob.glob(os.path.join(path, 'model-*-of-*.safetensors')))
    if files:
      return files
  raise ValueError(f'config.init_from.path={path!r} is not a .safetensors file or a folder with '
                   'model.safetensors (or model-*-of-*.safetensors shards)')


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """{name: numpy array} of every tensor of the `.safetensors` file(s) at `path`."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  out = {}
  for f in safetensors_files(path):
    out.update(load_file(f))
  return out


def _linear(w, b=None):
  """PyTorch `Linear` -> flax Dense kernel `[in, out]` and bias."""
  w = np.asarray(w)
  return w.T, (np.zeros(w.shape[0], w.dtype) if b is None else np.asarray(b))


def _attention(prefix, qkv, out, num_heads):
  """{name: (w [C, C], b)} for q/k/v and (w, b) of the output projection -> flat params."""
  flat = {}
  for name, (w, b) in qkv.items():
    kernel, bias = _linear(w, b)
    c = kernel.shape[0]
    if c % num_heads:
      raise ValueError(f'{prefix}/{name}: width {c} is not divisible by the model\'s '
                       f'num_heads={num_heads}')
    flat[f'{prefix}/{name}/kernel'] = kernel.reshape(c, num_heads, c // num_heads)
    flat[f'{prefix}/{name}/bias'] = bias.reshape(num_heads, c // num_heads)
  kernel, bias = _linear(*out)
  flat[f'{prefix}/out/kernel'] = kernel.reshape(num_heads, -1, kernel.shape[1])
  flat[f'{prefix}/out/bias'] = bias
  return flat


class _Reader:
  """Marks the keys it reads, so unread (unsupported) keys can be named."""

  def __init__(self, sd):
    self.sd, self.used = sd, set()

  def __contains__(self, key):
    return key in self.sd

  def __getitem__(self, key):
    if key not in self.sd:
      raise ValueError(f'{key}: missing from the checkpoint')
    self.used.add(key)
    return self.sd[key]

  def get(self, key):
    return self[key] if key in self.sd else None

  def unread(self, ignore=()):
    return sorted(k for k in self.sd if k not in self.used and not any(
        re.search(p, k) for p in ignore))


def _patch_kernel(w):
  return np.transpose(np.asarray(w), (2, 3, 1, 0))  # [C, 3, P, P] -> [P, P, 3, C]


def _posemb(posemb, has_cls):
  """Position embedding; a no_embed_class one (a square number of entries with a CLS token)
  gets a zero entry 0 for the CLS token."""
  n = posemb.shape[1]
  if has_cls and int(round(np.sqrt(n))) ** 2 == n:
    return np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
  return posemb


def _layers(sd, pattern):
  return sorted({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m})


def hf_to_flat(sd: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
  """A transformers ViT state dict (`vit.` prefix or none) -> this project's flat layout."""
  prefix = 'vit.' if any(k.startswith('vit.') for k in sd) else ''
  r = _Reader(sd)
  e = f'{prefix}embeddings'
  flat = {'embedding/kernel': _patch_kernel(r[f'{e}.patch_embeddings.projection.weight']),
          'embedding/bias': r[f'{e}.patch_embeddings.projection.bias']}
  if f'{e}.cls_token' in r:
    flat['cls'] = r[f'{e}.cls_token']
  flat[_POSEMB] = _posemb(r[f'{e}.position_embeddings'], 'cls' in flat)
  for i in _layers(sd, rf'^{re.escape(prefix)}encoder\.layer\.(\d+)\.'):
    s, d = f'{prefix}encoder.layer.{i}', f'Transformer/encoderblock_{i}'
    a = f'{s}.attention.attention'
    flat.update(_attention(f'{d}/MultiHeadDotProductAttention_1', {
        n: (r[f'{a}.{n}.weight'], r.get(f'{a}.{n}.bias')) for n in ('query', 'key', 'value')},
        (r[f'{s}.attention.output.dense.weight'], r.get(f'{s}.attention.output.dense.bias')),
        num_heads))
    for src, dst in ((f'{s}.layernorm_before', f'{d}/LayerNorm_0'),
                     (f'{s}.layernorm_after', f'{d}/LayerNorm_2')):
      flat.update({f'{dst}/scale': r[f'{src}.weight'], f'{dst}/bias': r[f'{src}.bias']})
    for src, dst in ((f'{s}.intermediate.dense', 'Dense_0'), (f'{s}.output.dense', 'Dense_1')):
      k, b = _linear(r[f'{src}.weight'], r[f'{src}.bias'])
      flat.update({f'{d}/MlpBlock_3/{dst}/kernel': k, f'{d}/MlpBlock_3/{dst}/bias': b})
  flat.update({'Transformer/encoder_norm/scale': r[f'{prefix}layernorm.weight'],
               'Transformer/encoder_norm/bias': r[f'{prefix}layernorm.bias']})
  for src, dst in ((f'{prefix}pooler.dense', 'pre_logits'), ('classifier', 'head')):
    if f'{src}.weight' in r:
      flat[f'{dst}/kernel'], flat[f'{dst}/bias'] = _linear(r[f'{src}.weight'],
                                                           r.get(f'{src}.bias'))
  unread = r.unread(ignore=(r'embeddings\.mask_token$',))
  if unread:
    raise ValueError(f'{unread[0]}: a Hugging Face ViT parameter this project\'s ViT has no '
                     f'counterpart for ({len(unread)} such keys)')
  return flat


def timm_to_flat(sd: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
  """A timm `VisionTransformer` state dict -> this project's flat layout."""
  for pattern, what in ((r'^fc_norm\.', "fc_norm (global_pool='avg' normalises after pooling; "
                         "this project's 'gap' models before)"),
                        (r'\.ls[12]\.', 'LayerScale (init_values)'),
                        (r'^norm_pre\.', 'a pre-norm (pre_norm=True)'),
                        (r'^reg_token$', 'register tokens'),
                        (r'\.attn\.(q_norm|k_norm|norm)\.', 'attention normalisation'),
                        (r'^attn_pool\.', "an attention-pool head (global_pool='map')")):
    hits = sorted(k for k in sd if re.search(pattern, k))
    if hits:
      raise ValueError(f'{hits[0]}: the timm model has {what}, which this project\'s ViT does '
                       'not have')
  r = _Reader(sd)
  flat = {'embedding/kernel': _patch_kernel(r['patch_embed.proj.weight']),
          'embedding/bias': r['patch_embed.proj.bias']}
  if 'cls_token' in r:
    flat['cls'] = r['cls_token']
  flat[_POSEMB] = _posemb(r['pos_embed'], 'cls' in flat)
  for i in _layers(sd, r'^blocks\.(\d+)\.'):
    s, d = f'blocks.{i}', f'Transformer/encoderblock_{i}'
    w, b = r[f'{s}.attn.qkv.weight'], r.get(f'{s}.attn.qkv.bias')
    c = w.shape[1]
    qkv = {n: (w[j * c:(j + 1) * c], None if b is None else b[j * c:(j + 1) * c])
           for j, n in enumerate(('query', 'key', 'value'))}
    flat.update(_attention(f'{d}/MultiHeadDotProductAttention_1', qkv,
                           (r[f'{s}.attn.proj.weight'], r.get(f'{s}.attn.proj.bias')),
                           num_heads))
    for src, dst in ((f'{s}.norm1', f'{d}/LayerNorm_0'), (f'{s}.norm2', f'{d}/LayerNorm_2')):
      flat.update({f'{dst}/scale': r[f'{src}.weight'], f'{dst}/bias': r[f'{src}.bias']})
    for src, dst in ((f'{s}.mlp.fc1', 'Dense_0'), (f'{s}.mlp.fc2', 'Dense_1')):
      k, bias = _linear(r[f'{src}.weight'], r.get(f'{src}.bias'))
      flat.update({f'{d}/MlpBlock_3/{dst}/kernel': k, f'{d}/MlpBlock_3/{dst}/bias': bias})
  flat.update({'Transformer/encoder_norm/scale': r['norm.weight'],
               'Transformer/encoder_norm/bias': r['norm.bias']})
  if 'head.weight' in r:
    flat['head/kernel'], flat['head/bias'] = _linear(r['head.weight'], r.get('head.bias'))
  unread = r.unread()
  if unread:
    raise ValueError(f'{unread[0]}: a timm ViT parameter this project\'s ViT has no '
                     f'counterpart for ({len(unread)} such keys)')
  return flat


def load_flat(path: str, kind: str, num_heads: int) -> Dict[str, np.ndarray]:
  """The checkpoint at `path` (kind 'hf_vit' or 'timm_vit') in the flat vit_jax layout that
  `token_learner.pretrained.map_params` takes."""
  if kind not in KINDS:
    raise ValueError(f'config.init_from.kind={kind!r} is not one of {list(KINDS)}')
  sd = read_safetensors(path)
  flat = (hf_to_flat if kind == 'hf_vit' else timm_to_flat)(sd, num_heads)
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}
