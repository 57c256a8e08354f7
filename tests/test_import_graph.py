"""The library's import graph: no cycles, and nothing imported from outside the library's layer.

Every module under token_learner/ is parsed (not imported) and each import of a library module
becomes an edge: top-level and function-level imports alike, `import token_learner.a.b`,
`from token_learner.a import b` (b a module: an edge to a.b; else to a, a package meaning its
`__init__`) and relative imports. Implicit imports of parent packages are not edges (they are
what makes `from token_learner.data import stream` inside token_learner/data/ safe).
"""
import ast
import os
import sys
from typing import Dict, List, Optional, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = 'token_learner'
# Top-level packages of the repository that sit above the library: it must not import them.
FORBIDDEN = ('tools', 'benchmarks', 'configs')


def library_modules(root: str, package: str) -> Dict[str, str]:
  """{dotted module name: path} of every .py file under root/package (packages by __init__)."""
  modules = {}
  for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(('.', '__pycache__')))
    rel = os.path.relpath(dirpath, root).split(os.sep)
    for f in sorted(filenames):
      if f.endswith('.py'):
        name = rel if f == '__init__.py' else rel + [f[:-3]]
        modules['.'.join(name)] = os.path.join(dirpath, f)
  return modules


def _imports(tree: ast.AST, module: str, is_package: bool):
  """Yields (candidates, imported, line) per imported name of `tree`: `candidates` the absolute
  names it may be a library module as, in order ('a.b' then 'a' for `from a import b`: b is a
  submodule or a name defined in a), `imported` what the statement names ('a.b.c' / 'a')."""
  package = module if is_package else module.rpartition('.')[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield [alias.name], alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # Relative: `from . import x` / `from ..a import b`.
        parts = package.split('.')
        parts = parts[:len(parts) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      for alias in node.names:
        yield [f'{base}.{alias.name}', base], base, node.lineno


def import_graph(root: str, package: str):
  """(graph {module: {imported library module}}, outside {module: [(imported name, line)]}).

  `outside` lists the imports of the top-level packages in FORBIDDEN."""
  modules = library_modules(root, package)
  graph: Dict[str, Set[str]] = {m: set() for m in modules}
  outside: Dict[str, List] = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for candidates, imported, line in _imports(tree, module, path.endswith('__init__.py')):
      target = next((c for c in candidates if c in modules), None)
      if target is not None and target != module:
        graph[module].add(target)
      if imported.split('.')[0] in FORBIDDEN and (imported, line) not in outside.get(module, ()):
        outside.setdefault(module, []).append((imported, line))
  for found in outside.values():
    found.sort(key=lambda x: x[1])
  return graph, outside


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """A cycle of `graph` as a path [a, b, ..., a], or None; deterministic (sorted visits)."""
  state: Dict[str, int] = {}  # 1: on the current path, 2: done.
  path: List[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  limit = sys.getrecursionlimit()
  sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
  try:
    for node in sorted(graph):
      if node not in state:
        found = visit(node)
        if found:
          return found
    return None
  finally:
    sys.setrecursionlimit(limit)


# ---------------------------------------------------------------------------------------------
# The finder and the parser, on graphs and packages made by hand.


def test_find_cycle_on_hand_made_graphs():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set(), 'd': {'a', 'c'}}) is None
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'x': {'y'}, 'y': {'y'}}) == ['y', 'y']
  assert find_cycle({'a': {'b'}, 'b': {'c', 'd'}, 'c': set(), 'd': {'b'}}) == ['b', 'd', 'b']
  assert find_cycle({}) is None


def _write(root, files):
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)


def test_planted_cycles_are_found(tmp_path):
  """A cycle closed by a function-level import, and one through a package's __init__."""
  _write(tmp_path, {
      'lib/__init__.py': '',
      'lib/a.py': 'from lib import b\n',
      'lib/b.py': 'def f():\n  from lib.c import thing\n  return thing\n',
      'lib/c.py': 'import numpy\nimport lib.a\n',
      'lib/sub/__init__.py': 'from lib.sub import inner\n',
      'lib/sub/inner.py': 'from lib.sub import other\n',
      'lib/sub/other.py': 'from . import inner\n',
      'lib/uses_tools.py': 'def g():\n  from tools import plots\n',
  })
  graph, outside = import_graph(str(tmp_path), 'lib')
  assert graph['lib.a'] == {'lib.b'} and graph['lib.b'] == {'lib.c'}
  assert graph['lib.c'] == {'lib.a'}  # numpy is not a library module
  assert graph['lib.sub'] == {'lib.sub.inner'}
  assert graph['lib.sub.other'] == {'lib.sub.inner'}  # relative import resolved
  assert find_cycle(graph) == ['lib.a', 'lib.b', 'lib.c', 'lib.a']
  del graph['lib.c']
  assert find_cycle(graph) == ['lib.sub.inner', 'lib.sub.other', 'lib.sub.inner']
  assert outside == {'lib.uses_tools': [('tools', 2)]}


def test_names_imported_from_a_package_are_edges_to_its_init(tmp_path):
  _write(tmp_path, {
      'lib/__init__.py': 'from lib.m import build\n',
      'lib/m.py': 'def build():\n  pass\n',
      'lib/n.py': 'from lib import build, m\n',
      'lib/pkg/__init__.py': 'X = 1\n',
      'lib/o.py': 'from lib.pkg import X\nimport lib.pkg\n',
  })
  graph, _ = import_graph(str(tmp_path), 'lib')
  assert graph['lib'] == {'lib.m'}
  assert graph['lib.n'] == {'lib', 'lib.m'}
  assert graph['lib.o'] == {'lib.pkg'}
  assert find_cycle(graph) is None


# ---------------------------------------------------------------------------------------------
# The library.


def test_library_has_no_import_cycle():
  graph, _ = import_graph(REPO, LIBRARY)
  assert 'token_learner.flops' in graph and 'token_learner.data.images' in graph
  assert 'token_learner.bottleneck' in graph['token_learner.flops']
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_library_imports_nothing_from_above_it():
  _, outside = import_graph(REPO, LIBRARY)
  assert not outside, 'library modules importing ' + '/'.join(FORBIDDEN) + ': ' + '; '.join(
      f'{m} imports {n} (line {line})' for m, found in sorted(outside.items())
      for n, line in found)


@pytest.mark.parametrize('module, forbidden', [
    ('token_learner.bottleneck', 'token_learner.flops'),  # the model does not know its costs
    ('token_learner.data.corrupt_images', 'token_learner.data.images'),
])
def test_layering(module, forbidden):
  graph, _ = import_graph(REPO, LIBRARY)
  assert forbidden not in graph[module]
