"""`config.model` as a typed, validated, frozen dataclass: what a ViT / ViViT (+ TokenLearner)
needs.

`ModelConfig.from_dict(section, image_size=..., num_frames=...)` takes the model section as a
plain dict (the boundary, `token_learner.experiment`, passes the input geometry from the dataset
section), rejects unknown keys and checks every field, raising a `ValueError` that names the field
and its allowed values before anything is traced. The field defaults here are the project's only
model defaults; `configs/common.py` builds its `config.model` sections from them.
"""
import dataclasses
from typing import Optional, Tuple

from token_learner import fields

# ViT sizes (Dosovitskiy et al. 2021, Table 1): width, depth, heads, MLP size. Patch from the name.
_SIZES = {
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
    'H': (1280, 32, 16, 5120),
    'Mu': (64, 4, 4, 128),  # Not in the paper: a micro model for small offline data and tests.
}
VARIANTS = ('Ti/16', 'S/32', 'S/16', 'B/32', 'B/16', 'L/16', 'L/14', 'L/10', 'L/8', 'H/14',
            'Ti/4', 'Mu/4', 'Mu/2')
MODELS = ('vit', 'vivit')
VERSIONS = ('v1', 'v1.1')
CLASSIFIERS = ('gap', 'token')
FUSER_TYPES = ('tokenfuser', 'unpool', 'reprojection')
FUSER_MIXINGS = ('global', 'per_frame')
POOLINGS = ('sum', 'mean')
DTYPES = ('float32', 'bfloat16', 'float16')
_TL = 'config.model.tokenlearner'


