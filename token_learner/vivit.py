"""ViViT (§5.1): tubelet embedding and joint space-time attention, with TokenLearner per frame.

A t x p x p tubelet embedding (a 3D convolution, stride = kernel) turns `[B, T, H, W, 3]` into
T/t x H/p x W/p tokens, all attended to jointly (ViViT's unfactorised model). A TokenLearner then
learns S tokens for each of the T/t temporal slices (S*T/t in all) and a TokenFuser maps them back
per slice, exactly as in the image model (`token_learner.vit.Encoder`).
"""
import flax.linen as nn
import jax.numpy as jnp

from token_learner.model_config import ModelConfig
from token_learner.vit import encode_and_classify


class ViViT(nn.Module):
  """Video Vision Transformer + TokenLearner for clips `[B, T, H, W, 3]`; returns `(logits, aux)`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, video, *, train: bool):
    cfg, p, t = self.config, self.config.patch_size, self.config.tubelet_size
    x = nn.Conv(cfg.hidden_size, (t, p, p), strides=(t, p, p), padding='VALID',
                dtype=jnp.dtype(cfg.dtype), name='embedding')(video)
    b, gt, gh, gw, c = x.shape
    return encode_and_classify(self, x.reshape(b, gt * gh * gw, c), (gt, gh, gw), train=train)
