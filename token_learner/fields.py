"""Typed config sections: a plain dict becomes a frozen dataclass at one boundary.

Every section of an experiment config (`config.model`, `config.dataset`, the trainer's top-level
fields, `config.init_from`) is a frozen dataclass whose field defaults are the only defaults the
project has. `from_dict` rejects a key the dataclass does not know with an error naming it, and
the dataclass's `__post_init__` calls `validate`, so a bad config fails before anything is traced
or compiled. Fields marked `derived()` are filled by the boundary from another section (e.g. the
model's input size from the dataset) and are not accepted in a config.

`validate` checks every config field from its type hint and its `field(...)` metadata:

    lr: float = 1e-3                              # a finite number in [0.0, inf]
    rate: float = field(0.0, maximum=1.0, below_max=True)   # in [0.0, 1.0)
    steps: Optional[int] = field(None, minimum=1)  # None or an integer >= 1 (bool is no int)
    loss: str = field('softmax_xent', choices=LOSSES)
    shots: Tuple[int, ...] = field((1, 5), minimum=1)  # lists become tuples, each entry checked

int and float fields are non-negative unless `minimum` says otherwise; ints pass as floats (and
become floats); ints stay within int64 whatever `maximum` says. Choices and bounds of a tuple
apply to each entry. Cross-field rules, and fields of a shape `validate` does not know (declared
`field(..., custom=True)`), stay in the section's `__post_init__`, written with the checkers
below.
"""
import collections.abc
import contextlib
import copy
import dataclasses
import functools
import math
import typing
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

_DERIVED = 'derived'
_SPEC = 'spec'


class ConfigError(ValueError):
  """A config field is invalid or conflicts with the data or the workdir; the message names the
  field (main.py prints it as one line and exits with status 2)."""


@contextlib.contextmanager
def config_errors():
  """Re-raises a ValueError of the block (a failed check) as ConfigError."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def derived(default: Any = None, **kwargs):
  """A dataclass field set by the boundary from another section, never by a config key."""
  return dataclasses.field(default=default, metadata={_DERIVED: True}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Spec:
  """What `validate` checks of a field beyond its type hint (see `field`)."""
  choices: Optional[Tuple[Any, ...]] = None
  minimum: float = 0
  maximum: float = math.inf
  above_min: bool = False  # minimum excluded
  below_max: bool = False  # maximum excluded
  finite: bool = True  # floats: inf and nan are errors (they compare as in range yet poison runs)
  custom: bool = False  # checked by the section's own code only
  doc: Optional[str] = None


def field(default: Any = dataclasses.MISSING, *, choices: Optional[Sequence[Any]] = None,
          minimum: float = 0, maximum: float = math.inf, above_min: bool = False,
          below_max: bool = False, finite: bool = True, custom: bool = False,
          doc: Optional[str] = None, default_factory: Any = dataclasses.MISSING):
  """A config field whose choices and bounds `validate` checks; a mutable default is copied."""
  spec = Spec(None if choices is None else tuple(choices), minimum, maximum, above_min,
              below_max, finite, custom, doc)
  if isinstance(default, (list, dict, set)):
    default, default_factory = dataclasses.MISSING, functools.partial(copy.deepcopy, default)
  return dataclasses.field(default=default, default_factory=default_factory,
                           metadata={_SPEC: spec})


def validate(section, where: str):
  """Checks (and normalises: list -> tuple, int -> float) every config field of `section` from
  its type hint and `field` metadata; a ValueError names `where.field`. Nested sections (a
  dataclass-typed field) validate themselves; `custom` fields are left to the section."""
  hints = _hints(type(section))
  for f in config_fields(type(section)):
    spec = f.metadata.get(_SPEC, _PLAIN)
    if not spec.custom and not dataclasses.is_dataclass(hints[f.name]):
      if not _known(hints[f.name]):
        raise TypeError(f'{where}.{f.name}: no generic check for {hints[f.name]}; declare the '
                        'field fields.field(..., custom=True) and check it in __post_init__')
      value = getattr(section, f.name)
      checked = _check(f'{where}.{f.name}', value, hints[f.name], spec)
      if checked is not value:
        set_field(section, f.name, checked)


_PLAIN = Spec()
_hints = functools.lru_cache(maxsize=None)(typing.get_type_hints)


def _check(where: str, value, hint, spec: Spec):
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is Union and len(args) == 2 and type(None) in args:  # Optional[X]
    return None if value is None else _check(where, value, args[args[0] is type(None)], spec)
  if origin is tuple:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(value, (tuple, list)) or not variadic and len(value) != len(args):
      count = '' if variadic else f'{len(args)} '
      raise ValueError(f'{where}={value!r} must be a tuple of {count}{_name(args[0])}s')
    hints = args[:1] * len(value) if variadic else args
    return tuple(_check(where, v, h, spec) for v, h in zip(value, hints))
  if origin in (dict, collections.abc.Mapping) or hint is dict:
    if not isinstance(value, Mapping):
      raise ValueError(f'{where}={value!r} must be a dict')
    return dict(value)
  if hint is int:
    value = check_int(where, value, spec.minimum, spec.maximum)
  elif hint is float:
    value = check_number(where, value, float(spec.minimum), float(spec.maximum),
                         below_max=spec.below_max, above_min=spec.above_min, finite=spec.finite)
  elif not isinstance(value, hint):  # bool or str
    raise ValueError(f'{where}={value!r} must be ' + ('True or False' if hint is bool else
                                                      'a string'))
  return value if spec.choices is None else check_choice(where, value, spec.choices)


def _known(hint) -> bool:
  """Whether `_check` handles `hint`: int, float, bool, str, dict, Optional and tuples of them."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is Union:
    return len(args) == 2 and type(None) in args and all(map(_known, set(args) - {type(None)}))
  if origin is tuple:
    return all(_known(a) for a in args if a is not Ellipsis)
  return origin in (dict, collections.abc.Mapping) or hint in (int, float, bool, str, dict)


