"""Initialisation from pretrained weights: public ViT `.npz` files and this project's checkpoints.

    params = init_from(params, config.init_from, model_cfg)   # after model.init, before training

`config.init_from` is an `InitConfig`: path ('' = nothing to load), kind ('vit_npz' |
'checkpoint' | 'hf_vit' | 'timm_vit': Hugging Face / timm `.safetensors` mapped by
token_learner/hf_timm.py, then as 'vit_npz'), inflation ('central_frame' | 'average'), load_head
(False: the head is re-created for the new classes).

§5.2: "The weights of the initial convolutional layers to handle image patches (e.g., 16x16) are
processed to handle 16x16x2 video patches by following the 3D initialization strategies of ViViT,
and the weights of the Transformer and the TokenLearner layers were directly adopted." So:
- `embedding/kernel` `[p, p, 3, D]` -> `[t, p, p, 3, D]`: 'central_frame' puts it at time t // 2
  (zeros elsewhere), 'average' repeats it over time divided by t (a static clip then embeds as
  the image does).
- `pos_embedding` `[1, (1+) h*w, D]`: the grid part resampled to the target grid with the public
  code's semantics (vit_jax `checkpoint.load_pretrained` and big_vision `resample_posemb` both
  call `scipy.ndimage.zoom(grid, zoom, order=1)`: linear interpolation whose corner samples
  coincide, `resample_grid` here, in numpy) and tiled over the T' temporal slices; the CLS entry
  kept, added (zeros) or dropped with `cls`.
- CLS token: vit_jax prepends it *before* adding the position embedding (entry 0 of
  `pos_embedding` is the CLS token's), big_vision (`pool_type='tok'`) adds the embedding to the
  h*w patches and *then* prepends the CLS token (no entry for it). A big_vision checkpoint is
  brought to the vit_jax layout exactly: a zero entry 0 (its token enters the encoder as `cls`).
  A model with classifier='token' carries the CLS token through the encoder, also with a
  TokenLearner (`token_learner.vit.Encoder`), so the loaded blocks compute what they computed in
  the source; a 'gap' model drops the source's CLS token (logged: its blocks then see one token
  fewer than in the source).
- TokenLearner / fuser parameters (`Transformer/tokenlearner_*`, `fuser_*`) are loaded when the
  source has them and kept freshly initialised otherwise (ViT checkpoints have none).
- `head` (and `pre_logits` when absent or of another width) keep their fresh initialisation.
Anything else must match in shape; a mismatch is a ValueError naming the parameter and both shapes.

Key layouts read (`.npz` files, and this project's orbax checkpoint folders with kind
'checkpoint'): vit_jax (`Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/MlpBlock_3/...`, as this project's models), big_vision (optional
`params/` prefix, top-level `pos_embedding`, `MlpBlock_0` / `LayerNorm_1` /
`MultiHeadDotProductAttention_0`, or a scanned `Transformer/encoderblock` with a leading layer
axis; heads 'tok', 'gap'; a 'map' head (`MAPHead/...`) is a ValueError naming it). big_vision's
tensorstore checkpoint folders are not read: convert them to `.npz` first. This project's scanned
layout (`Transformer/encoderblock_scan_{k}`, config.model.scan_layers) is read too, and a scanned
model receives any of these sources: everything is mapped in the unrolled layout, then stacked
(`token_learner.layer_scan`).

A `.npz` is read member by member from the zip, only the arrays the model needs (`read_npz`; the
old head is not read unless load_head), and each is checked from its `.npy` header before its data
is read (floating-point dtype, the zip's declared size equal to the header's, no more values than
the model parameter it maps to) and then for NaN / Inf; every error names the key.
`check_npz` runs these checks in the trainer before anything is compiled.
"""
import math
import os
import re
from typing import Dict, Optional
import zipfile

from absl import logging
import jax
import numpy as np

from token_learner import hf_timm
from token_learner import layer_scan
from token_learner.init_config import INFLATIONS, KINDS, InitConfig  # pylint: disable=unused-import
from token_learner.model_config import ModelConfig
from token_learner.tree import flatten, unflatten
from token_learner.train import checkpoints

_POSEMB = 'Transformer/posembed_input/pos_embedding'
# Parameters that belong to the new task or module and keep their fresh initialisation when the
# source lacks them (or, for the head, always unless load_head).
_FRESH = re.compile(r'^(head|pre_logits)/|^Transformer/(tokenlearner|fuser)_\d+/')


