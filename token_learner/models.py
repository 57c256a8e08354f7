"""Model construction from a validated `ModelConfig`: a plain dict, no registry side effects."""
from token_learner.bottleneck import XBottleneck
from token_learner.model_config import ModelConfig
from token_learner.vit import ViT
from token_learner.vivit import ViViT

MODELS = {'vit': ViT, 'vivit': ViViT, 'bottleneck': XBottleneck}


def build_model(config: ModelConfig):
  """Returns the Flax module for `config` (`ModelConfig.from_config(ml_config)`).

  Call it as `model.apply({'params': p}, x, train=..., rngs={'dropout': key})`, with x
  `[B, H, W, 3]` (vit) or `[B, T, H, W, 3]` (vivit); it returns `(logits, aux)`.
  """
  if not isinstance(config, ModelConfig):
    raise TypeError('build_model takes a ModelConfig; use ModelConfig.from_config(config)')
  return MODELS[config.name](config)
