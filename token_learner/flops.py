"""FLOPs and parameters of a configured model, in the paper's convention.

    python -m token_learner.flops --config=configs/imagenet_tokenlearner.py \
        --config.model.tokenlearner.num_tokens=16
    python -m token_learner.flops --config=configs/charades_bottleneck.py --module=all
    python -m token_learner.flops --config=configs/avid_bottleneck.py --module=all --breakdown \
        --table11 --config.dataset.image_size=256

GFLOPs are multiply-adds of one forward pass at batch 1 (XLA's `cost_analysis()` flops / 2), one
view for video (Tables 1-8). Nothing is allocated: parameters come from `jax.eval_shape` and the
forward pass is only lowered, so the largest models cost seconds.

The §6 bottleneck model's cost tables are here too: one module alone (`module_cost` by XLA,
`analytic_module_cost` by formula, `module_table` beside Tables 12 / 13) and the whole network
(`analytic_network_cost`, `network_table` beside Table 11).
"""
import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from token_learner.bottleneck import MODULE_LAYERS, TOKENIZERS, BottleneckModule
from token_learner.model_config import BottleneckConfig, ModelConfig
from token_learner.models import build_model


def abstract_params(model_cfg: ModelConfig):
  """`jax.ShapeDtypeStruct` tree of the model's parameters (no memory allocated)."""
  model = build_model(model_cfg)
  x = jax.ShapeDtypeStruct((1, *model_cfg.input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
  return variables['params']


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def counted_config(model_cfg: ModelConfig, *, keep_remat: bool = False) -> ModelConfig:
  """The model of `model_cfg` as XLA's cost analysis counts every FLOP of: the same function and
  parameters' shapes in a form without loops or opaque kernels.

  XLA counts a loop's body once, so scanned layers (`scan_layers`) are unrolled and the §6
  Vector Transformer's query chunks (a `lax.map`) are computed at once; an attention kernel XLA
  does not see into (cuDNN's custom call counts 0 FLOPs; 'auto' may pick it, or the Pallas
  kernel) is replaced by the 'einsum' implementation (the same products, counted). `remat` is dropped (its recomputation is not
  model FLOPs) unless `keep_remat` (the FLOPs the hardware runs).
  """
  changes = {}
  if model_cfg.dtype != 'float32':  # A half dtype adds converts, which XLA counts as FLOPs.
    changes['dtype'] = 'float32'
  if model_cfg.scan_layers:
    changes['scan_layers'] = False
  if model_cfg.remat != 'none' and not keep_remat:
    changes['remat'] = 'none'
  if model_cfg.attention_implementation not in (None, 'einsum'):
    changes['attention_implementation'] = 'einsum'
  if model_cfg.name == 'bottleneck' and model_cfg.bottleneck.query_chunk:
    changes['bottleneck'] = dataclasses.replace(model_cfg.bottleneck, query_chunk=0)
  return dataclasses.replace(model_cfg, **changes) if changes else model_cfg


def count_flops_and_params(model_cfg: ModelConfig):
  """Returns `(gflops, num_params)`: multiply-adds / 1e9 at batch 1, and the parameter count.

  Counted on `counted_config(model_cfg)` (unrolled layers, attention as einsums), once per
  process for each counted config: a second run of the same model in one process (a sweep, a
  notebook, a restart in place) reuses the count instead of tracing the model again."""
  return _count_flops_and_params(counted_config(model_cfg))


@functools.lru_cache(maxsize=64)
def _count_flops_and_params(model_cfg: ModelConfig):
  model = build_model(model_cfg)
  params = abstract_params(model_cfg)
  x = jax.ShapeDtypeStruct((1, *model_cfg.input_shape), jnp.float32)
  forward = jax.jit(lambda p, v: model.apply({'params': p}, v, train=False)[0])
  cost = forward.lower(params, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / 2 / 1e9, count_params(params)


def summary(model_cfg: ModelConfig) -> str:
  """A few lines describing the model, ending with `gflops=<float> params=<int>`."""
  gflops, params = count_flops_and_params(model_cfg)
  if model_cfg.name == 'bottleneck':
    return _bottleneck_summary(model_cfg, gflops, params)
  tl = model_cfg.tokenlearner
  t, h, w = model_cfg.grid_shape
  lines = [
      f'model: {model_cfg.name} {model_cfg.variant} ({model_cfg.hidden_size} wide, '
      f'{model_cfg.num_layers} layers, {model_cfg.num_heads} heads, MLP {model_cfg.mlp_dim})',
      f'input: {model_cfg.input_shape} -> token grid {t}x{h}x{w} = {t * h * w} tokens',
  ]
  if model_cfg.uses_tokenlearner:
    arch = f'fuser ({tl.fuser_type}), Fig. 3(b)' if tl.fuser else 'no fuser, Fig. 3(a)'
    lines.append(f'tokenlearner: {tl.version}, {tl.num_tokens} tokens per frame at layer '
                 f'{tl.loc}, {arch}')
  if model_cfg.spatial_pooling:
    lines.append(f'spatial pooling (layer, k): {model_cfg.spatial_pooling}')
  lines.append(f'gflops={gflops:.4f} params={params}')
  return '\n'.join(lines)


def _bottleneck_summary(model_cfg: ModelConfig, gflops: float, params: int) -> str:
  bn = model_cfg.bottleneck
  t, h, w, d = stage_grids(model_cfg)[-1]
  return '\n'.join([
      f'model: bottleneck X(2+1)D (stem {bn.stem_width}, widths {bn.widths}, depths {bn.depths}, '
      f'expansion {bn.expansion}, conv5 {bn.conv5_width}, head {bn.head_width})',
      f'module: {bn.module} in stages {bn.module_stages} (transformer {bn.transformer}, '
      f'{bn.num_tokens} tokens per frame); res5 grid {t}x{h}x{w}, d={d}',
      f'input: {model_cfg.input_shape}',
      f'gflops={gflops:.4f} params={params}  (2 x GMACs = {2 * gflops:.2f}, Table 11 units)'])


# ---------------------------------------------------------------------------------------------
# The §6 bottleneck: per-module (Tables 12, 13) and whole-network (Table 11) costs.

# The paper's per-module numbers at T x H x W x d = 64 x 8 x 8 x 432: (GFLOPs, params in M),
# Tables 12 and 13 (GFLOPs there are 2 x multiply-adds, see `module_cost`).
PAPER_MODULE_COST = {
    'joint_mhsa': (22.0, 0.30), 'conv2d_joint_mhsa': (35.8, 1.98),
    'tokenlearner': (3.4, 0.81), 'conv2d_tokenlearner': (17.2, 2.49),
    'conv2d_conv1d': (18.3, 2.24), 'conv2d_mixer': (13.8, 2.06),
    'conv2d_temporal': (16.5, 1.98), 'spatial_temporal': (5.5, 0.59),
    'conv2d_spatial_temporal': (19.2, 2.27), 'spatial_tokenlearner': (6.2, 1.11),
}


def stage_grids(model_cfg: ModelConfig):
  """[(T, H, W, d)] at the input of each stage's modules (after its stride), res2..res5."""
  bn = model_cfg.bottleneck
  h, w = model_cfg.image_size
  h, w = -(-h // bn.strides[0]), -(-w // bn.strides[0])
  out = []
  for stage in range(4):
    h, w = -(-h // bn.strides[stage + 1]), -(-w // bn.strides[stage + 1])
    out.append((model_cfg.num_frames, h, w, bn.inner_width(stage)))
  return out


def module_cost(bn: BottleneckConfig, module: Optional[str] = None,
                shape: Sequence[int] = (64, 8, 8, 432)):
  """`(gmacs, params)` of one bottleneck module alone on a `[1, *shape]` (T, H, W, d) input.

  The paper's per-module setting (Tables 12, 13) is T x H x W x d = 64 x 8 x 8 x 432. gmacs are
  multiply-adds / 1e9 (XLA cost analysis flops / 2, the project's convention); the paper's
  module GFLOPs are 2 x gmacs (Conv2D + Conv1D = 9.17 GMACs = 18.3 GFLOPs, Table 13). Lowered
  with query_chunk=0 (XLA's cost analysis counts a loop body once), nothing is executed.
  """
  bn = dataclasses.replace(bn, query_chunk=0, module=module or bn.module)
  mod = BottleneckModule(MODULE_LAYERS[bn.module], bn)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  params = jax.eval_shape(lambda: mod.init(jax.random.key(0), jnp.zeros(x.shape)))['params']
  fwd = jax.jit(lambda p, v: mod.apply({'params': p}, v)[0])
  cost = fwd.lower(params, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / 2 / 1e9, count_params(params)


def analytic_module_cost(bn: BottleneckConfig, module: Optional[str] = None,
                         shape: Sequence[int] = (64, 8, 8, 432)):
  """The per-layer count of one module by formula: `[(layer, macs, params)]`.

  Only multiplications of weights or of two activations are counted (convolutions over all
  k x k taps, the zero padding included; dense layers; attention products; the TokenLearner's
  pooling and the TokenFuser's combination); no norms, activations, softmaxes or biases' adds.
  N = T*H*W positions, M = T*S tokens; params include biases and norm scales / offsets.
  """
  module = module or bn.module
  t, h, w, d = shape
  n, s = t * h * w, bn.num_tokens
  m = t * s
  dq = bn.mhsa_dim or d  # MHSA qkv width
  gn = 2 * d  # a norm's scale + offset
  rows = []
  for kind in MODULE_LAYERS[module]:
    if kind == 'conv2d':
      rows.append(('conv2d 3x3', n * 9 * d * d, 9 * d * d + gn))
    elif kind == 'conv1d':
      k = bn.temporal_kernel
      rows.append((f'conv1d {k}-tap', n * k * d * d, k * d * d + gn))
    elif kind in ('joint', 'spatial', 'temporal'):
      length = {'joint': n, 'spatial': h * w, 'temporal': t}[kind]
      rows.append((f'{kind} MHSA q,k,v,out (width {dq})', 4 * n * d * dq,
                   4 * d * dq + 3 * dq + d + gn))
      rows.append((f'{kind} MHSA QK^T + AV ({length} tokens)', 2 * n * length * dq, 0))
    elif kind == 'joint_vector':
      rows.append(('Vector Transformer q,k,v (all positions)', 3 * n * d * d, 3 * (d * d + d) + gn))
      rows.append(('Vector Transformer [N, N, d] products', 2 * n * n * d, 0))
    elif kind == 'mixer':
      md = bn.mixer_dim or d
      rows.append(('mixer token MLP (T -> T -> T)', 2 * h * w * d * t * t, 2 * (t * t + t) + gn))
      rows.append((f'mixer channel MLP (d -> {md} -> d)', 2 * n * d * md,
                   2 * d * md + md + d + gn))
    elif kind in TOKENIZERS:
      if kind == 'tokenlearner':
        convs = [(d, s)] + [(s, s)] * (bn.tl_conv_layers - 1)
        rows.append(('TokenLearner alpha conv(s) 3x3 -> S', sum(n * 9 * a * b for a, b in convs),
                     sum(9 * a * b for a, b in convs) + gn))
        rows.append(('TokenLearner pooling (maps x input)', n * s * d, 0))
      elif kind == 'dense_tokens':
        rows.append(('dense tokens (positions, channels)', t * d * h * w * s + m * d * d,
                     h * w * s + s * d + d * d + d))
      elif kind == 'pool_mlp':
        rows.append(('pool + MLP d -> d -> S*d', t * (d * d + d * s * d),
                     d * d + d + d * s * d + s * d))
      elif kind == 'prior_tokens':
        rows.append(('prior-only maps x input', n * s * d, s * h * w))
      else:  # grid_tokens: averages only
        rows.append(('fixed grid tokens (averages)', 0, 0))
      if bn.transformer == 'vector':
        rows.append(('Vector Transformer q,k,v', 3 * m * d * d, 3 * (d * d + d) + gn))
        rows.append(('Vector Transformer [M, M, d] products (q.k, weights.v)', 2 * m * m * d, 0))
      else:
        rows.append((f'token MHSA q,k,v,out (width {dq})', 4 * m * d * dq,
                     4 * d * dq + 3 * dq + d + gn))
        rows.append(('token MHSA QK^T + AV', 2 * m * m * dq, 0))
      if bn.fuser == 'broadcast':  # averages and adds only
        continue
      f = bn.fuser_mlp_dim
      rows.append(('TokenFuser token mixing M x M', m * m * d, m * m + 2 * gn))
      rows.append((f'TokenFuser beta MLP d -> {f} -> S', n * (d * f + f * s),
                   d * f + f + f * s + s + gn))
      rows.append(('TokenFuser B_w x tokens', n * s * d, 0))
    else:
      raise ValueError(f'unknown bottleneck layer {kind!r}')
  return rows


def analytic_network_cost(model_cfg: ModelConfig, module: Optional[str] = None) -> float:
  """Multiply-adds of the whole network at batch 1 by formula (the counting of
  `analytic_module_cost`: every tap of every conv, no norms / activations), for Table 11."""
  bn = model_cfg.bottleneck
  module = module or bn.module
  t, (h, w) = model_cfg.num_frames, model_cfg.image_size
  up = lambda a, s: -(-a // s)
  h, w = up(h, bn.strides[0]), up(w, bn.strides[0])
  macs = t * h * w * (9 * 3 * bn.stem_width + bn.stem_temporal_kernel * bn.stem_width)
  c = bn.stem_width
  for stage in range(4):
    layers_of = module if stage in bn.module_stages else 'conv2d_conv1d'
    d, width = bn.inner_width(stage), bn.widths[stage]
    for i in range(bn.depths[stage]):
      s = bn.strides[stage + 1] if i == 0 else 1
      n_in = t * h * w
      h, w = up(h, s), up(w, s)
      n = t * h * w
      if s > 1 or c != width:
        macs += n * c * width  # shortcut
      macs += (n_in if MODULE_LAYERS[layers_of][0] == 'conv2d' else n) * c * d  # conv_a
      macs += sum(r[1] for r in analytic_module_cost(bn, layers_of, (t, h, w, d)))
      macs += n * d * width  # conv_c
      c = width
  macs += t * h * w * c * bn.conv5_width
  return macs + bn.conv5_width * bn.head_width + bn.head_width * model_cfg.num_classes


# Table 11 (AViD, whole network, GFLOPs x views at 256 x 256 x 64): our module for each row.
PAPER_NETWORK_GFLOPS = {'conv2d_tokenlearner': ('Ours', 487.0),
                        'conv2d_conv1d': ('Backbone (X(2+1)D-M)', 532.0),
                        'spatial_temporal': ('X(2+1)D-M, disjoint space+time', 493.0)}


def network_table(model_cfg: ModelConfig) -> str:
  """Table 11's rows: whole-network GFLOPs (2 x GMACs) by XLA and by formula, beside the paper."""
  lines = [f'whole network, {model_cfg.num_frames} x {model_cfg.image_size[0]} x '
           f'{model_cfg.image_size[1]}, {model_cfg.num_classes} classes (Table 11)',
           f'{"module":24s} {"XLA":>6s} {"formula":>7s} {"paper":>6s} {"diff":>6s}  row']
  for name, (row, paper) in PAPER_NETWORK_GFLOPS.items():
    cfg = dataclasses.replace(model_cfg, bottleneck=dataclasses.replace(
        model_cfg.bottleneck, module=name, query_chunk=0))
    formula = 2 * analytic_network_cost(cfg) / 1e9
    xla = 2 * count_flops_and_params(cfg)[0]
    lines.append(f'{name:24s} {xla:6.1f} {formula:7.1f} {paper:6.1f} {_pct(formula, paper)}  '
                 f'{row}')
  return '\n'.join(lines)


def _pct(ours: float, paper: float) -> str:
  return f'{100 * (ours / paper - 1):+5.0f}%' if paper == paper else '     '


def module_table(bn: BottleneckConfig, modules: Optional[Sequence[str]] = None,
                 shape: Sequence[int] = (64, 8, 8, 432), breakdown: bool = False) -> str:
  """A text table of each module's cost under two countings, beside the paper's numbers.

  'XLA': `module_cost` (XLA's count: only the taps that touch the input, so a 3x3 'SAME' conv on
  8 x 8 counts 22^2 / 24^2 = 84 % of its taps; norms, softmax and activations included).
  'formula': `analytic_module_cost` (all taps, multiplies only). GFLOPs = 2 x GMACs, the unit of
  Tables 12 / 13 (Conv2D + Conv1D = 2 x 12 x 432^2 x 4096 = 18.3). `breakdown` adds the formula's
  per-layer rows.
  """
  lines = [f'per-module cost on T x H x W x d = {" x ".join(map(str, shape))} '
           '(GFLOPs = 2 x GMACs, the convention of Tables 12 / 13)',
           f'{"module":24s} {"XLA":>6s} {"formula":>7s} {"paper":>6s} {"diff":>6s} '
           f'{"params":>7s} {"paper":>6s} {"diff":>6s}']
  for name in modules or MODULE_LAYERS:
    gmacs, n = module_cost(bn, name, shape)
    rows = analytic_module_cost(bn, name, shape)
    formula = 2 * sum(r[1] for r in rows) / 1e9
    pf, pp = PAPER_MODULE_COST.get(name, (float('nan'), float('nan')))
    lines.append(f'{name:24s} {2 * gmacs:6.2f} {formula:7.2f} {pf:6.1f} {_pct(formula, pf)} '
                 f'{n / 1e6:6.2f}M {pp:5.2f}M {_pct(n / 1e6, pp)}')
    if breakdown:
      for layer, macs, params in rows:
        lines.append(f'    {layer:52s} {2 * macs / 1e9:7.3f} GFLOPs {params / 1e6:6.3f}M')
  return '\n'.join(lines)


def main(argv):
  del argv
  # The boundary reads the dataset section too (TensorFlow); the library functions above do not.
  from token_learner.experiment import model_and_data  # pylint: disable=g-import-not-at-top
  model_cfg = model_and_data(_CONFIG.value)[0]
  print(summary(model_cfg))
  if _MODULE.value:  # Per-module cost of the §6 bottleneck (Tables 12, 13).
    if model_cfg.name != 'bottleneck':
      raise ValueError("--module needs config.model.name='bottleneck'")
    names = None if _MODULE.value == 'all' else (
        [model_cfg.bottleneck.module] if _MODULE.value == 'config' else _MODULE.value.split(','))
    print(module_table(model_cfg.bottleneck, names, tuple(
        int(v) for v in _MODULE_SHAPE.value.split(',')), breakdown=_BREAKDOWN.value))
    if _TABLE11.value:
      print(network_table(model_cfg))


if __name__ == '__main__':
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  from absl import flags  # pylint: disable=g-import-not-at-top
  _MODULE = flags.DEFINE_string(
      'module', '', "bottleneck model: also print per-module cost; 'config' (the config's "
      "module), 'all', or comma-separated names of token_learner.bottleneck.MODULE_LAYERS")
  _MODULE_SHAPE = flags.DEFINE_string(
      'module_shape', '64,8,8,432', 'T,H,W,d of the per-module input (the paper: 64,8,8,432)')
  _BREAKDOWN = flags.DEFINE_bool('breakdown', False, 'with --module: per-layer formula rows')
  _TABLE11 = flags.DEFINE_bool(
      'table11', False, "with --module: Table 11's whole-network rows at the config's input "
      '(--config.dataset.image_size=256 for the paper\'s test size)')
  app.run(main)
