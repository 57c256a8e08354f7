"""The encoder's layout as data: which layers run on what, and where the TokenLearner goes.

`plan(cfg)` turns a ModelConfig into a tuple of steps that `token_learner.vit.Encoder` executes in
order, between the position embedding and the final LayerNorm. It is a pure function of the
config, without Flax or JAX, so the placement of §3.1 / Fig. 3 can be read and tested on its own:

- `Blocks(start, stop, grid, scanned)`: encoder layers [start, stop), one after the other, on the
  current token set: the patch grid ('patches', possibly pooled) or the learned tokens of
  Fig. 3(a) ('tokens'). `scanned`: the whole run is one `nn.scan` (`config.model.scan_layers`,
  token_learner/layer_scan.py), the k-th scanned run named `encoderblock_scan_{k}`.
- `Learn(layer, num_tokens, version)`: Fig. 3(a), the TokenLearner (§2.1) before encoder layer
  `layer` (`layer` = num_layers: after the last one) replaces the patch grid by S (x T) tokens.
- `LearnAndFuse(layer, ...)`: Fig. 3(b) (§2.2, §3.1), encoder layer `layer` as TokenLearner ->
  block -> TokenFuser (or a §3.5.3 alternative) with the block's input grid as the residual.
- `Pool(layer, k)`: the spatial pooling baseline of §3.5.2 (Table 6), k x k average pooling of
  the token grid before encoder layer `layer`.

Every encoder layer belongs to exactly one step, in increasing order. For ViT-B/16 with 8 tokens
at layer 6 (§3.1 "after the 6th transformer among 12"): Blocks(0, 6, 'patches'), Learn(6),
Blocks(6, 12, 'tokens'); with the TokenFuser, Blocks(0, 6, 'patches') then LearnAndFuse(6) ..
LearnAndFuse(11). A CLS token (classifier='token') is not part of the plan: it rides in front of
whatever the steps see and the TokenLearners pool the patches behind it.

ModelConfig already rejects the combinations no plan exists for (scan_layers with fuser=True or
spatial_pooling, spatial_pooling with a TokenLearner or a CLS token, loc out of range); `plan`
raises the same errors itself, so it never lays out an unsupported config that reached it
unvalidated.
"""
import dataclasses
from typing import Tuple, Union

from token_learner.model_config import ModelConfig

