"""Model construction from a validated `ModelConfig`: a plain dict, no registry side effects."""
from token_learner.bottleneck import XBottleneck
from token_learner.model_config import ModelConfig
from token_learner.vit import ViT
from token_learner.vivit import ViViT

MODELS = {'vit': ViT, 'vivit': ViViT, 'bottleneck': XBottleneck}


def build_model(config: ModelConfig):
  """Returns the Flax module for `config`: `experiment.from_config(ml_config).model`, or
  `ModelConfig.from_dict(section, image_size=..., num_frames=...)`.

  Call it as `model.apply({'params': p}, x, train=..., rngs={'dropout': key})`, with x
  `[B, H, W, 3]` (vit) or `[B, T, H, W, 3]` (vivit, bottleneck); it returns `(logits, aux)`.
  """
  if not isinstance(config, ModelConfig):
    raise TypeError('build_model takes a ModelConfig; use '
                    'token_learner.experiment.from_config(config).model')
  return MODELS[config.name](config)
