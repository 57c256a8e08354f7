"""The trainer's fields of an experiment config as a typed, validated, frozen dataclass.

The top-level fields of a config (everything but the `model`, `dataset`, `init_from` and `evals`
sections) are `TrainConfig`'s; their defaults here are the only trainer defaults the project has
(`configs/common.py` builds its configs from them). Checks that need the run's devices or the
dataset size are in `for_run`, called once the mesh and the dataset are known.
"""
import dataclasses
import math
import re
from typing import Any, Optional, Tuple

from token_learner import fields

# Names of the registries that need jax (tests/test_config_registries.py holds them equal).
OPTIMIZERS = ('adamw', 'adam', 'momentum', 'sgd')  # token_learner.train.optim.OPTIMIZERS
LR_SCHEDULES = ('cosine', 'linear')  # token_learner.train.optim.DECAYS
LOSSES = ('softmax_xent', 'sigmoid_xent')  # token_learner.train.losses.LOSSES
MULTI_LABEL_LOSSES = ('sigmoid_xent',)
VIEW_AVERAGES = ('logits', 'probs')  # token_learner.train.losses.average_views
SHARDINGS = ('replicated', 'fsdp', 'tp', 'fsdp_tp')  # token_learner.train.sharding.RULE_SETS
MESH_AXES = ('data', 'model')
# Device mesh (data, model) sizes; -1: the rest. Also `sharding.create_mesh`'s default.
MESH_SHAPE = (-1, 1)
# The part of the mesh across TPU slices (multi-slice); also `sharding.create_mesh`'s default.
DCN_MESH_SHAPE = (-1, 1)
# JAX's persistent compilation cache (token_learner/train/compile_cache.py); '' turns it off.
COMPILATION_CACHE_DIR = '~/.cache/token_learner/jax_cache'
field = fields.field


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Validated trainer settings; `num_classes` comes from the model section."""
  # jax.random.key keeps 32 bits of a seed without x64: 2**32 + 5 would silently be seed 5.
  seed: int = field(0, maximum=2**32 - 1)
  batch_size: int = field(512, minimum=1)  # global, over all devices and processes
  eval_batch_size: int = field(512, minimum=1)  # global; config.evals.<name>.batch_size overrides
  num_train_steps: Optional[int] = field(None, minimum=1)  # None: from num_epochs, dataset size
  num_epochs: Optional[float] = field(None, above_min=True)
  optimizer: str = field('adamw', choices=OPTIMIZERS)
  momentum: float = field(0.9, maximum=1.0)  # of 'momentum'
  learning_rate: float = 1e-3
  lr_schedule: str = field('cosine', choices=LR_SCHEDULES)  # decay after linear warmup
  warmup_steps: int = 0
  weight_decay: float = 0.0  # decoupled for adamw, L2 otherwise; see weight_decay_regex
  # Parameters (paths joined by '/') that weight decay applies to: kernels only (big_vision's
  # convention: no decay on biases, LayerNorm scales, position embeddings or the CLS token).
  weight_decay_regex: str = r'(^|/)kernel$'
  grad_clip_norm: float = 0.0  # 0: no clipping
  label_smoothing: float = field(0.0, maximum=1.0)
  mixup_alpha: float = 0.0  # 0: no mixup
  grad_accum_steps: int = field(1, minimum=1)
  loss: str = field('softmax_xent', choices=LOSSES)  # 'sigmoid_xent': multi-label, mAP
  eval_average: str = field('logits', choices=VIEW_AVERAGES)  # how a video's eval views merge
  # Single-label data: also report the mean of the per-class top-1 accuracies (AViD, Table 11).
  mean_per_class_accuracy: bool = False
  log_every_steps: int = field(50, minimum=1)
  checkpoint_every_steps: int = 0  # 0: only at the end
  keep_checkpoints: int = field(3, minimum=1)
  profile_steps: int = 0
  # Device mesh (data, model) sizes; -1: the rest. Batches are split over 'data' only. Laid out
  # on the chips' torus by jax's mesh_utils (token_learner/train/sharding.py).
  mesh_shape: Tuple[int, int] = field(MESH_SHAPE, custom=True)
  # Multi-slice TPU: the (data, model) factor of mesh_shape that spans slices (over the slower
  # data-center network); -1: the rest of the slices. The default: data parallel across slices.
  dcn_mesh_shape: Tuple[int, int] = field(DCN_MESH_SHAPE, custom=True)
  # Named rule set (SHARDINGS): 'replicated' (data parallel), 'fsdp' (big parameters and their
  # optimizer state over 'data'), 'tp' (Megatron tensor parallel over 'model') or 'fsdp_tp'.
  sharding: str = field('replicated', choices=SHARDINGS)
  # (regex on the parameter path, PartitionSpec as a tuple) pairs, tried before the set's rules;
  # the first match wins.
  sharding_rules: Tuple[Tuple[str, Tuple[Any, ...]], ...] = field((), custom=True)
  # A local folder or a URL (gs://..., shared by a pod's hosts) where compiled steps are kept
  # for the next start; '' turns it off; JAX_COMPILATION_CACHE_DIR, when set, wins.
  compilation_cache_dir: str = COMPILATION_CACHE_DIR
  num_classes: int = fields.derived(1)  # config.model.num_classes (validated there)

  def __post_init__(self):
    fields.validate(self, 'config')
    if self.num_train_steps is None and self.num_epochs is None:
      raise ValueError('config.num_train_steps or config.num_epochs must be set')
    try:
      re.compile(self.weight_decay_regex)
    except re.error as e:
      raise ValueError(f'config.weight_decay_regex={self.weight_decay_regex!r}: {e}') from None
    if self.mean_per_class_accuracy and self.multi_label:
      raise ValueError('config.mean_per_class_accuracy needs single-label data, not '
                       f'config.loss={self.loss!r}')
    fields.set_field(self, 'mesh_shape', _mesh_shape(self.mesh_shape))
    fields.set_field(self, 'dcn_mesh_shape', _mesh_shape(self.dcn_mesh_shape, 'dcn_mesh_shape'))
    fields.set_field(self, 'sharding_rules', _sharding_rules(self.sharding_rules))

  @property
  def multi_label(self) -> bool:
    return self.loss in MULTI_LABEL_LOSSES

  def for_run(self, *, num_train_examples: int, num_devices: int,
              num_processes: int = 1) -> 'TrainConfig':
    """This config with `num_train_steps` resolved, checked against the run's topology."""
    for name in ('batch_size', 'eval_batch_size'):
      value = getattr(self, name)
      if value % num_devices or value % num_processes:
        raise ValueError(f'config.{name}={value} must be divisible by the number of devices '
                         f'({num_devices}) and processes ({num_processes})')
    k = self.grad_accum_steps
    if self.batch_size % k or (self.batch_size // k) % num_devices:
      raise ValueError(f'config.grad_accum_steps={k}: config.batch_size={self.batch_size} must '
                       f'split into {k} micro-batches divisible by {num_devices} devices')
    steps = self.num_train_steps
    if steps is None:
      steps = max(1, math.ceil(self.num_epochs * num_train_examples / self.batch_size))
    if self.warmup_steps > steps:
      raise ValueError(f'config.warmup_steps={self.warmup_steps} exceeds the {steps} training '
                       'steps')
    return dataclasses.replace(self, num_train_steps=steps)


def _mesh_shape(shape, name: str = 'mesh_shape') -> Tuple[int, int]:
  ok = (isinstance(shape, (tuple, list)) and len(shape) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and (s == -1 or s >= 1)
                for s in shape) and list(shape).count(-1) <= 1)
  if not ok:
    rest = 'slices' if name == 'dcn_mesh_shape' else 'devices'
    raise ValueError(f'config.{name}={shape!r} must be (data, model): two ints >= 1, at '
                     f'most one of them -1 (the rest of the {rest}), e.g. (-1, 4)')
  return tuple(shape)


def _sharding_rules(rules) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
  out = []
  for rule in rules or ():
    if (len(rule) != 2 or not isinstance(rule[0], str)
        or not isinstance(rule[1], (tuple, list))):
      raise ValueError(f'config.sharding_rules entry {rule!r} must be (regex, partition spec '
                       "tuple), e.g. ('.*Dense_.*/kernel', (None, 'data'))")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f'config.sharding_rules regex {rule[0]!r}: {e}') from None
    spec = tuple(tuple(a) if isinstance(a, list) else a for a in rule[1])
    for axes in spec:
      for axis in (axes if isinstance(axes, tuple) else (axes,)):
        if axis is not None and axis not in MESH_AXES:
          raise ValueError(f'config.sharding_rules entry {rule!r}: mesh axis {axis!r} is not '
                           f'one of {MESH_AXES}')
    out.append((rule[0], spec))
  return tuple(out)
