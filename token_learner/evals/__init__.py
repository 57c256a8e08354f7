"""Evaluators: `config.evals` ({name: section}) as objects behind one small interface.

    evaluators = evals.build(run)          # token_learner.train.setup.Run; inputs built once
    for ev in evaluators:                  # ev.name, ev.every_steps
      scalars, images = ev(params)         # {metric: float}, {tag: uint8 [N, H, W, 3]}

Kinds (token_learner.evals.config): 'classification' (loss, top-1/top-5, mAP, per-class, ReaL;
multi-view video), 'fewshot' (§3.3 linear few-shot), 'attention_maps' (Fig. 10). The training
loop writes every evaluator's results as `<name>_<metric>`; `evaluate.py` runs the same list on a
checkpoint. A kind's module (and what it needs: TensorFlow for input, matplotlib for maps) is
imported only when a config uses it.
"""
import importlib
from typing import Dict, List, Protocol, Tuple

from token_learner import data
from token_learner import fields
from token_learner.evals.config import EvalConfig, data_overrides

_KIND_MODULES = {'classification': ('classification', 'ClassificationEvaluator'),
                 'fewshot': ('fewshot', 'FewShotEvaluator'),
                 'attention_maps': ('attention_maps', 'AttentionMapsEvaluator')}


class Evaluator(Protocol):
  name: str
  every_steps: int  # 0: only at the end of training

  def __call__(self, params) -> Tuple[Dict[str, float], Dict[str, object]]:
    """(scalars, images) of `params`, names without the evaluator's prefix."""


def eval_data(base: data.DataConfig, cfg: EvalConfig) -> data.DataConfig:
  """The dataset an evaluator reads: config.dataset with its split and overrides."""
  overrides = data_overrides(cfg)
  if not overrides:
    return base
  return data.from_dict({**fields.section_dict(base), **overrides},
                        num_classes=base.num_classes)


def check(experiment, info_fn) -> List[Tuple[str, EvalConfig, object, object]]:
  """[(name, cfg, data_cfg, info)] of every evaluator, checked against the model before anything
  is compiled or read: a ValueError names `config.evals.<name>`. `info_fn` is
  data.dataset_info."""
  out = []
  for name, cfg in experiment.evals:
    data_cfg = eval_data(experiment.data, cfg)
    info = info_fn(data_cfg)
    if info.num_classes != experiment.model.num_classes:
      raise ValueError(f'config.evals.{name}: its dataset {data_cfg.name!r} has '
                       f'{info.num_classes} classes, config.model.num_classes='
                       f'{experiment.model.num_classes}')
    if cfg.kind == 'attention_maps' and not experiment.model.has_attention_maps:
      raise ValueError(f'config.evals.{name} (kind attention_maps): the model has no '
                       'TokenLearner (config.model.tokenlearner.num_tokens=0), no maps to draw')
    out.append((name, cfg, data_cfg, info))
  return out


def build(run, checked) -> List[Evaluator]:
  """The evaluators of `checked` (from `check`) on `run`; each builds its input once."""
  evaluators = []
  for name, cfg, data_cfg, info in checked:
    module, cls = _KIND_MODULES[cfg.kind]
    kind = importlib.import_module(f'token_learner.evals.{module}')
    evaluators.append(getattr(kind, cls)(name, cfg, run, data_cfg, info))
  return evaluators


def due(evaluator: Evaluator, step: int, last: bool) -> bool:
  """Whether `evaluator` runs after `step`: every `every_steps`, and always after the last."""
  return last or bool(evaluator.every_steps and step % evaluator.every_steps == 0)


def prefixed(name: str, values: Dict[str, object]) -> Dict[str, object]:
  return {f'{name}_{k}': v for k, v in values.items()}