PATCHES = 'patches'  # The (T x) H x W patch / tubelet grid, possibly spatially pooled.
TOKENS = 'tokens'  # The S (x T) tokens a Fig. 3(a) TokenLearner learned.
_TL = 'config.model.tokenlearner'


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Encoder layers [start, stop) on one token set; one `nn.scan` if `scanned`."""
  start: int
  stop: int
  grid: str = PATCHES  # PATCHES or TOKENS: what these layers attend over.
  scanned: bool = False

  @property
  def layers(self) -> range:
    return range(self.start, self.stop)


@dataclasses.dataclass(frozen=True)
class Learn:
  """Fig. 3(a): a TokenLearner (§2.1) before encoder layer `layer`; later layers see its tokens."""
  layer: int
  num_tokens: int
  version: str  # 'v1' or 'v1.1'

  @property
  def layers(self) -> range:
    return range(0)


@dataclasses.dataclass(frozen=True)
class LearnAndFuse:
  """Fig. 3(b): encoder layer `layer` as TokenLearner -> block -> fuser (TokenFuser, Eq. 2, or a
  §3.5.3 alternative); the grid is kept, the TokenLearner pools it afresh at every such layer."""
  layer: int
  num_tokens: int
  version: str
  fuser_type: str  # 'tokenfuser', 'unpool' or 'reprojection'
  fuser_mixing: str  # 'global' or 'per_frame'

  @property
  def layers(self) -> range:
    return range(self.layer, self.layer + 1)


@dataclasses.dataclass(frozen=True)
class Pool:
  """§3.5.2 baseline: k x k average pooling of the token grid before encoder layer `layer`."""
  layer: int
  k: int

  @property
  def layers(self) -> range:
    return range(0)


Step = Union[Blocks, Learn, LearnAndFuse, Pool]


def plan(cfg: ModelConfig) -> Tuple[Step, ...]:
  """The encoder of `cfg` as steps (module docstring), in execution order.

  Raises:
    ValueError: naming the fields, for a layout the encoder does not support (the same errors
      ModelConfig raises when it is built).
  """
  _check(cfg)
  tl, num_layers, scanned = cfg.tokenlearner, cfg.num_layers, cfg.scan_layers
  fig3b = cfg.uses_tokenlearner and tl.fuser
  # Steps that sit between two layers, keyed by the layer they precede; they cut the Blocks.
  cuts = [(layer, Pool(layer, k)) for layer, k in sorted(cfg.spatial_pooling)]
  if cfg.uses_tokenlearner and not tl.fuser:
    cuts.append((tl.loc, Learn(tl.loc, tl.num_tokens, tl.version)))
  # Fig. 3(b): layers [loc, L) are LearnAndFuse; the plain Blocks stop at loc.
  blocks_stop = tl.loc if fig3b else num_layers
  steps, start, grid = [], 0, PATCHES
  for layer, step in cuts:
    if start < layer:
      steps.append(Blocks(start, layer, grid, scanned))
      start = layer
    steps.append(step)
    if isinstance(step, Learn):
      grid = TOKENS
  if start < blocks_stop:
    steps.append(Blocks(start, blocks_stop, grid, scanned))
  if fig3b:
    steps.extend(LearnAndFuse(layer, tl.num_tokens, tl.version, tl.fuser_type, tl.fuser_mixing)
                 for layer in range(tl.loc, num_layers))
  return tuple(steps)


def segments(steps) -> Tuple[Tuple[int, int], ...]:
  """`((start, stop), ...)` of the Blocks of a plan, in order; with scan_layers segment k is the
  scan `encoderblock_scan_{k}` (token_learner/layer_scan.py)."""
  return tuple((s.start, s.stop) for s in steps if isinstance(s, Blocks))


def _check(cfg: ModelConfig):
  """The layouts `plan` has no steps for, with ModelConfig's messages."""
  tl, num_layers = cfg.tokenlearner, cfg.num_layers
  if cfg.name == 'bottleneck':
    raise ValueError("config.model.name='bottleneck' has no ViT encoder to plan")
  if cfg.scan_layers and cfg.uses_tokenlearner and tl.fuser:
    raise ValueError(f'config.model.scan_layers=True does not support {_TL}.fuser=True (each '
                     'layer after loc has its own TokenLearner and fuser); use '
                     'scan_layers=False')
  if cfg.scan_layers and cfg.spatial_pooling:
    raise ValueError('config.model.scan_layers=True does not support '
                     'config.model.spatial_pooling (the pools change the token grid between '
                     'layers); use scan_layers=False')
  if cfg.uses_tokenlearner:
    if not 0 <= tl.loc <= num_layers:
      raise ValueError(f'{_TL}.loc={tl.loc!r} must be in [0, num_layers={num_layers}]')
    if tl.fuser and tl.loc == num_layers:
      raise ValueError(f'{_TL}.fuser=True with {_TL}.loc={tl.loc} == num_layers: no layer would '
                       'run TokenLearner -> block -> fuser; use loc < num_layers')
  if cfg.spatial_pooling and (cfg.uses_tokenlearner or cfg.classifier == 'token'):
    raise ValueError('config.model.spatial_pooling needs num_tokens=0 and classifier=gap')
  for layer, k in cfg.spatial_pooling:
    if not 0 <= layer <= num_layers or k < 1:
      raise ValueError(f'config.model.spatial_pooling entry {(layer, k)} needs 0 <= layer <= '
                       f'{num_layers} and k >= 1')
