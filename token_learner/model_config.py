"""Typed, validated model description: the one boundary between ConfigDicts and the models.

`ModelConfig.from_config(config)` reads `config.model` (and the input geometry from
`config.dataset`), checks every field and raises a `ValueError` naming the field and its allowed
values before anything is traced or compiled. Below this boundary code never sees a ConfigDict.
"""
import dataclasses
from typing import Optional, Tuple

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


def _choice(field, value, allowed):
  if value not in allowed:
    raise ValueError(f'{field}={value!r} is not one of {list(allowed)}')


def _nonneg(field, value, allow_zero=True):
  if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
    raise ValueError(f'{field}={value!r} must be an integer >= {0 if allow_zero else 1}')


def _rate(field, value):
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f'{field}={value!r} must be in [0, 1)')


@dataclasses.dataclass(frozen=True)
class TokenLearnerConfig:
  """`config.model.tokenlearner` (see configs/common.py for each field's meaning)."""
  num_tokens: int = 8
  loc: int = 6
  version: str = 'v1'
  fuser: bool = False
  fuser_type: str = 'tokenfuser'
  fuser_mixing: str = 'global'
  fuser_mlp_dim: int = 64
  pooling: str = 'sum'
  bottleneck_dim: int = 64
  dropout_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything a ViT / ViViT (+ TokenLearner) needs; built by `from_config`."""
  name: str
  variant: str
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  num_classes: int
  classifier: str = 'gap'
  representation_size: Optional[int] = None
  head_bias_init: float = 0.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  tubelet_size: int = 1
  dtype: str = 'float32'
  spatial_pooling: Tuple[Tuple[int, int], ...] = ()
  tokenlearner: TokenLearnerConfig = TokenLearnerConfig(num_tokens=0)
  # Input geometry, from config.dataset (used for validation and FLOPs).
  image_size: Tuple[int, int] = (224, 224)
  num_frames: int = 1

  @property
  def is_video(self):
    return self.name == 'vivit'

  @property
  def uses_tokenlearner(self):
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

  @classmethod
  def from_config(cls, config):
    """Validates `config.model` / `config.dataset` and returns a ModelConfig.

    Raises:
      ValueError: naming the offending field and the allowed values.
    """
    m = config.model
    _choice('config.model.name', m.name, MODELS)
    _choice('config.model.variant', m.variant, VARIANTS)
    size, patch = m.variant.split('/')
    hidden, depth, heads, mlp = _SIZES[size]
    num_layers = depth if m.get('num_layers') is None else m.num_layers
    _nonneg('config.model.num_layers', num_layers, allow_zero=False)
    _nonneg('config.model.num_classes', m.num_classes, allow_zero=False)
    _choice('config.model.classifier', m.classifier, CLASSIFIERS)
    _choice('config.model.dtype', m.dtype, DTYPES)
    for rate in ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth'):
      _rate(f'config.model.{rate}', m[rate])
    if m.get('representation_size') is not None:
      _nonneg('config.model.representation_size', m.representation_size, allow_zero=False)

    t = m.tokenlearner
    _nonneg('config.model.tokenlearner.num_tokens', t.num_tokens)
    tl = TokenLearnerConfig(**t.to_dict())
    if tl.num_tokens > 0:
      _choice('config.model.tokenlearner.version', tl.version, VERSIONS)
      _choice('config.model.tokenlearner.fuser_type', tl.fuser_type, FUSER_TYPES)
      _choice('config.model.tokenlearner.fuser_mixing', tl.fuser_mixing, FUSER_MIXINGS)
      _choice('config.model.tokenlearner.pooling', tl.pooling, POOLINGS)
      _nonneg('config.model.tokenlearner.bottleneck_dim', tl.bottleneck_dim, allow_zero=False)
      _nonneg('config.model.tokenlearner.fuser_mlp_dim', tl.fuser_mlp_dim, allow_zero=False)
      _rate('config.model.tokenlearner.dropout_rate', tl.dropout_rate)
      if not isinstance(tl.loc, int) or not 0 <= tl.loc <= num_layers:
        raise ValueError(f'config.model.tokenlearner.loc={tl.loc!r} must be in '
                         f'[0, num_layers={num_layers}]')
      if m.classifier == 'token':
        raise ValueError("config.model.classifier='token' cannot be used with a TokenLearner "
                         "(config.model.tokenlearner.num_tokens > 0); use 'gap'")
    elif tl.fuser:
      raise ValueError('config.model.tokenlearner.fuser=True needs a TokenLearner: set '
                       'config.model.tokenlearner.num_tokens > 0')

    pooling = tuple(tuple(p) for p in (m.get('spatial_pooling') or ()))
    for layer, k in pooling:
      if not 0 <= layer <= num_layers or k < 1:
        raise ValueError(f'config.model.spatial_pooling entry {(layer, k)} needs 0 <= layer <= '
                         f'{num_layers} and k >= 1')
    if pooling and (tl.num_tokens > 0 or m.classifier == 'token'):
      raise ValueError('config.model.spatial_pooling needs num_tokens=0 and classifier=gap')

    d = config.dataset
    image_size = d.image_size
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    for s in image_size:
      if s % int(patch):
        raise ValueError(f'config.dataset.image_size={d.image_size} is not divisible by the '
                         f'patch size {patch} of config.model.variant={m.variant!r}')
    num_frames, tubelet = 1, 1
    if m.name == 'vivit':
      num_frames, tubelet = d.num_frames, m.tubelet_size
      _nonneg('config.dataset.num_frames', num_frames, allow_zero=False)
      _nonneg('config.model.tubelet_size', tubelet, allow_zero=False)
      if num_frames % tubelet:
        raise ValueError(f'config.dataset.num_frames={num_frames} is not divisible by '
                         f'config.model.tubelet_size={tubelet}')
    cfg = cls(name=m.name, variant=m.variant, hidden_size=hidden, num_layers=num_layers,
              num_heads=heads, mlp_dim=mlp, patch_size=int(patch), num_classes=m.num_classes,
              classifier=m.classifier, representation_size=m.get('representation_size'),
              head_bias_init=float(m.head_bias_init), dropout_rate=float(m.dropout_rate),
              attention_dropout_rate=float(m.attention_dropout_rate),
              stochastic_depth=float(m.stochastic_depth), tubelet_size=tubelet, dtype=m.dtype,
              spatial_pooling=pooling, tokenlearner=tl, image_size=image_size,
              num_frames=num_frames)
    _, gh, gw = cfg.grid_shape
    for layer, k in pooling:
      gh, gw = (gh // k, gw // k) if (gh % k == 0 and gw % k == 0) else (None, None)
      if gh is None:
        raise ValueError(f'config.model.spatial_pooling: a {k}x{k} pool at layer {layer} does '
                         'not divide the token grid')
    return cfg
