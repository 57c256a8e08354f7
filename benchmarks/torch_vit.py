"""PyTorch ViT + TokenLearner v1 of the same architecture as `token_learner.vit.ViT`, for speed.py.

Benchmark-only (torch is in benchmarks/requirements.txt, never imported by the package or tests):
patch conv -> + position embedding -> pre-LN `nn.TransformerEncoderLayer`s (GELU MLP, no dropout)
with one TokenLearner v1 (LayerNorm -> 3x3 convs to S channels with GELU between, no biases ->
sigmoid maps -> sum pooling, Eq. 1) before layer `loc` -> LayerNorm -> mean over tokens -> head.
The blocks use PyTorch's native `nn.TransformerEncoderLayer`, whose inference fast path is what
PyTorch users get; its GELU is the exact (erf) one where the JAX model uses the tanh form.
"""
import torch
from torch import nn


class TokenLearner(nn.Module):
  """`[B, N, C]` on an h x w grid -> `[B, S, C]`: sigmoid conv maps, sum-pooled tokens."""

  def __init__(self, dim, num_tokens, grid, num_conv_layers=4):
    super().__init__()
    self.grid = grid
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    convs = []
    for i in range(num_conv_layers):
      convs.append(nn.Conv2d(dim if i == 0 else num_tokens, num_tokens, 3, padding=1, bias=False))
      if i < num_conv_layers - 1:
        convs.append(nn.GELU(approximate='tanh'))
    self.alpha = nn.Sequential(*convs)

  def forward(self, x):
    b, n, c = x.shape
    h, w = self.grid
    a = self.norm(x).transpose(1, 2).reshape(b, c, h, w)
    maps = torch.sigmoid(self.alpha(a)).flatten(2)  # [B, S, N]
    return torch.bmm(maps, x)


class ViT(nn.Module):
  """ViT (gap classifier) on `[B, 3, H, W]`; `num_tokens` > 0 adds a TokenLearner before `loc`."""

  def __init__(self, *, image_size=224, patch=16, dim=768, depth=12, heads=12, mlp_dim=3072,
               num_classes=1000, num_tokens=0, loc=6):
    super().__init__()
    grid = (image_size // patch, image_size // patch)
    self.embedding = nn.Conv2d(3, dim, patch, stride=patch)
    self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.02)
    self.blocks = nn.ModuleList([
        nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation='gelu',
                                   layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        for _ in range(depth)])
    self.loc = loc if num_tokens else None
    self.tokenlearner = TokenLearner(dim, num_tokens, grid) if num_tokens else None
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, images):
    x = self.embedding(images).flatten(2).transpose(1, 2) + self.pos
    for i, block in enumerate(self.blocks):
      if i == self.loc:
        x = self.tokenlearner(x)
      x = block(x)
    return self.head(self.norm(x).mean(dim=1))
