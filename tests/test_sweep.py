"""sweep.py: --dry_run command lines, entry names, and a sweep over several invocations whose
results table merges their rows (fresh / reused / failed)."""
import csv
import json
import os
import re
import sys

import pytest

import processes
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.model.num_layers=2', '--config.batch_size=16', '--config.eval_batch_size=120',
        '--config.num_train_steps=2', '--config.warmup_steps=1', '--config.log_every_steps=1',
        '--config.evals.eval.every_steps=0', '--config.checkpoint_every_steps=0']


def _sweep(env, *args):
  config = [] if any(a.startswith('--config=') for a in args) else [
      '--config=configs/digits_tokenlearner.py']
  return processes.run([sys.executable, 'sweep.py', *config, *args], REPO, env(), timeout=300)


def test_dry_run_prints_main_commands(tmp_path, subprocess_env):
  from configs import digits_tokenlearner  # pylint: disable=g-import-not-at-top
  result = _sweep(subprocess_env, f'--workdir={tmp_path}', '--dry_run',
                  '--config.num_train_steps=7')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith('python main.py')]
  names = [entry['name'] for entry in digits_tokenlearner.get_sweep()]
  assert len(lines) == len(names) and 'vit' in names
  assert f'--workdir={tmp_path}/vit' in lines[0]
  assert '--config.model.tokenlearner.num_tokens=0' in lines[0]
  assert all('--config.num_train_steps=7' in line for line in lines)
  assert not os.listdir(tmp_path)


@pytest.fixture(scope='module')
def swept(tmp_path_factory, subprocess_env):
  """WORKDIR after a two-entry sweep (in-process runs), shared by the tests below (each
  training costs a compilation)."""
  root = tmp_path_factory.mktemp('sweep') / 'sweep'
  result = _sweep(subprocess_env, f'--workdir={root}', '--only=vit,tl8_loc1_fuser', *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  return root


def _rows(root):
  return list(csv.DictReader(open(os.path.join(root, 'results.csv'))))


def test_sweep_runs_entries_and_tabulates(swept):
  rows = _rows(swept)
  assert [(row['name'], row['status']) for row in rows] == [('vit', 'fresh'),
                                                            ('tl8_loc1_fuser', 'fresh')]
  for row in rows:
    assert 0.0 <= float(row['eval_accuracy']) <= 1.0
    summary = json.load(open(os.path.join(swept, row['name'], 'summary.json')))
    assert float(row['eval_accuracy']) == summary['final_metrics']['eval_accuracy']
    assert float(row['gflops']) > 0 and int(row['num_params']) == summary['num_params']
  assert rows[0]['gflops'] != rows[1]['gflops']
  assert '| vit | fresh |' in open(os.path.join(swept, 'results.md')).read()
  with open(os.path.join(swept, 'results.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert not [n for n in os.listdir(swept) if '.tmp' in n]


def test_rerun_keeps_other_rows_relative_workdir_and_failed_entry(swept, subprocess_env):
  """`--only=tl8_loc1_fuser --subprocess` from another folder, WORKDIR relative to it, the run
  failing (a file where its checkpoint folder goes): the vit row stays (`reused`); the entry is
  `failed`, not tabulated from the summary.json its earlier run left; and main.py (run in the
  repository) used that WORKDIR: in the repository's `sweep/` it would have trained fine."""
  fuser = swept / 'tl8_loc1_fuser'
  if (fuser / 'checkpoints').exists():
    os.rename(fuser / 'checkpoints', fuser / 'checkpoints.moved')
  (fuser / 'checkpoints').write_text('not a folder: the run fails')  # planted failure
  vit_row = _rows(swept)[0]
  here = swept.parent
  result = processes.run(
      [sys.executable, os.path.join(REPO, 'sweep.py'),
       '--config=' + os.path.relpath(os.path.join(REPO, 'configs/digits_tokenlearner.py'), here),
       '--workdir=sweep', '--subprocess', '--only=tl8_loc1_fuser', *TINY],
      here, subprocess_env(), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(swept)
  assert [(row['name'], row['status']) for row in rows] == [('vit', 'reused'),
                                                            ('tl8_loc1_fuser', 'failed')]
  assert {k: v for k, v in rows[0].items() if k != 'status'} == {
      k: v for k, v in vit_row.items() if k != 'status'}
  assert rows[1]['eval_accuracy'] == '' and rows[1]['gflops'] == ''
  assert (fuser / 'summary.json').exists()  # The old summary is still there, not tabulated.
  assert not os.path.exists(os.path.join(REPO, 'sweep'))


@pytest.mark.parametrize('names, message', [
    (['a', 'a'], "name 'a' is used twice"),
    (['a', '../b'], "sweep entry 1: name '../b' must be a non-empty folder name"),
    (['x/y'], "name 'x/y' must be"),
    ([''], "name '' must be"),
    (['..'], "name '..' must be"),
])
def test_bad_entry_names_are_named(names, message):
  from token_learner import sweep_results  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=re.escape(message)):
    sweep_results.check_names([dict(name=n, overrides={}) for n in names])


def test_bad_entry_name_exits_2_from_the_command_line(tmp_path, subprocess_env):
  config = tmp_path / 'bad_sweep.py'
  config.write_text('from configs.digits_tokenlearner import get_config\n'
                    'def get_sweep():\n'
                    "  return [dict(name='ok', overrides={}), dict(name='../escape', "
                    'overrides={})]\n')
  result = _sweep(subprocess_env, f'--workdir={tmp_path}/w', f'--config={config}', *TINY)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].endswith(
      "sweep entry 1: name '../escape' must be a non-empty folder name of letters, digits and "
      '_.=+- (no "/", no "..")')
  assert not os.path.exists(tmp_path / 'w')


def test_results_merge_keeps_rows_and_order(tmp_path):
  from token_learner import sweep_results  # pylint: disable=g-import-not-at-top
  row = lambda name, acc, status='fresh': dict(
      name=name, status=status, overrides='{}', gflops=0.5, num_params=10, steps=2,
      wall_time_s=1.0, eval_accuracy=acc, eval_top5_accuracy=1.0, eval_loss=0.1, train_loss=0.2)
  sweep_results.write(str(tmp_path), [row('b', 0.5), row('c', 0.25, 'failed')])
  old = sweep_results.read(str(tmp_path))
  assert [(r['name'], r['status'], r['eval_accuracy']) for r in old] == [
      ('b', 'reused', 0.5), ('c', 'failed', 0.25)]
  merged = sweep_results.merge(old, [row('a', 0.75), row('c', 0.125)], order=['a', 'b', 'c'])
  assert [(r['name'], r['status'], r['eval_accuracy']) for r in merged] == [
      ('a', 'fresh', 0.75), ('b', 'reused', 0.5), ('c', 'fresh', 0.125)]
  assert isinstance(old[0]['gflops'], float) and old[0]['num_params'] == 10


def test_results_plot_has_one_point_per_finished_run(tmp_path, monkeypatch):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from token_learner import plots  # pylint: disable=g-import-not-at-top
  points = []
  monkeypatch.setattr(plt.Axes, 'scatter', lambda self, x, y, **kw: points.append((x, y)))
  rows = [dict(name='a', gflops=0.5, eval_accuracy=0.9), dict(name='b', gflops=1.0,
                                                              eval_accuracy=0.95),
          dict(name='failed', gflops='', eval_accuracy='failed')]
  plots.accuracy_vs_gflops(str(tmp_path / 'r.png'), rows)
  assert points == [(0.5, 90.0), (1.0, 95.0)]
  assert os.path.getsize(tmp_path / 'r.png') > 1000
