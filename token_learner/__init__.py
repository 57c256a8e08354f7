"""TokenLearner (Ryoo et al.) in Flax: the modules of §2 and the ViT / ViViT models built on them.

    from token_learner import TokenLearner, TokenLearnerV11, TokenFuser

Beside the models: `experiment` (the config boundary), `data` (the input layer), `train` (what
the training loop of `trainer.py` calls), `pretrained` (public ViT and project checkpoints) and
`flops` (the paper's FLOPs convention). Flax NNX versions of the modules and models, with
linen <-> NNX parameter conversion: `token_learner.nnx`.
"""
from token_learner.model_config import ModelConfig
from token_learner.modules import TokenFuser, TokenLearner, TokenLearnerV11
from token_learner.models import build_model

__all__ = ['TokenLearner', 'TokenLearnerV11', 'TokenFuser', 'ModelConfig', 'build_model']
