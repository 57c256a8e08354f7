"""`config.evals`: the evaluations of a run, by name, each a typed, validated section.

    config.evals.eval = dict(kind='classification', every_steps=500)      # the default
    config.evals.train_slice = dict(kind='classification', split='train[:360]')
    config.evals.fewshot = dict(kind='fewshot', every_steps=1000, shots=(1, 5, 10, 25))
    config.evals.maps = dict(kind='attention_maps', num_examples=4)       # Fig. 10

Each evaluator runs every `every_steps` steps and once at the end of training (`every_steps=0`:
only at the end); `evaluate.py` runs the same list on a checkpoint. Its metrics are written as
`<name>_<metric>` (TensorBoard, summary.json, eval_<step>.json), so two eval sets never mix. Its
data is `config.dataset` with `split` as the eval split and `dataset` as further overrides (e.g.
`{'name': 'imagenet_v2', 'data_dir': ...}`), read through the same data layer and eval
preprocessing. Standard library only: configs import it.
"""
import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from token_learner import fields

DEFAULT_NAME = 'eval'
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


@dataclasses.dataclass(frozen=True)
class _EvalFields:
  """What every evaluator has: its cadence and its data."""
  every_steps: int = 0  # 0: only at the end of training
  split: Optional[str] = None  # None: config.dataset.eval_split
  # Further overrides of config.dataset for this evaluator (name, data_dir, eval_clips, ...).
  dataset: Dict[str, Any] = dataclasses.field(default_factory=dict)
  path: str = fields.derived('config.evals.eval')  # the section's name in errors

  def __post_init__(self):
    fields.check_int(f'{self.path}.every_steps', self.every_steps)
    if self.split is not None and (not isinstance(self.split, str) or not self.split):
      raise ValueError(f'{self.path}.split={self.split!r} must be a split name or None')
    if not isinstance(self.dataset, Mapping):
      raise ValueError(f'{self.path}.dataset={self.dataset!r} must be a dict of '
                       'config.dataset fields')
    fields.set_field(self, 'dataset', dict(self.dataset))


@dataclasses.dataclass(frozen=True)
class ClassificationEval(_EvalFields):
  """Loss, top-1 / top-5 accuracy over every example of a split once; mAP for multi-label data,
  `mean_per_class_accuracy` when config.mean_per_class_accuracy, ReaL accuracy when the
  batches carry real labels; videos through all their eval views (`config.eval_average`)."""
  kind: str = 'classification'
  batch_size: Optional[int] = None  # global; None: config.eval_batch_size

  def __post_init__(self):
    super().__post_init__()
    if self.batch_size is not None:
      fields.check_int(f'{self.path}.batch_size', self.batch_size, 1)


@dataclasses.dataclass(frozen=True)
class FewShotEval(_EvalFields):
  """Few-shot linear accuracy of the frozen pre-logit features (§3.3, Fig. 4): `shots` examples
  per class of `train_split`, tested on `split`, averaged over `seeds` draws."""
  kind: str = 'fewshot'
  shots: Tuple[int, ...] = (1, 5, 10, 25)
  seeds: int = 3
  l2_reg: float = 1024.0  # 2 ** 10, the ViT few-shot evaluator's default penalty
  train_split: Optional[str] = None  # where the shots come from; None: the dataset's train split
  batch_size: int = 256  # feature extraction, global

  def __post_init__(self):
    super().__post_init__()
    shots = tuple(self.shots) if isinstance(self.shots, (tuple, list)) else ()
    if not shots:
      raise ValueError(f'{self.path}.shots must list at least one shot count')
    for s in shots:
      fields.check_int(f'{self.path}.shots', s, 1)
    fields.set_field(self, 'shots', shots)
    fields.check_int(f'{self.path}.seeds', self.seeds, 1)
    fields.check_number(f'{self.path}.l2_reg', self.l2_reg)
    fields.check_int(f'{self.path}.batch_size', self.batch_size, 1)


@dataclasses.dataclass(frozen=True)
class AttentionMapsEval(_EvalFields):
  """The TokenLearner maps of the first `num_examples` examples of the split as TensorBoard
  images, and the token diagnostics as scalars (Fig. 10, §6.4)."""
  kind: str = 'attention_maps'
  num_examples: int = 4

  def __post_init__(self):
    super().__post_init__()
    fields.check_int(f'{self.path}.num_examples', self.num_examples, 1)


EvalConfig = Union[ClassificationEval, FewShotEval, AttentionMapsEval]
KINDS = {cls.kind: cls for cls in (ClassificationEval, FewShotEval, AttentionMapsEval)}
Evals = Tuple[Tuple[str, EvalConfig], ...]


def from_dict(name: str, values: Mapping[str, Any]) -> EvalConfig:
  """The section `config.evals.<name>`; a ValueError names a bad name, kind or field."""
  where = f'config.evals.{name}'
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f'{where}: an evaluator name must be lower-case letters, digits and _ '
                     '(it prefixes the metrics)')
  if not isinstance(values, Mapping):
    raise ValueError(f'{where} must be a dict with a kind ({", ".join(KINDS)})')
  kind = values.get('kind', ClassificationEval.kind)
  fields.check_choice(f'{where}.kind', kind, list(KINDS))
  return fields.from_dict(KINDS[kind], values, where, path=where)


def evals_from_dict(values: Optional[Mapping[str, Any]]) -> Evals:
  """`config.evals` ({name: section}) as ((name, EvalConfig), ...) in name order; a config
  without the section gets the one default classification evaluator."""
  if values is None:
    return ((DEFAULT_NAME, ClassificationEval(path=f'config.evals.{DEFAULT_NAME}')),)
  if not isinstance(values, Mapping):
    raise ValueError(f'config.evals={values!r} must be a dict {{name: evaluator section}}')
  return tuple((name, from_dict(name, section)) for name, section in sorted(values.items()))


def data_overrides(cfg: EvalConfig) -> Dict[str, Any]:
  """The config.dataset fields this evaluator changes (its split included)."""
  overrides = dict(cfg.dataset)
  if cfg.split is not None:
    overrides['eval_split'] = cfg.split
  return overrides
