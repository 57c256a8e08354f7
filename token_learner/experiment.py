"""The one config boundary: an experiment ConfigDict -> typed, frozen, validated sections.

    experiment = from_config(config)   # in train_and_evaluate and the FLOPs tool, once
    experiment.model  # token_learner.ModelConfig        (config.model + the input geometry)
    experiment.data   # token_learner.data.ImageData | VideoData   (config.dataset)
    experiment.train  # token_learner.train.config.TrainConfig     (the top-level fields)
    experiment.init   # token_learner.pretrained.InitConfig        (config.init_from)
    experiment.evals  # ((name, token_learner.evals.config.*Eval), ...)  (config.evals)

Every section rejects a key it does not know with an error naming it (`config.dataset.eval_clip
is not a field of config.dataset`), and each default lives in its section's dataclass. Sections
that depend on each other are filled here: the model's input geometry comes from the dataset, the
dataset's and the trainer's class count from the model. Below this module no code reads a
ConfigDict.
"""
import dataclasses
from typing import Any, Mapping, Union

from token_learner import data
from token_learner.evals import config as evals_config
from token_learner import fields
from token_learner.init_config import InitConfig
from token_learner.model_config import ModelConfig
from token_learner.train.config import TrainConfig

SECTIONS = ('model', 'dataset', 'init_from', 'evals')


@dataclasses.dataclass(frozen=True)
class Experiment:
  model: ModelConfig
  data: Union[data.ImageData, data.VideoData]
  train: TrainConfig
  init: InitConfig
  evals: evals_config.Evals = ()


def as_dict(config) -> Mapping[str, Any]:
  """A ConfigDict (or a mapping) as plain nested dicts."""
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def model_and_data(config):
  """(ModelConfig, ImageData | VideoData) of `config.model` and `config.dataset`."""
  raw = as_dict(config)
  model = dict(raw.get('model') or {})
  dataset = data.from_dict(raw.get('dataset') or {}, num_classes=model.get('num_classes'))
  geometry = dict(image_size=dataset.image_size)
  if dataset.is_video:
    geometry['num_frames'] = dataset.num_frames
  return ModelConfig.from_dict(model, **geometry), dataset


def from_config(config) -> Experiment:
  """Every section of `config` (ConfigDict or dict), validated; a ValueError names a bad field."""
  raw = as_dict(config)
  trainer_fields = {k: v for k, v in raw.items() if k not in SECTIONS}
  fields.check_known(trainer_fields, [f.name for f in fields.config_fields(TrainConfig)],
                     'config')
  model, dataset = model_and_data(raw)
  train = fields.from_dict(TrainConfig, trainer_fields, 'config', num_classes=model.num_classes)
  init = fields.from_dict(InitConfig, raw.get('init_from'), 'config.init_from')
  evals = evals_config.evals_from_dict(raw.get('evals'))
  return Experiment(model=model, data=dataset, train=train, init=init, evals=evals)

