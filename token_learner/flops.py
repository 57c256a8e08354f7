"""FLOPs and parameters of a configured model, in the paper's convention.

    python -m token_learner.flops --config=configs/imagenet_tokenlearner.py \
        --config.model.tokenlearner.num_tokens=16

GFLOPs are multiply-adds of one forward pass at batch 1 (XLA's `cost_analysis()` flops / 2), one
view for video (Tables 1-8). Nothing is allocated: parameters come from `jax.eval_shape` and the
forward pass is only lowered, so the largest models cost seconds.
"""
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


def main(argv):
  del argv
  # The boundary reads the dataset section too (TensorFlow); the library functions above do not.
  from token_learner.experiment import model_and_data  # pylint: disable=g-import-not-at-top
  print(summary(model_and_data(_CONFIG.value)[0]))


if __name__ == '__main__':
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  app.run(main)