def check_path(init: InitConfig):
  """Raises a ValueError naming config.init_from.path if it cannot be read (run before anything
  is compiled): a `.npz` file, or for kind 'checkpoint' also a checkpoint folder."""
  if not init.path:
    return
  if init.kind in hf_timm.KINDS:
    hf_timm.safetensors_files(init.path)  # A ValueError naming the path (and pickles refused).
    return
  if init.path.endswith('.npz'):
    ok = os.path.isfile(init.path)
  else:
    ok = init.kind == 'checkpoint' and os.path.isdir(init.path)
  if not ok:
    want = "a .npz file or a checkpoint folder" if init.kind == 'checkpoint' else 'a .npz file'
    raise ValueError(f'config.init_from.path={init.path!r} is not {want} that exists '
                     f'(config.init_from.kind={init.kind!r})')


def save_npz(path: str, params):
  """Writes params as a flat `.npz` (keys joined by '/'), the layout `init_from` reads."""
  with open(path, 'wb') as f:
    np.savez(f, **flatten(jax.device_get(params)))


def _canonical_keys(flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """big_vision names and scanned layers -> the vit_jax layout (and semantics) of this project."""
  flat = {re.sub(r'^params/', '', k): v for k, v in flat.items()}
  flat = flatten(layer_scan.to_unrolled(unflatten(flat)))  # This project's scanned layout.
  _refuse_map_head(flat)
  out = {}
  for key, v in flat.items():
    if key == 'pos_embedding':  # big_vision: h*w entries, added before the CLS is prepended.
      key = _POSEMB
      if 'cls' in flat:  # vit_jax semantics: entry 0 belongs to the CLS token, here zero.
        v = np.concatenate([np.zeros_like(v[:, :1]), v], axis=1)
    m = re.match(r'^Transformer/encoderblock/(.*)$', key)
    if m:  # Scanned layers: leading axis = layer.
      for i in range(v.shape[0]):
        out.update(_canonical_keys({f'Transformer/encoderblock_{i}/{m.group(1)}': v[i]}))
      continue
    if re.match(r'^Transformer/encoderblock_\d+/', key):
      for old, new in (('MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1'),
                       ('LayerNorm_1', 'LayerNorm_2'), ('MlpBlock_0', 'MlpBlock_3')):
        key = key.replace(f'/{old}/', f'/{new}/')
    out[key] = v
  return out


def _refuse_map_head(keys):
  heads = sorted(k for k in keys if re.sub(r'^params/', '', k).startswith('MAPHead'))
  if heads:
    raise ValueError(f'{heads[0]}: the checkpoint has a MAP head (big_vision pool_type=\'map\'),'
                     " which this project's models do not support (config.model.classifier "
                     "'gap' or 'token'); export a 'gap' or 'tok' model")


def load_flat(path: str, kind: str, params=None, load_head: bool = False
              ) -> Dict[str, np.ndarray]:
  """Reads a `.npz` (either kind) or an orbax checkpoint (kind 'checkpoint') into {key: array}.

  With `params` (the model's parameters, arrays or shapes) a `.npz` is read lazily: only the
  members the model needs (`read_npz`), each checked first.
  """
  if kind not in KINDS:
    raise ValueError(f'config.init_from.kind={kind!r} is not one of {list(KINDS)}')
  if path.endswith('.npz'):
    flat = read_npz(path, params, load_head)
  elif kind == 'checkpoint':
    # Verified like a resume: digest, finite values; refused without the metadata to check.
    flat = {k: np.asarray(v) for k, v in flatten(checkpoints.restore_params(path)).items()}
  else:
    raise ValueError(f"config.init_from.path={path!r}: kind 'vit_npz' needs a .npz file")
  return _canonical_keys(flat)


# --- .npz files: read lazily, each member checked before it is read --------------------------

# A position embedding may come from a larger grid (resampled down, e.g. 384 -> 224 pixels): up
# to this many times the model's entries; every other member at most the model's parameter.
POSEMB_SLACK = 16


def _npz_members(zf: zipfile.ZipFile, path: str) -> Dict[str, tuple]:
  """{key: (member name, shape, dtype, bytes before the data)} from the `.npy` headers alone."""
  members = {}
  for info in zf.infolist():
    if not info.filename.endswith('.npy'):
      continue  # np.savez writes only .npy members; anything else is not an array.
    key = info.filename[:-len('.npy')]
    try:
      with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        offset = f.tell()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
      raise ValueError(f'{key}: not a readable .npy member of config.init_from.path={path!r} '
                       f'({e})') from None
    members[key] = (info, tuple(int(d) for d in shape), dtype, offset)
  return members


def _canonical_name(key: str):
  """(key in the unrolled vit_jax layout, stacked): the name-only part of `_canonical_keys`;
  stacked members (a leading layer axis) have `{i}` for the layer."""
  key = re.sub(r'^params/', '', key)
  if key == 'pos_embedding':
    return _POSEMB, False
  m = re.match(r'^Transformer/encoderblock(_\d+|_scan_\d+|)/(.*)$', key)
  if not m:
    return key, False
  rest = f'/{m.group(2)}'
  for old, new in (('MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1'),
                   ('LayerNorm_1', 'LayerNorm_2'), ('MlpBlock_0', 'MlpBlock_3')):
    rest = rest.replace(f'/{old}/', f'/{new}/')
  stacked = not m.group(1).lstrip('_').isdigit()
  return 'Transformer/encoderblock_' + ('{i}' if stacked else m.group(1)[1:]) + rest, stacked


def _model_shapes(params) -> Dict[str, tuple]:
  """{key: shape} of the model's parameters in the unrolled layout (arrays or shapes)."""
  shapes = jax.eval_shape(layer_scan.to_unrolled, params)
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def _bound(key: str, canonical: str, stacked: bool, shape, model: Dict[str, tuple],
           load_head: bool) -> Optional[int]:
  """The most values member `key` may hold, None when the model does not need it."""
  if stacked:
    layers = [s for k, s in model.items() if re.fullmatch(
        re.escape(canonical).replace(re.escape('{i}'), r'\d+'), k)]
    return len(layers) * max(math.prod(s) for s in layers) if layers else None
  if canonical == 'cls':  # Read whenever present: it decides the position embedding's layout.
    return math.prod(model['cls']) if 'cls' in model else max(map(math.prod, model.values()))
  if canonical not in model or (canonical.startswith('head/') and not load_head):
    return None
  if _FRESH.match(canonical) and shape != model[canonical]:
    logging.info('Re-creating %s: checkpoint %s, model %s', canonical, shape, model[canonical])
    return None  # A new module's parameter: kept freshly initialised, never read.
  return math.prod(model[canonical]) * (POSEMB_SLACK if canonical == _POSEMB else 1)


def read_npz(path: str, params=None, load_head: bool = False) -> Dict[str, np.ndarray]:
  """{key: array} of the `.npz` at `path`: with `params`, only the members the model needs.

  Each member is checked before its data is read: a floating-point dtype (complex, integer,
  bool and object arrays are refused), a declared uncompressed size equal to what its `.npy`
  header needs (a zip bomb declares more), at most the values of the model parameter it maps
  to (POSEMB_SLACK times for the position embedding); then its values must be finite. Every
  error names the key. Members are read one at a time from the zip (no NpzFile of all).
  """
  try:
    zf = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f'config.init_from.path={path!r} is not a readable .npz file ({e})') from None
  model = None if params is None else _model_shapes(params)
  flat = {}
  with zf:
    members = _npz_members(zf, path)
    _refuse_map_head(members)  # Unused by the model, yet it says the source cannot be mapped.
    for key, (info, shape, dtype, offset) in members.items():
      canonical, stacked = _canonical_name(key)
      bound = None if model is None else _bound(key, canonical, stacked, shape, model, load_head)
      if model is not None and bound is None:
        continue
      if dtype.kind != 'f':
        raise ValueError(f'{key}: dtype {dtype} in {path!r} is not a floating-point type; '
                         'refusing to load it')
      size = math.prod(shape)
      if info.file_size != offset + size * dtype.itemsize:
        raise ValueError(f'{key}: its zip member declares {info.file_size} bytes but its .npy '
                         f'header ({shape}, {dtype}) needs {offset + size * dtype.itemsize}: '
                         f'a corrupt or malicious file {path!r}')
      if bound is not None and size > bound:
        raise ValueError(f'{key}: checkpoint shape {shape} ({size} values) is larger than the '
                         f'model parameter it maps to ({canonical}, at most {bound} values)')
      with zf.open(info) as f:
        value = np.lib.format.read_array(f, allow_pickle=False)
      bad = value.size - int(np.count_nonzero(np.isfinite(value)))
      if bad:
        raise ValueError(f'{key}: {bad} non-finite value(s) (NaN / Inf) in {path!r}')
      flat[key] = value
  return flat


