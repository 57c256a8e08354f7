"""The choice lists of the light config modules against the registries that implement them.

The config sections (standard library only) name the models, losses, optimizers, schedules,
sharding rule sets, bottleneck modules and remat policies as tuples; the jax modules keep the
implementations in dicts. Each test fails naming the side that has a name the other lacks.
"""
import dataclasses
import math
from typing import Optional, Tuple, Union

import pytest

from token_learner import bottleneck
from token_learner import fields
from token_learner import layer_scan
from token_learner import model_config
from token_learner import models
from token_learner.train import config as train_config
from token_learner.train import losses
from token_learner.train import optim
from token_learner.train import sharding


def _same(config_names, registry, what):
  config_names, registry = set(config_names), set(registry)
  assert not config_names - registry, f'{what}: in the config, not implemented'
  assert not registry - config_names, f'{what}: implemented, not accepted by the config'


def test_models():
  _same(model_config.MODELS, models.MODELS, 'config.model.name')


def test_losses():
  _same(train_config.LOSSES, losses.LOSSES, 'config.loss')
  assert set(train_config.MULTI_LABEL_LOSSES) <= set(train_config.LOSSES)


def test_optimizers_and_schedules():
  _same(train_config.OPTIMIZERS, optim.OPTIMIZERS, 'config.optimizer')
  _same(train_config.LR_SCHEDULES, optim.DECAYS, 'config.lr_schedule')


def test_shardings():
  _same(train_config.SHARDINGS, sharding.RULE_SETS, 'config.sharding')
  assert sharding.AXES == train_config.MESH_AXES


def test_bottleneck_modules():
  _same(model_config.BOTTLENECK_MODULES, bottleneck.MODULE_LAYERS, 'config.model.bottleneck.module')
  tokenizers = {name for name, layers in bottleneck.MODULE_LAYERS.items()
                if set(layers) & set(bottleneck.TOKENIZERS)}
  _same(model_config.BOTTLENECK_TOKENIZERS, tokenizers, 'bottleneck modules with a tokenizer')


def test_remat_policies():
  _same(model_config.REMATS, {'none', *layer_scan.REMAT_POLICIES}, 'config.model.remat')


def test_mesh_shape_has_one_default():
  assert train_config.TrainConfig(num_train_steps=1).mesh_shape == train_config.MESH_SHAPE
  # sharding.create_mesh's default is the same constant, not a copy of it.
  defaults = sharding.create_mesh.__defaults__
  assert defaults[-1] is train_config.MESH_SHAPE


# ------------------------------------------------------------------ declarative field checks
@dataclasses.dataclass(frozen=True)
class _Section:
  count: int = fields.field(1, minimum=1)
  rate: float = fields.field(0.5, maximum=1.0, below_max=True)
  flag: bool = False
  sizes: Tuple[int, ...] = fields.field((2,), choices=(2, 4))
  rgb: Tuple[float, float, float] = (0.5, 0.5, 0.5)
  name: Optional[str] = fields.field(None, choices=('a', 'b'))
  extra: dict = fields.field({})

  def __post_init__(self):
    fields.validate(self, 'config.s')


@pytest.mark.parametrize('change, message', [
    (dict(count=0), 'config.s.count=0 must be an integer >= 1'),
    (dict(count=True), 'config.s.count=True must be an integer >= 1'),
    (dict(count=2.0), 'config.s.count=2.0 must be an integer >= 1'),
    (dict(rate=1.0), r'config.s.rate=1.0 must be a finite number in \[0.0, 1.0\)'),
    (dict(rate=math.nan), 'config.s.rate=nan must be a finite number'),
    (dict(rate=False), 'config.s.rate=False must be a finite number'),
    (dict(flag=1), 'config.s.flag=1 must be True or False'),
    (dict(sizes=(2, 3)), r'config.s.sizes=3 is not one of \[2, 4\]'),
    (dict(sizes=2), 'config.s.sizes=2 must be a tuple of integers'),
    (dict(rgb=(1, 2)), 'config.s.rgb=.* must be a tuple of 3 numbers'),
    (dict(name='c'), r"config.s.name='c' is not one of \['a', 'b'\]"),
    (dict(name=3), 'config.s.name=3 must be a string'),
    (dict(extra=[]), r'config.s.extra=\[\] must be a dict'),
])
def test_validate_names_the_field(change, message):
  with pytest.raises(ValueError, match=message):
    _Section(**change)


def test_validate_normalises_and_copies_mutable_defaults():
  section = _Section(rate=0, sizes=[2, 4], rgb=[1, 0, 0])
  assert section.sizes == (2, 4) and section.rgb == (1.0, 0.0, 0.0)
  assert isinstance(section.rate, float) and _Section().name is None
  assert _Section().extra is not _Section().extra


def test_a_shape_validate_does_not_know_must_be_custom():
  @dataclasses.dataclass(frozen=True)
  class Unknown:
    pairs: Tuple[Union[int, str], ...] = ()

    def __post_init__(self):
      fields.validate(self, 'config.u')

  with pytest.raises(TypeError, match='custom=True'):
    Unknown()
