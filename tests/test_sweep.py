"""sweep.py: --dry_run command lines, and a two-entry sweep that writes results.csv / .md."""
import csv
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.model.num_layers=2', '--config.batch_size=16', '--config.eval_batch_size=120',
        '--config.num_train_steps=2', '--config.warmup_steps=1', '--config.log_every_steps=1',
        '--config.evals.eval.every_steps=0', '--config.checkpoint_every_steps=0']


def _sweep(env, *args):
  return subprocess.run([sys.executable, 'sweep.py', '--config=configs/digits_tokenlearner.py',
                         *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


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


def test_sweep_runs_entries_and_tabulates(tmp_path, subprocess_env):
  result = _sweep(subprocess_env, f'--workdir={tmp_path}', '--only=vit,tl8_loc1_fuser', *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(os.path.join(tmp_path, 'results.csv'))))
  assert [row['name'] for row in rows] == ['vit', 'tl8_loc1_fuser']
  for row in rows:
    assert 0.0 <= float(row['eval_accuracy']) <= 1.0
    assert float(row['gflops']) > 0 and int(row['num_params']) > 0
    assert os.path.exists(os.path.join(tmp_path, row['name'], 'summary.json'))
  assert rows[0]['gflops'] != rows[1]['gflops']
  assert '| vit |' in open(os.path.join(tmp_path, 'results.md')).read()
  with open(os.path.join(tmp_path, 'results.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


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
