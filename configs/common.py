"""Config sections built from the library's typed defaults, so every field can be overridden.

The defaults themselves live in one place, the dataclasses of the config boundary
(`token_learner.model_config.ModelConfig`, `token_learner.data.ImageData` / `VideoData`,
`token_learner.train.config.TrainConfig`, `token_learner.pretrained.InitConfig`,
`token_learner.evals.config`). These helpers
turn them into ConfigDict sections with every field present, so `--config.a.b=value` works for
each of them on the command line; fields whose default is None become typed placeholders.
"""
import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from token_learner import data
from token_learner import fields
from token_learner.init_config import InitConfig
from token_learner.model_config import ModelConfig, TokenLearnerConfig
from token_learner.train.config import TrainConfig
from token_learner.evals import config as evals_config


def _placeholder_type(cls, name):
  """int for `Optional[int]` (the type a None default stands for)."""
  hint = typing.get_type_hints(cls)[name]
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  kind = args[0] if args else hint
  return typing.get_origin(kind) or kind


def section(cls, **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict of the config fields of dataclass `cls`, its defaults with `overrides`."""
  values = fields.defaults(cls)
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ValueError(f'{cls.__name__} has no field {unknown[0]!r}')
  values.update(overrides)
  for f in fields.config_fields(cls):
    if values[f.name] is None:
      values[f.name] = config_dict.placeholder(_placeholder_type(cls, f.name))
    elif dataclasses.is_dataclass(f.type) or isinstance(values[f.name], dict):
      values[f.name] = ml_collections.ConfigDict(values[f.name])
  return ml_collections.ConfigDict(values)


def model_config(*, num_tokens=None, loc=None, version=None, fuser=None,
                 **model) -> ml_collections.ConfigDict:
  """`config.model`: ModelConfig's fields (name, variant, num_classes, classifier, ...), with the
  TokenLearner's most used fields (num_tokens, loc, version, fuser) as keyword shortcuts."""
  tl = {k: v for k, v in dict(num_tokens=num_tokens, loc=loc, version=version,
                               fuser=fuser).items() if v is not None}
  return section(ModelConfig, tokenlearner=section(TokenLearnerConfig, **tl).to_dict(), **model)


def dataset_config(name: str, **dataset) -> ml_collections.ConfigDict:
  """`config.dataset`: every field of the dataset's section (images or videos), with `dataset`."""
  cls = data.VideoData if name in data.VIDEO_NAMES else data.ImageData
  return section(cls, name=name, **dataset)


def eval_config(kind: str = 'classification', **fields_) -> ml_collections.ConfigDict:
  """One `config.evals.<name>` section: every field of the kind's dataclass
  (token_learner.evals.config), its defaults with `fields_`."""
  return section(evals_config.KINDS[kind], kind=kind, **fields_)


def experiment_config(*, model, dataset, evals=None, **trainer) -> ml_collections.ConfigDict:
  """A whole config: the trainer's fields (TrainConfig defaults with `trainer`), `model`,
  `dataset`, an `init_from` section (InitConfig defaults: a fresh initialisation) and `evals`
  ({name: eval_config(...)}; default: one classification evaluator 'eval' at the end)."""
  config = section(TrainConfig, **trainer)
  config.model = model
  config.dataset = dataset
  config.init_from = section(InitConfig)
  config.evals = ml_collections.ConfigDict(
      evals if evals is not None else {evals_config.DEFAULT_NAME: eval_config()})
  return config