def _name(hint) -> str:
  return {int: 'integer', float: 'number', str: 'string', bool: 'bool'}.get(hint, str(hint))


def config_fields(cls) -> Sequence[dataclasses.Field]:
  """The fields of `cls` that a config section may set."""
  return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(_DERIVED)]


def defaults(cls) -> Dict[str, Any]:
  """{field: default} of the config fields of `cls` (nested sections as dicts)."""
  out = {}
  for f in config_fields(cls):
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    out[f.name] = section_dict(value) if dataclasses.is_dataclass(value) else value
  return out


def section_dict(section) -> Dict[str, Any]:
  """The config fields of a section instance as a (nested) dict."""
  out = {}
  for f in config_fields(type(section)):
    value = getattr(section, f.name)
    out[f.name] = section_dict(value) if dataclasses.is_dataclass(value) else value
  return out


def check_known(values: Mapping[str, Any], known: Sequence[str], where: str):
  """Raises ValueError naming the first key of `values` that is not in `known`."""
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f'{where}.{unknown[0]} is not a field of {where} (known: '
                     f'{", ".join(sorted(known))})')


def from_dict(cls, values: Mapping[str, Any], where: str, **derived_values):
  """`cls(**values, **derived_values)`; an unknown key is a ValueError naming `where.key`."""
  values = dict(values or {})
  check_known(values, [f.name for f in config_fields(cls)], where)
  return cls(**values, **derived_values)


# Every integer field ends up in an int64 somewhere (numpy, TF, XLA): a larger one would pass
# validation and overflow later, mid-run, as a traceback far from the field.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def check_int(where: str, value, minimum: int = 0, maximum: float = math.inf) -> int:
  """`value` as an integer in [minimum, maximum], also within int64 (no bound is infinite)."""
  minimum, maximum = max(minimum, INT64_MIN), min(maximum, INT64_MAX)
  if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
      or value > maximum):
    too_large = isinstance(value, int) and value > maximum
    bounds = f'in [{minimum}, {maximum}]' if too_large or maximum < INT64_MAX else f'>= {minimum}'
    raise ValueError(f'{where}={value!r} must be an integer {bounds}')
  return int(value)


def check_number(where: str, value, minimum: float = 0.0, maximum: float = math.inf,
                 below_max: bool = False, above_min: bool = False, finite: bool = True) -> float:
  # inf and nan compare as in range (nan as nothing at all) yet poison the run: finite only.
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and (math.isfinite(value) or not finite and not math.isnan(value))
        and (minimum < value if above_min else minimum <= value)
        and (value < maximum if below_max else value <= maximum))
  if not ok:
    interval = f'{"(" if above_min else "["}{minimum}, {maximum}{")" if below_max else "]"}'
    raise ValueError(f'{where}={value!r} must be a {"finite " if finite else ""}number in '
                     f'{interval}')
  return float(value)


def check_choice(where: str, value, allowed: Sequence[Any]):
  if value not in allowed:
    raise ValueError(f'{where}={value!r} is not one of {list(allowed)}')
  return value


def set_field(section, name: str, value):
  """Normalises a field of a frozen dataclass in its `__post_init__` (e.g. list -> tuple)."""
  object.__setattr__(section, name, value)
