"""The results table of a sweep (sweep.py): one row per entry, merged across invocations.

`WORKDIR/results.csv` and `results.md` hold one row per sweep entry that ever ran in WORKDIR.
Each invocation replaces the rows of the entries it ran and keeps the others (`--only=x` does
not drop the rest), and marks every row:

- `fresh`: run (trained, resumed or re-evaluated) by this invocation, its summary.json written
  by it;
- `reused`: a row of an earlier invocation, kept as it was (this invocation did not run it);
- `failed`: this invocation ran it and the run failed: no metrics, whatever an older
  summary.json in its folder says.

The tables (and results.png) are written atomically through `token_learner.paths`, so a crash
leaves the previous table, and a `gs://` workdir works like a local one.
"""
import csv
import io
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from token_learner import paths

METRICS = ('eval_accuracy', 'eval_top5_accuracy', 'eval_loss', 'train_loss')
FIELDS = ('name', 'status', 'overrides', 'gflops', 'num_params', 'steps', 'wall_time_s',
          *METRICS)
STATUSES = ('fresh', 'reused', 'failed')
_INTS, _FLOATS = ('num_params', 'steps'), ('gflops', 'wall_time_s', *METRICS)
_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.=+-]*')


def check_names(sweep: Sequence[Mapping[str, Any]]):
  """Raises ValueError naming the first sweep entry whose name cannot be a folder of WORKDIR:
  empty, `.` / `..`, a path separator or another character outside [A-Za-z0-9_.=+-], or a name
  used twice (two entries would train into one folder)."""
  seen = set()
  for i, entry in enumerate(sweep):
    name = entry.get('name') if isinstance(entry, Mapping) else None
    if not isinstance(name, str) or not _NAME.fullmatch(name) or set(name) == {'.'}:
      raise ValueError(f'sweep entry {i}: name {name!r} must be a non-empty folder name of '
                       'letters, digits and _.=+- (no "/", no "..")')
    if name in seen:
      raise ValueError(f'sweep entry {i}: name {name!r} is used twice')
    if not isinstance(entry.get('overrides', {}), Mapping):
      raise ValueError(f'sweep entry {name!r}: overrides must be a dict')
    seen.add(name)


def summary_row(name: str, overrides: Mapping[str, Any], workdir: str,
                ok: bool) -> Dict[str, Any]:
  """The row of an entry this invocation ran: metrics from its summary.json when the run
  succeeded (`ok`) and wrote one, else `failed` with no metrics."""
  row = dict(name=name, overrides=json.dumps(dict(overrides), sort_keys=True))
  summary_path = paths.join(workdir, 'summary.json')
  if not ok or not paths.exists(summary_path):
    return dict(row, status='failed', gflops='', num_params='', steps='', wall_time_s='',
                **{k: '' for k in METRICS})
  summary = json.loads(paths.read_text(summary_path))
  final = summary['final_metrics']
  return dict(row, status='fresh', gflops=summary['gflops'], num_params=summary['num_params'],
              steps=summary['steps'], wall_time_s=round(summary['wall_time_s'], 1),
              **{k: final.get(k, '') for k in METRICS})


def _typed(row: Mapping[str, str]) -> Dict[str, Any]:
  """A CSV row with its numbers as numbers again (the plot takes only float points)."""
  out = {k: row.get(k, '') or '' for k in FIELDS}
  for k in _INTS + _FLOATS:
    try:
      out[k] = int(out[k]) if k in _INTS else float(out[k])
    except ValueError:
      pass
  return out


def read(root: str) -> List[Dict[str, Any]]:
  """The rows of `root/results.csv` (none if absent), each marked `reused`; a failed row stays
  `failed`."""
  path = paths.join(root, 'results.csv')
  if not paths.exists(path):
    return []
  rows = [_typed(r) for r in csv.DictReader(io.StringIO(paths.read_text(path)))]
  for row in rows:
    row['status'] = 'failed' if row['status'] == 'failed' else 'reused'
  return rows


def merge(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]],
          order: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """`old` with the rows of `new` replacing those of the same name; sorted by `order` (the
  sweep's names), names not in it after, in their earlier order."""
  by_name = {r['name']: dict(r) for r in old}
  by_name.update((r['name'], dict(r)) for r in new)
  rank = {n: i for i, n in enumerate(order or ())}
  names = list(by_name)
  return [by_name[n] for n in sorted(names, key=lambda n: (rank.get(n, len(rank)),
                                                           names.index(n)))]


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ['| ' + ' | '.join(FIELDS) + ' |', '|' + '---|' * len(FIELDS)]
  for row in rows:
    cells = [f'{row[k]:.4g}' if isinstance(row[k], float) else str(row[k]) for k in FIELDS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write(root: str, rows: Sequence[Mapping[str, Any]]):
  """results.csv, results.md and results.png in `root`, each replaced atomically."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=FIELDS)
  writer.writeheader()
  writer.writerows({k: row[k] for k in FIELDS} for row in rows)
  paths.write_text_atomic(paths.join(root, 'results.csv'), out.getvalue())
  paths.write_text_atomic(paths.join(root, 'results.md'), _markdown(rows))
  from token_learner import plots  # pylint: disable=g-import-not-at-top  # matplotlib
  plots.accuracy_vs_gflops(paths.join(root, 'results.png'),  # Written atomically.
                           [r for r in rows if r['status'] != 'failed'])
