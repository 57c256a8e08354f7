"""`config.model` as a typed, validated, frozen dataclass: what a ViT / ViViT (+ TokenLearner)
needs.

`ModelConfig.from_dict(section, image_size=..., num_frames=...)` takes the model section as a
plain dict (the boundary, `token_learner.experiment`, passes the input geometry from the dataset
section), rejects unknown keys and checks every field, raising a `ValueError` that names the field
and its allowed values before anything is traced. The field defaults here are the project's only
model defaults; `configs/common.py` builds its `config.model` sections from them.
"""
import dataclasses
import math
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
# Names of registries that need jax (tests/test_config_registries.py holds them equal).
MODELS = ('vit', 'vivit', 'bottleneck')  # token_learner.models.MODELS
VERSIONS = ('v1', 'v1.1')
CLASSIFIERS = ('gap', 'token')
FUSER_TYPES = ('tokenfuser', 'unpool', 'reprojection')
FUSER_MIXINGS = ('global', 'per_frame')
POOLINGS = ('sum', 'mean')
MIXING_INITS = ('zeros', 'identity')  # token_learner.modules.MIXING_INITS
DTYPES = ('float32', 'bfloat16', 'float16')
# token_learner.attention.IMPLEMENTATIONS; None: 'einsum' (its name in configs stored before 'auto').
ATTENTION_IMPLEMENTATIONS = ('auto', 'einsum', 'xla', 'cudnn', 'pallas', None)
REMATS = ('none', 'full', 'dots')  # 'none' + token_learner.layer_scan.REMAT_POLICIES
_TL = 'config.model.tokenlearner'
field = fields.field


@dataclasses.dataclass(frozen=True)
class TokenLearnerConfig:
  """`config.model.tokenlearner`: the TokenLearner (§2.1) and its placement (§3.1, Fig. 3)."""
  num_tokens: int = 8  # S, tokens per frame; 0 = no TokenLearner.
  loc: int = 6  # The TokenLearner runs before encoder layer `loc` ("16-TL at 12" -> loc=12).
  # 'v1' (conv alpha, sigmoid) or 'v1.1' (MLP alpha, softmax over space).
  version: str = field('v1', choices=VERSIONS)
  fuser: bool = False  # False = Fig. 3(a); True = Fig. 3(b), TokenLearner -> block -> fuser.
  # What maps tokens back to the grid when fuser=True (§3.5.3, Fig. 7): 'tokenfuser' (Eq. 2),
  # 'unpool' (the TokenLearner's own maps), 'reprojection'.
  fuser_type: str = field('tokenfuser', choices=FUSER_TYPES)
  # token mixing R^{ST}->R^{ST}; 'per_frame': S x S per frame.
  fuser_mixing: str = field('global', choices=FUSER_MIXINGS)
  fuser_mlp_dim: int = field(64, minimum=1)  # hidden width of the fuser's beta MLP (Eq. 2).
  # The fuser's mixing matrix at init (modules.TokenFuser.mixing_init): 'zeros' (Scenic; the
  # tokens get no gradient at step 0) or 'identity' (gated, a gentler start).
  fuser_mixing_init: str = field('zeros', choices=MIXING_INITS)
  pooling: str = field('sum', choices=POOLINGS)  # rho of Eq. 1: 'sum' or 'mean' over positions.
  bottleneck_dim: int = field(64, minimum=1)  # v1.1 alpha MLP hidden width.
  dropout_rate: float = field(0.0, maximum=1.0, below_max=True)  # v1.1 alpha MLP, fuser.

  def __post_init__(self):
    fields.validate(self, _TL)
    if self.num_tokens == 0 and self.fuser:
      raise ValueError(f'{_TL}.fuser=True needs a TokenLearner: set {_TL}.num_tokens > 0')


# §6 bottleneck model: the module that replaces the residual modules' temporal conv in the last
# stage (Tables 12, 13 and §6.3.3), see token_learner/bottleneck.py.
BOTTLENECK_MODULES = (
    'conv2d_tokenlearner', 'tokenlearner', 'joint_mhsa', 'conv2d_joint_mhsa', 'conv2d_conv1d',
    'conv2d_mixer', 'conv2d_temporal', 'spatial_temporal', 'conv2d_spatial_temporal',
    'spatial_tokenlearner', 'conv2d_grid_tokens', 'conv2d_dense_tokens', 'conv2d_pool_mlp',
    'conv2d_vector', 'conv2d_prior_tokens')  # the last two: Table 14 rows
BOTTLENECK_TOKENIZERS = ('conv2d_tokenlearner', 'tokenlearner', 'spatial_tokenlearner',
                         'conv2d_grid_tokens', 'conv2d_dense_tokens', 'conv2d_pool_mlp',
                         'conv2d_prior_tokens')