@dataclasses.dataclass(frozen=True)
class TokenLearnerConfig:
  """`config.model.tokenlearner`: the TokenLearner (§2.1) and its placement (§3.1, Fig. 3)."""
  num_tokens: int = 8  # S, tokens per frame; 0 = no TokenLearner.
  loc: int = 6  # The TokenLearner runs before encoder layer `loc` ("16-TL at 12" -> loc=12).
  version: str = 'v1'  # 'v1' (conv alpha, sigmoid) or 'v1.1' (MLP alpha, softmax over space).
  fuser: bool = False  # False = Fig. 3(a); True = Fig. 3(b), TokenLearner -> block -> fuser.
  # What maps tokens back to the grid when fuser=True (§3.5.3, Fig. 7): 'tokenfuser' (Eq. 2),
  # 'unpool' (the TokenLearner's own maps), 'reprojection'.
  fuser_type: str = 'tokenfuser'
  fuser_mixing: str = 'global'  # token mixing R^{ST}->R^{ST}; 'per_frame': S x S per frame.
  fuser_mlp_dim: int = 64  # hidden width of the fuser's beta MLP (Eq. 2).
  pooling: str = 'sum'  # rho of Eq. 1 for the tokens: 'sum' or 'mean' over positions.
  bottleneck_dim: int = 64  # v1.1 alpha MLP hidden width.
  dropout_rate: float = 0.0  # v1.1 alpha MLP and fuser dropout.

  def __post_init__(self):
    fields.check_int(f'{_TL}.num_tokens', self.num_tokens)
    if self.num_tokens == 0:
      if self.fuser:
        raise ValueError(f'{_TL}.fuser=True needs a TokenLearner: set {_TL}.num_tokens > 0')
      return
    fields.check_choice(f'{_TL}.version', self.version, VERSIONS)
    fields.check_choice(f'{_TL}.fuser_type', self.fuser_type, FUSER_TYPES)
    fields.check_choice(f'{_TL}.fuser_mixing', self.fuser_mixing, FUSER_MIXINGS)
    fields.check_choice(f'{_TL}.pooling', self.pooling, POOLINGS)
    fields.check_int(f'{_TL}.bottleneck_dim', self.bottleneck_dim, 1)
    fields.check_int(f'{_TL}.fuser_mlp_dim', self.fuser_mlp_dim, 1)
    fields.check_number(f'{_TL}.dropout_rate', self.dropout_rate, 0.0, 1.0, below_max=True)
    fields.check_int(f'{_TL}.loc', self.loc)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`, plus the input geometry of `config.dataset` (set by the boundary)."""
  name: str = 'vit'  # 'vit' (images, [B, H, W, 3]) or 'vivit' (video, [B, T, H, W, 3]).
  variant: str = 'B/16'  # ViT size/patch (VARIANTS).
  num_classes: int = 1000  # size of the classification head.
  num_layers: Optional[int] = None  # None: the variant's depth.
  classifier: str = 'gap'  # 'gap' or 'token' (CLS; plain ViT / ViViT only).
  representation_size: Optional[int] = None  # pre-logits width; None: no pre-logits.
  head_bias_init: float = 0.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0  # drop-path rate of the last layer, linear in depth from 0.
  tubelet_size: int = 2  # temporal extent t of a ViViT tubelet (t x p x p); unused by 'vit'.
  dtype: str = 'float32'  # compute dtype ('bfloat16' for mixed precision); params stay float32.
  # Baseline of §3.5.2 / Table 6: k x k average pooling of the token grid before given layers,
  # as (layer, k) pairs, e.g. ((9, 2), (18, 2)). Not combinable with a TokenLearner.
  spatial_pooling: Tuple[Tuple[int, int], ...] = ()
  tokenlearner: TokenLearnerConfig = TokenLearnerConfig()
  # Input geometry, from config.dataset (validation, input shape, FLOPs).
  image_size: Tuple[int, int] = fields.derived((224, 224))
  num_frames: int = fields.derived(1)

  @classmethod
  def from_dict(cls, section, *, image_size=(224, 224), num_frames: int = 1) -> 'ModelConfig':
    """The model section (a dict) -> ModelConfig; unknown keys and bad values are ValueErrors."""
    section = dict(section or {})
    tl = fields.from_dict(TokenLearnerConfig, section.pop('tokenlearner', {}), _TL)
    return fields.from_dict(cls, section, 'config.model', tokenlearner=tl,
                            image_size=image_size, num_frames=num_frames)

  def __post_init__(self):
    fields.check_choice('config.model.name', self.name, MODELS)
    fields.check_choice('config.model.variant', self.variant, VARIANTS)
    if isinstance(self.tokenlearner, dict):
      fields.set_field(self, 'tokenlearner',
                       fields.from_dict(TokenLearnerConfig, self.tokenlearner, _TL))
    if self.num_layers is None:
      fields.set_field(self, 'num_layers', _SIZES[self.variant.split('/')[0]][1])
    fields.check_int('config.model.num_layers', self.num_layers, 1)
    fields.check_int('config.model.num_classes', self.num_classes, 1)
    fields.check_choice('config.model.classifier', self.classifier, CLASSIFIERS)
    fields.check_choice('config.model.dtype', self.dtype, DTYPES)
    for rate in ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth'):
      fields.check_number(f'config.model.{rate}', getattr(self, rate), 0.0, 1.0, below_max=True)
    fields.check_number('config.model.head_bias_init', self.head_bias_init, -float('inf'))
    if self.representation_size is not None:
      fields.check_int('config.model.representation_size', self.representation_size, 1)
    fields.check_int('config.model.tubelet_size', self.tubelet_size, 1)
    self._check_tokenlearner()
    self._check_geometry()
    self._check_spatial_pooling()

  def _check_tokenlearner(self):
    tl = self.tokenlearner
    if not tl.num_tokens:
      return
    if not 0 <= tl.loc <= self.num_layers:
      raise ValueError(f'{_TL}.loc={tl.loc!r} must be in [0, num_layers={self.num_layers}]')
    if self.classifier == 'token':
      raise ValueError("config.model.classifier='token' cannot be used with a TokenLearner "
                       f"({_TL}.num_tokens > 0); use 'gap'")

  def _check_geometry(self):
    size = self.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    fields.set_field(self, 'image_size', size)
    for s in size:
      if s % self.patch_size:
        raise ValueError(f'config.dataset.image_size={size} is not divisible by the patch size '
                         f'{self.patch_size} of config.model.variant={self.variant!r}')
    if not self.is_video:
      fields.set_field(self, 'num_frames', 1)
      return
    fields.check_int('config.dataset.num_frames', self.num_frames, 1)
    if self.num_frames % self.tubelet_size:
      raise ValueError(f'config.dataset.num_frames={self.num_frames} is not divisible by '
                       f'config.model.tubelet_size={self.tubelet_size}')

  def _check_spatial_pooling(self):
    pooling = tuple(tuple(p) for p in (self.spatial_pooling or ()))
    fields.set_field(self, 'spatial_pooling', pooling)
    if not pooling:
      return
    if self.uses_tokenlearner or self.classifier == 'token':
      raise ValueError('config.model.spatial_pooling needs num_tokens=0 and classifier=gap')
    _, gh, gw = self.grid_shape
    for layer, k in pooling:
      if not 0 <= layer <= self.num_layers or k < 1:
        raise ValueError(f'config.model.spatial_pooling entry {(layer, k)} needs 0 <= layer <= '
                         f'{self.num_layers} and k >= 1')
      if gh % k or gw % k:
        raise ValueError(f'config.model.spatial_pooling: a {k}x{k} pool at layer {layer} does '
                         'not divide the token grid')
      gh, gw = gh // k, gw // k

  @property
  def hidden_size(self) -> int:
    return _SIZES[self.variant.split('/')[0]][0]

  @property
  def num_heads(self) -> int:
    return _SIZES[self.variant.split('/')[0]][2]

  @property
  def mlp_dim(self) -> int:
    return _SIZES[self.variant.split('/')[0]][3]

  @property
  def patch_size(self) -> int:
    return int(self.variant.split('/')[1])

  @property
  def is_video(self) -> bool:
    return self.name == 'vivit'

  @property
  def uses_tokenlearner(self) -> bool:
    return self.tokenlearner.num_tokens > 0

  @property
  def grid_shape(self):
    """(T', H', W') of the token grid after patch / tubelet embedding."""
    t = self.num_frames // self.tubelet_size if self.is_video else 1
    return (t, self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

  @property
  def input_shape(self):
    """Shape of one example: [H, W, 3] or [T, H, W, 3]."""
    hw = (*self.image_size, 3)
    return (self.num_frames, *hw) if self.is_video else hw
