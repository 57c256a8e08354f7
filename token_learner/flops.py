"""FLOPs and parameters of a configured model, in the paper's convention.

    python -m token_learner.flops --config=configs/imagenet_tokenlearner.py \
        --config.model.tokenlearner.num_tokens=16
    python -m token_learner.flops --config=configs/charades_bottleneck.py --module=all
    python -m token_learner.flops --config=configs/avid_bottleneck.py --module=all --breakdown \
        --table11 --config.dataset.image_size=256

GFLOPs are multiply-adds of one forward pass at batch 1 (XLA's `cost_analysis()` flops / 2), one
view for video (Tables 1-8). Nothing is allocated: parameters come from `jax.eval_shape` and the
forward pass is only lowered, so the largest models cost seconds.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from token_learner.model_config import ModelConfig
from token_learner.models import build_model


def abstract_params(model_cfg: ModelConfig):
  """`jax.ShapeDtypeStruct` tree of the model's parameters (no memory allocated)."""
  model = build_model(model_cfg)
  x = jax.ShapeDtypeStruct((1, *model_cfg.input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
  return variables['params']


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def count_flops_and_params(model_cfg: ModelConfig):
  """Returns `(gflops, num_params)`: multiply-adds / 1e9 at batch 1, and the parameter count."""
  if model_cfg.name == 'bottleneck' and model_cfg.bottleneck.query_chunk:
    # Chunking is a lax.map loop, whose body XLA's cost analysis counts once: count unchunked.
    model_cfg = dataclasses.replace(model_cfg, bottleneck=dataclasses.replace(
        model_cfg.bottleneck, query_chunk=0))
  if model_cfg.scan_layers:  # A scan's body is counted once too: count the unrolled model.
    model_cfg = dataclasses.replace(model_cfg, scan_layers=False)
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
  from token_learner import bottleneck  # pylint: disable=g-import-not-at-top
  bn = model_cfg.bottleneck
  t, h, w, d = bottleneck.stage_grids(model_cfg)[-1]
  return '\n'.join([
      f'model: bottleneck X(2+1)D (stem {bn.stem_width}, widths {bn.widths}, depths {bn.depths}, '
      f'expansion {bn.expansion}, conv5 {bn.conv5_width}, head {bn.head_width})',
      f'module: {bn.module} in stages {bn.module_stages} (transformer {bn.transformer}, '
      f'{bn.num_tokens} tokens per frame); res5 grid {t}x{h}x{w}, d={d}',
      f'input: {model_cfg.input_shape}',
      f'gflops={gflops:.4f} params={params}  (2 x GMACs = {2 * gflops:.2f}, Table 11 units)'])


def main(argv):
  del argv
  # The boundary reads the dataset section too (TensorFlow); the library functions above do not.
  from token_learner.experiment import model_and_data  # pylint: disable=g-import-not-at-top
  model_cfg = model_and_data(_CONFIG.value)[0]
  print(summary(model_cfg))
  if _MODULE.value:  # Per-module cost of the §6 bottleneck (Tables 12, 13).
    from token_learner import bottleneck  # pylint: disable=g-import-not-at-top
    if model_cfg.name != 'bottleneck':
      raise ValueError("--module needs config.model.name='bottleneck'")
    names = None if _MODULE.value == 'all' else (
        [model_cfg.bottleneck.module] if _MODULE.value == 'config' else _MODULE.value.split(','))
    print(bottleneck.module_table(model_cfg.bottleneck, names, tuple(
        int(v) for v in _MODULE_SHAPE.value.split(',')), breakdown=_BREAKDOWN.value))
    if _TABLE11.value:
      print(bottleneck.network_table(model_cfg))


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