BOTTLENECK_FUSERS = ('tokenfuser', 'broadcast')  # how the tokens go back (Table 14)
BOTTLENECK_TRANSFORMERS = ('vector', 'mhsa')
_BN = 'config.model.bottleneck'


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
  """`config.model.bottleneck` (name='bottleneck'): X(2+1)D-M and its last-stage module (§6.1).

  Defaults are X3D-M (Feichtenhofer 2020, Table 1): stem 24, res2..res5 widths 24/48/96/192,
  depths 3/5/11/7, inner width = round(2.25 x width) (54/108/216/432), conv5 432, head 2048.
  """
  stem_width: int = field(24, minimum=1)
  widths: Tuple[int, int, int, int] = field((24, 48, 96, 192), minimum=1)  # res2..res5 channels
  depths: Tuple[int, int, int, int] = field((3, 5, 11, 7), minimum=1)  # modules per stage
  expansion: float = field(2.25, above_min=True)  # inner width d = round(expansion * width)
  conv5_width: int = field(432, minimum=1)  # 1x1x1 conv after res5
  head_width: int = field(2048, minimum=1)  # fc1 after global pooling (no normalisation, X3D)
  strides: Tuple[int, int, int, int, int] = field((2, 2, 2, 2, 2), minimum=1)  # stem, res2..5
  temporal_kernel: int = field(3, minimum=1)  # the 1D temporal conv of each (2+1)D pair
  stem_temporal_kernel: int = 5  # X3D's 5x1x1 channel-wise stem conv
  # GroupNorm groups: gcd(channels, norm_groups) per layer; 0: LayerNorm over each position's
  # channels (no statistics over space-time: better for small sparse inputs, moving_digits).
  norm_groups: int = 8
  module: str = field('conv2d_tokenlearner', choices=BOTTLENECK_MODULES)  # replaces the pair
  module_stages: Tuple[int, ...] = field((3,), choices=(0, 1, 2, 3))  # 0 = res2 .. 3 = res5
  num_tokens: int = field(8, minimum=1)  # S tokens per frame (TokenLearner, §6.3.3 tokenizers)
  tl_conv_layers: int = field(1, minimum=1)  # convs in the TokenLearner's alpha (1 conv2d, §6.1)
  # 'vector' (Appendix A, Eq. 3) or 'mhsa' (Table 14)
  transformer: str = field('vector', choices=BOTTLENECK_TRANSFORMERS)
  # MHSA heads (joint / spatial / temporal modules, transformer='mhsa')
  num_heads: int = field(8, minimum=1)
  query_chunk: int = 0  # Vector Transformer: queries per chunk (0 = all at once)
  # Tokenizer modules: 'tokenfuser' (Eq. 2) or 'broadcast' (x + each frame's mean token, Table 14)
  fuser: str = field('tokenfuser', choices=BOTTLENECK_FUSERS)
  fuser_mlp_dim: int = field(64, minimum=1)  # TokenFuser beta MLP width
  # TokenFuser start (token_learner.modules.TokenFuser): 'zeros' (Scenic: M = 0; one step makes
  # the fuser's output as large as its residual) or 'identity' (M = I behind a zero gate).
  fuser_mixing_init: str = field('zeros', choices=MIXING_INITS)
  mixer_dim: int = 0  # MLP-Mixer channel MLP width (0 = the inner width d)
  mhsa_dim: int = 0  # qkv width of the MHSA layers (0 = the inner width d)
  head_dropout: float = field(0.5, maximum=1.0, below_max=True)  # before the classifier (X3D)

  def __post_init__(self):
    fields.validate(self, _BN)
    uses_mhsa = any(k in self.module for k in ('mhsa', 'spatial', 'temporal')) or (
        self.module in BOTTLENECK_TOKENIZERS and self.transformer == 'mhsa')
    if self.fuser != 'tokenfuser' and self.module not in BOTTLENECK_TOKENIZERS:
      raise ValueError(f'{_BN}.fuser={self.fuser!r} needs a module with tokens (one of '
                       f'{list(BOTTLENECK_TOKENIZERS)}), got module={self.module!r}')
    for s in self.module_stages:
      d = self.mhsa_dim or self.inner_width(s)
      if uses_mhsa and d % self.num_heads:
        raise ValueError(f'{_BN}: the inner width {d} of stage {s} is not divisible by '
                         f'num_heads={self.num_heads}')

  def inner_width(self, stage: int) -> int:
    return int(round(self.expansion * self.widths[stage]))

  @property
  def has_tokenlearner(self) -> bool:
    """Some stage runs a TokenLearner module (whose maps the model returns)."""
    return 'tokenlearner' in self.module and bool(self.module_stages)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`, plus the input geometry of `config.dataset` (set by the boundary)."""
  # 'vit' (images, [B, H, W, 3]), 'vivit' (video, [B, T, H, W, 3]) or 'bottleneck' (§6).
  name: str = field('vit', choices=MODELS)
  variant: str = 'B/16'  # ViT size/patch (VARIANTS; not used by name='bottleneck').
  # Size of the classification head: the one owner of the class count (the data and trainer
  # sections receive it; the trainer checks it against the dataset's).
  num_classes: int = field(1000, minimum=1)
  num_layers: Optional[int] = field(None, minimum=1)  # None: the variant's depth.
  # 'gap' or 'token' (CLS, carried past a TokenLearner; not with pooling).
  classifier: str = field('gap', choices=CLASSIFIERS)
  representation_size: Optional[int] = field(None, minimum=1)  # pre-logits width; None: none.
  head_bias_init: float = field(0.0, minimum=-math.inf)
  dropout_rate: float = field(0.0, maximum=1.0, below_max=True)
  attention_dropout_rate: float = field(0.0, maximum=1.0, below_max=True)
  # drop-path rate of the last layer, linear in depth from 0.
  stochastic_depth: float = field(0.0, maximum=1.0, below_max=True)
  tubelet_size: int = field(2, minimum=1)  # temporal extent t of a ViViT tubelet (t x p x p).
  # Compute dtype of the activations ('bfloat16': the paper configs); parameters, optimizer
  # state, logits, attention softmax statistics and losses stay float32 whatever it is.
  dtype: str = field('float32', choices=DTYPES)
  # Attention of the encoder blocks (token_learner.attention.attention): 'auto' picks per backend
  # (attention.resolve_attention: cuDNN flash on GPU in half precision, the Pallas flash kernel on TPU
  # for >= 1024 tokens, 'xla' / 'einsum' on CPU); 'einsum' (None: the same) = two einsums, the
  # only one with attention dropout; 'xla' / 'cudnn' = jax.nn.dot_product_attention ('cudnn':
  # GPU, bfloat16/float16); 'pallas' = TPU flash kernel. q/k/v stay in `dtype`, logits and
  # softmax statistics are float32 in all of them; the parameters are the same.
  attention_implementation: Optional[str] = field('auto', choices=ATTENTION_IMPLEMENTATIONS)
  fused_qkv: bool = False  # q, k, v as one [C, 3C] matmul (same parameters, concatenated).
  # Encoder blocks under nn.scan, one scan per segment of layers between TokenLearners: fast
  # compiles of deep models; parameters stacked as Transformer/encoderblock_scan_{k} (layer axis
  # first, token_learner/layer_scan.py). Not with fuser=True or spatial_pooling.
  scan_layers: bool = False
  remat: str = field('none', choices=REMATS)  # of each encoder block: 'none', 'full', 'dots'.
  # Baseline of §3.5.2 / Table 6: k x k average pooling of the token grid before given layers,
  # as (layer, k) pairs, e.g. ((9, 2), (18, 2)). Not combinable with a TokenLearner.
  spatial_pooling: Tuple[Tuple[int, int], ...] = field((), custom=True)
  tokenlearner: TokenLearnerConfig = TokenLearnerConfig()
  # name='bottleneck' only (§6): X(2+1)D-M + TokenLearner bottleneck, see BottleneckConfig.
  bottleneck: BottleneckConfig = BottleneckConfig()
  # Input geometry, from config.dataset (validation, input shape, FLOPs).
  image_size: Tuple[int, int] = fields.derived((224, 224))
  num_frames: int = fields.derived(1)

  @classmethod
  def from_dict(cls, section, *, image_size=(224, 224), num_frames: int = 1) -> 'ModelConfig':
    """The model section (a dict) -> ModelConfig; unknown keys and bad values are ValueErrors."""
    section = dict(section or {})
    tl = fields.from_dict(TokenLearnerConfig, section.pop('tokenlearner', {}), _TL)
    bn = fields.from_dict(BottleneckConfig, section.pop('bottleneck', {}), _BN)
    return fields.from_dict(cls, section, 'config.model', tokenlearner=tl, bottleneck=bn,
                            image_size=image_size, num_frames=num_frames)

  def __post_init__(self):
    if isinstance(self.tokenlearner, dict):
      fields.set_field(self, 'tokenlearner',
                       fields.from_dict(TokenLearnerConfig, self.tokenlearner, _TL))
    if isinstance(self.bottleneck, dict):
      fields.set_field(self, 'bottleneck', fields.from_dict(BottleneckConfig, self.bottleneck, _BN))
    fields.validate(self, 'config.model')
    if self.name != 'bottleneck':  # The bottleneck model has no ViT variant.
      fields.check_choice('config.model.variant', self.variant, VARIANTS)
    if self.num_layers is None:
      fields.set_field(self, 'num_layers', sum(self.bottleneck.depths) if self.name ==
                       'bottleneck' else _SIZES[self.variant.split('/')[0]][1])
    self._check_attention()
    self._check_layer_scan()
    if self.name == 'bottleneck':  # config.model.tokenlearner is not used by this model.
      self._check_bottleneck_geometry()
      return
    self._check_geometry()
    self._check_tokenlearner()
    self._check_spatial_pooling()

  def _check_layer_scan(self):
    if self.name == 'bottleneck' and (self.scan_layers or self.remat != 'none'):
      raise ValueError("config.model.scan_layers and config.model.remat apply to the ViT / ViViT "
                       "encoder, not to name='bottleneck'; leave them False and 'none'")
    if not self.scan_layers:
      return
    if self.uses_tokenlearner and self.tokenlearner.fuser:
      raise ValueError(f'config.model.scan_layers=True does not support {_TL}.fuser=True (each '
                       'layer after loc has its own TokenLearner and fuser); use '
                       'scan_layers=False')
    if self.spatial_pooling:
      raise ValueError('config.model.scan_layers=True does not support '
                       'config.model.spatial_pooling (the pools change the token grid between '
                       'layers); use scan_layers=False')

  def _check_bottleneck_geometry(self):
    size = self.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    fields.set_field(self, 'image_size', size)
    fields.check_int('config.dataset.num_frames', self.num_frames, 1)
    bn = self.bottleneck
    if self.classifier != 'gap' or self.spatial_pooling:
      raise ValueError("config.model.name='bottleneck' needs classifier='gap' and no "
                       'spatial_pooling')
    stride = 1
    for s in bn.strides:
      stride *= s
    if min(size) < stride:
      raise ValueError(f'config.dataset.image_size={size} is smaller than the total spatial '
                       f'stride {stride} of {_BN}.strides={bn.strides}')

  def _check_attention(self):
    where = 'config.model.attention_implementation'
    impl = self.attention_implementation
    if impl not in (None, 'einsum', 'auto') and self.attention_dropout_rate > 0:
      raise ValueError(f"{where}={impl!r} has no attention dropout: use 'auto' or 'einsum' with "
                       f'config.model.attention_dropout_rate={self.attention_dropout_rate}')
    if impl == 'cudnn' and self.dtype == 'float32':
      raise ValueError(f"{where}='cudnn' needs config.model.dtype 'bfloat16' or 'float16', got "
                       "'float32'")

  def _check_tokenlearner(self):
    tl = self.tokenlearner
    if not tl.num_tokens:
      return
    if not 0 <= tl.loc <= self.num_layers:
      raise ValueError(f'{_TL}.loc={tl.loc!r} must be in [0, num_layers={self.num_layers}]')
    if tl.fuser and tl.loc == self.num_layers:
      raise ValueError(f'{_TL}.fuser=True with {_TL}.loc={tl.loc} == num_layers: no layer would '
                       'run TokenLearner -> block -> fuser; use loc < num_layers')
    _, gh, gw = self.grid_shape
    if tl.num_tokens > gh * gw:
      raise ValueError(f'{_TL}.num_tokens={tl.num_tokens} exceeds the {gh}x{gw} = {gh * gw} '
                       'positions per frame it pools')

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
    where = 'config.model.spatial_pooling'
    pooling = []
    for entry in self.spatial_pooling or ():
      if not isinstance(entry, (tuple, list)) or len(entry) != 2:
        raise ValueError(f'{where} entry {entry!r} must be a (layer, k) pair')
      fields.check_int(f'{where} layer of {tuple(entry)}', entry[0])
      fields.check_int(f'{where} k of {tuple(entry)}', entry[1], 1)
      pooling.append(tuple(entry))
    layers = [layer for layer, _ in pooling]
    if len(set(layers)) != len(layers):
      raise ValueError(f'{where}={tuple(pooling)} names a layer twice')
    pooling = tuple(sorted(pooling))
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
    return self.name in ('vivit', 'bottleneck')

  @property
  def uses_tokenlearner(self) -> bool:
    """The ViT / ViViT encoder has a TokenLearner (`config.model.tokenlearner`). False for
    name='bottleneck', which ignores that section (see `has_attention_maps`)."""
    return self.name != 'bottleneck' and self.tokenlearner.num_tokens > 0

  @property
  def has_attention_maps(self) -> bool:
    """The model returns TokenLearner maps in `aux['attention_maps']`: the ViT / ViViT with a
    TokenLearner, the bottleneck model with a TokenLearner module (`bottleneck.module`)."""
    if self.name == 'bottleneck':
      return self.bottleneck.has_tokenlearner
    return self.uses_tokenlearner

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