def check_npz(init: InitConfig, params):
  """Runs the checks of `read_npz` on config.init_from's `.npz` against the model's parameters
  (arrays or shapes, e.g. `Run.abstract_state.params`) before anything is compiled; a no-op for
  other sources."""
  if init.path and init.kind not in hf_timm.KINDS and init.path.endswith('.npz'):
    read_npz(init.path, params, init.load_head)


def inflate_kernel(kernel, t: int, how: str):
  """`[p, p, c, D]` 2D patch kernel -> `[t, p, p, c, D]` tubelet kernel (ViViT's 3D init)."""
  if how == 'average':
    return np.repeat(kernel[None], t, axis=0) / t
  if how == 'central_frame':
    out = np.zeros((t, *kernel.shape), kernel.dtype)
    out[t // 2] = kernel
    return out
  raise ValueError(f'config.init_from.inflation={how!r} is not one of {list(INFLATIONS)}')


def resample_linear(a, axis: int, size: int):
  """Linear resampling of `a` along `axis` to `size` samples, corner samples aligned.

  Output sample o sits at input coordinate o * (n - 1) / (size - 1) (0 when size is 1), as in
  `scipy.ndimage.zoom(..., order=1)` (grid_mode=False), the call of vit_jax and big_vision.
  """
  a = np.asarray(a)
  n = a.shape[axis]
  if n == size:
    return a
  step = (n - 1) / (size - 1) if size > 1 else 0.0
  pos = np.arange(size, dtype=np.float64) * step
  lo = np.clip(np.floor(pos).astype(np.int64), 0, max(n - 2, 0))
  hi = np.minimum(lo + 1, n - 1)
  frac = (pos - lo).reshape([-1 if d == axis % a.ndim else 1 for d in range(a.ndim)])
  x = a.astype(np.float64)
  out = np.take(x, lo, axis=axis) * (1.0 - frac) + np.take(x, hi, axis=axis) * frac
  return out.astype(a.dtype)


def resample_grid(grid, shape, name=_POSEMB):
  """`[h, w, D]` -> `[H, W, D]` by corner-aligned bilinear resampling (identity at equal size)."""
  if grid.shape[:2] == tuple(shape):
    return grid
  logging.info('Resampling %s grid %s -> %s', name, grid.shape[:2], tuple(shape))
  return resample_linear(resample_linear(grid, 0, shape[0]), 1, shape[1])


def resize_posemb(posemb, target_shape, *, source_cls: bool, target_cls: bool,
                  target_grid, source_grid=None, name=_POSEMB):
  """Maps a position embedding onto another token grid.

  Args:
    posemb: `[1, (1+) N, D]` source embedding.
    target_shape: `[1, (1+) T'*H*W, D]`.
    source_cls / target_cls: whether entry 0 is a CLS token's.
    target_grid: `(T', H, W)` of the target.
    source_grid: `(T, h, w)` of the source; None: a square image grid `(1, s, s)`.
    name: for error messages.

  Returns:
    `[1, (1+) T'*H*W, D]`: spatial part resampled bilinearly per time slice (`resample_grid`)
    and tiled (T == 1) or linearly resampled (T > 1) over time; CLS entry kept, zero-filled or
    dropped.
  """
  d = posemb.shape[-1]
  if posemb.ndim != 3 or d != target_shape[-1]:
    raise ValueError(f'{name}: checkpoint shape {posemb.shape} cannot map to model shape '
                     f'{tuple(target_shape)}')
  cls, grid = (posemb[:, :1], posemb[0, 1:]) if source_cls else (None, posemb[0])
  n = grid.shape[0]
  if source_grid is None:
    side = int(round(np.sqrt(n)))
    if side * side != n:
      raise ValueError(f'{name}: checkpoint shape {posemb.shape} has {n} grid positions, not a '
                       f'square; model shape {tuple(target_shape)}')
    source_grid = (1, side, side)
  if int(np.prod(source_grid)) != n:
    raise ValueError(f'{name}: checkpoint shape {posemb.shape} does not hold a {source_grid} '
                     f'grid; model shape {tuple(target_shape)}')
  tt, th, tw = target_grid
  grid = grid.reshape(*source_grid, d)
  grid = np.stack([resample_grid(g, (th, tw), name) for g in grid])  # [T, H, W, D]
  if grid.shape[0] == 1:
    grid = np.repeat(grid, tt, axis=0)  # ViViT: the image embedding repeated for every slice.
  elif grid.shape[0] != tt:
    grid = resample_linear(grid, 0, tt)
  out = grid.reshape(1, tt * th * tw, d)
  if target_cls:
    cls = np.zeros((1, 1, d), posemb.dtype) if cls is None else cls
    out = np.concatenate([cls, out], axis=1)
  if out.shape != tuple(target_shape):
    raise ValueError(f'{name}: checkpoint shape {posemb.shape} mapped to {out.shape}, model '
                     f'shape {tuple(target_shape)}')
  return out


def _source_grid(src, model_cfg: ModelConfig, source_cls: bool):
  """The (T, h, w) grid of the source's posemb: video sources share the model's spatial grid."""
  kernel = src.get('embedding/kernel')
  if kernel is None or kernel.ndim != 5 or _POSEMB not in src:
    return None  # An image source: a square grid.
  n = src[_POSEMB].shape[1] - int(source_cls)
  _, h, w = model_cfg.grid_shape
  if n % (h * w):
    raise ValueError(f'{_POSEMB}: a video checkpoint with {n} positions cannot be mapped onto '
                     f'the model grid {model_cfg.grid_shape} (the spatial grid must be equal)')
  return (n // (h * w), h, w)


def map_params(params, src: Dict[str, np.ndarray], model_cfg: ModelConfig,
               inflation: str = 'central_frame', load_head: bool = False):
  """Returns `params` (the model's fresh init) with every mappable parameter taken from `src`.

  `src` is in the unrolled layout (`load_flat`); a scanned model's `params` are mapped in the
  unrolled layout and stacked back (`token_learner.layer_scan`).
  """
  target = flatten(layer_scan.to_unrolled(jax.device_get(params)))
  source_cls, target_cls = 'cls' in src, 'cls' in target
  if source_cls and not target_cls:
    logging.warning("The checkpoint's CLS token is dropped (config.model.classifier='gap'): the "
                    'loaded blocks see one token fewer than in the source; '
                    "classifier='token' keeps it (also with a TokenLearner).")
  out = {}
  for key, init in target.items():
    value = src.get(key)
    if key.startswith('head/') and not load_head:
      out[key] = init  # A new task: a new head.
      continue
    if _FRESH.match(key) and (value is None or value.shape != init.shape):
      if value is not None:
        logging.info('Re-creating %s: checkpoint %s, model %s', key, value.shape, init.shape)
      out[key] = init
      continue
    if key == 'cls' and value is None:
      out[key] = np.zeros_like(init)  # The ViViT convention for a CLS the source lacks.
      continue
    if value is None:
      raise ValueError(f'{key}: missing from the checkpoint (model shape {init.shape})')
    if key == 'embedding/kernel' and value.ndim == 4 and init.ndim == 5:
      if value.shape != init.shape[1:]:
        raise ValueError(f'{key}: checkpoint shape {value.shape} cannot be inflated to model '
                         f'shape {init.shape}')
      value = inflate_kernel(value, init.shape[0], inflation)
    elif key == _POSEMB and value.shape != init.shape:
      value = resize_posemb(value, init.shape, source_cls=source_cls, target_cls=target_cls,
                            target_grid=model_cfg.grid_shape,
                            source_grid=_source_grid(src, model_cfg, source_cls))
    elif key == _POSEMB and source_cls != target_cls:
      raise ValueError(f'{key}: checkpoint (CLS={source_cls}) and model (CLS={target_cls}) have '
                       f'the same shape {init.shape} but different layouts')
    if value.shape != init.shape:
      raise ValueError(f'{key}: checkpoint shape {value.shape} does not match model shape '
                       f'{init.shape}')
    out[key] = value.astype(init.dtype)
  unused = sorted(set(src) - set(out))
  if unused:
    logging.info('Checkpoint parameters not used by the model: %s', unused)
  out = jax.tree.map(np.asarray, unflatten(out))
  if model_cfg.scan_layers:
    out = layer_scan.to_scanned(out, layer_scan.segments(model_cfg))
  return out


def init_from(params, init: InitConfig, model_cfg: ModelConfig):
  """Applies `config.init_from` to freshly initialised `params`; a no-op if `init.path` is empty.

  Args:
    params: the model's initial parameters (nested dict, e.g. from `model.init`).
    init: where to load from and how.
    model_cfg: the target model's ModelConfig (grid shape for the position embedding).

  Returns:
    A nested dict of numpy arrays shaped like `params`.
  """
  if not init.path:
    return params
  logging.info('Initialising from %s (%s, inflation %s)', init.path, init.kind, init.inflation)
  if init.kind in hf_timm.KINDS:
    src = hf_timm.load_flat(init.path, init.kind, model_cfg.num_heads)
  else:
    src = load_flat(init.path, init.kind, params, init.load_head)
  return map_params(params, src, model_cfg, init.inflation, init.load_head)
