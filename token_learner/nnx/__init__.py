"""TokenLearner for Flax NNX: the modules of §2, the ViT / ViViT models, linen <-> NNX parameters.

    from flax import nnx
    from token_learner.nnx import TokenLearner, TokenLearnerV11, TokenFuser

    learner = TokenLearner(in_features=C, num_tokens=8, rngs=nnx.Rngs(0))
    tokens, maps = learner(x)                       # x [B, H, W, C] -> [B, 8, C], [B, 8, H, W]

Same math, inputs, outputs and attention maps as the linen modules (`token_learner.modules`);
attributes carry the linen parameter names, so `to_linen_params` / `from_linen_params` convert
parameters both ways. `ViT` is the NNX twin of the linen ViT / ViViT (same parameters -> same
logits); `insert_tokenlearner` adds a TokenLearner to a (pretrained) NNX ViT.
"""
from token_learner.nnx.convert import from_linen_params, to_linen_params
from token_learner.nnx.modules import TokenFuser, TokenLearner, TokenLearnerV11
from token_learner.nnx.vit import ViT, insert_tokenlearner

__all__ = ['TokenLearner', 'TokenLearnerV11', 'TokenFuser', 'ViT', 'insert_tokenlearner',
           'to_linen_params', 'from_linen_params']
