"""Typed config sections: a plain dict becomes a frozen dataclass at one boundary.

Every section of an experiment config (`config.model`, `config.dataset`, the trainer's top-level
fields, `config.init_from`) is a frozen dataclass whose field defaults are the only defaults the
project has. `from_dict` rejects a key the dataclass does not know with an error naming it, and
the dataclass's `__post_init__` validates values with the checkers below, so a bad config fails
before anything is traced or compiled. Fields marked `derived()` are filled by the boundary from
another section (e.g. the model's input size from the dataset) and are not accepted in a config.
"""
import contextlib
import dataclasses
import math
from typing import Any, Dict, Mapping, Sequence

_DERIVED = 'derived'


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


def check_int(where: str, value, minimum: int = 0) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{where}={value!r} must be an integer >= {minimum}')
  return value


def check_number(where: str, value, minimum: float = 0.0, maximum: float = math.inf,
                 below_max: bool = False) -> float:
  # inf and nan compare as in range (nan as nothing at all) yet poison the run: finite only.
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and minimum <= value and (value < maximum if below_max else value <= maximum))
  if not ok:
    bracket = ')' if below_max else ']'
    raise ValueError(f'{where}={value!r} must be a finite number in [{minimum}, {maximum}'
                     f'{bracket}')
  return float(value)


def check_choice(where: str, value, allowed: Sequence[Any]):
  if value not in allowed:
    raise ValueError(f'{where}={value!r} is not one of {list(allowed)}')
  return value


def set_field(section, name: str, value):
  """Normalises a field of a frozen dataclass in its `__post_init__` (e.g. list -> tuple)."""
  object.__setattr__(section, name, value)
