"""Nested trees as flat {'a/b/c': leaf} dicts: the one way the project names a leaf by its path."""
from typing import Any, Dict

import jax


def key_path_str(path, sep: str = '/') -> str:
  """A jax key path (dict keys, attributes, indices) as 'a/b/0'."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return sep.join(parts)


def flatten(tree, sep: str = '/') -> Dict[str, Any]:
  """Nested dicts (or any pytree) -> {'a/b/c': leaf}."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {key_path_str(path, sep): leaf for path, leaf in leaves}


def unflatten(flat: Dict[str, Any], sep: str = '/') -> Dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts."""
  tree = {}
  for key, value in flat.items():
    node = tree
    *path, last = key.split(sep)
    for part in path:
      node = node.setdefault(part, {})
    node[last] = value
  return tree
