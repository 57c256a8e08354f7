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
  dataset: Dict[str, Any] = fields.field({})
  path: str = fields.derived('config.evals.eval')  # the section's name in errors

  def __post_init__(self):
    fields.validate(self, self.path)
    if self.split == '':
      raise ValueError(f'{self.path}.split={self.split!r} must be a split name or None')


@dataclasses.dataclass(frozen=True)
class ClassificationEval(_EvalFields):
  """Loss, top-1 / top-5 accuracy over every example of a split once; mAP for multi-label data,
  `mean_per_class_accuracy` when config.mean_per_class_accuracy, ReaL accuracy when the
  batches carry real labels; videos through all their eval views (`config.eval_average`)."""
  kind: str = 'classification'
  batch_size: Optional[int] = fields.field(None, minimum=1)  # global; None: eval_batch_size


@dataclasses.dataclass(frozen=True)
class FewShotEval(_EvalFields):
  """Few-shot linear accuracy of the frozen pre-logit features (§3.3, Fig. 4): `shots` examples
  per class of `train_split`, tested on `split`, averaged over `seeds` draws."""
  kind: str = 'fewshot'
  shots: Tuple[int, ...] = fields.field((1, 5, 10, 25), minimum=1)
  seeds: int = fields.field(3, minimum=1)
  l2_reg: float = 1024.0  # 2 ** 10, the ViT few-shot evaluator's default penalty
  train_split: Optional[str] = None  # where the shots come from; None: the dataset's train split
  batch_size: int = fields.field(256, minimum=1)  # feature extraction, global

  def __post_init__(self):
    super().__post_init__()
    if not self.shots:
      raise ValueError(f'{self.path}.shots must list at least one shot count')


@dataclasses.dataclass(frozen=True)
class AttentionMapsEval(_EvalFields):
  """The TokenLearner maps of the first `num_examples` examples of the split as TensorBoard
  images, and the token diagnostics as scalars (Fig. 10, §6.4)."""
  kind: str = 'attention_maps'
  num_examples: int = fields.field(4, minimum=1)


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
