"""tools/paper_claims.py: the noise rule, the verdicts, a tiny end-to-end report, the command."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tools import paper_claims as pc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stat(gflops, *accuracies):
  return pc.Stat(gflops=gflops, accuracies=tuple(accuracies))


def test_stat_and_tolerance_match_numpy():
  a, b = stat(1.0, 0.90, 0.92, 0.97), stat(2.0, 0.80, 0.81)
  assert a.mean == pytest.approx(np.mean([0.90, 0.92, 0.97]))
  assert a.std == pytest.approx(np.sqrt(np.sum((np.array([0.90, 0.92, 0.97]) - a.mean) ** 2) / 2))
  assert pc.tolerance(a, b) == pytest.approx(math.hypot(a.std, b.std))
  # One seed: no spread, so the 0.5-point floor decides.
  assert pc.tolerance(stat(1, 0.9), stat(1, 0.8)) == 0.005
  assert pc.compare(stat(1, 0.903), stat(1, 0.900)) == 0
  assert pc.compare(stat(1, 0.91), stat(1, 0.90)) == 1
  assert pc.compare(stat(1, 0.89), stat(1, 0.90)) == -1


def test_verdicts_follow_the_numbers():
  assert pc.pooling_verdict({'tokenlearner': stat(1, .95, .96),
                             'spatial_pool': stat(1, .90, .91)})[0]
  # A gain inside the seeds' spread is not a win.
  assert not pc.pooling_verdict({'tokenlearner': stat(1, .95, .99),
                                 'spatial_pool': stat(1, .94, .97)})[0]
  base = {'tokenfuser': stat(2, .95), 'unpool': stat(2, .90), 'reprojection': stat(3, .95),
          'no_fuser': stat(1, .94)}
  assert pc.fuser_verdict(base)[0]
  assert not pc.fuser_verdict({**base, 'unpool': stat(2, .97)})[0]
  within = {k: stat(2, .95) for k in base}
  assert not pc.fuser_verdict(within)[0]  # No difference beyond the noise: no agreement claimed.
  video = {'vivit': stat(10, .91, .92), 'tl8_loc1': stat(4, .88, .89), 'tl8_loc2': stat(7, .95)}
  agrees, sentence = pc.video_verdict(video)
  assert not agrees and 'tl8_loc1' in sentence  # loc2 costs 0.7x: not a candidate.
  video['tl8_loc2'] = stat(6, .915, .92)
  assert pc.video_verdict(video)[0]
  locations = {'vit': stat(4, .95), 'loc0': stat(1, .85), 'loc1': stat(2, .90),
               'loc2': stat(3, .948), 'loc3': stat(3.5, .96)}
  assert pc.location_verdict(locations)[0]  # loc2 (0.75x) within noise of ViT, later is better.
  assert not pc.location_verdict({**locations, 'loc2': stat(3, .93)})[0]
  tokens = {'tokens4': stat(1, .90), 'tokens8': stat(1.1, .93), 'tokens16': stat(1.2, .932)}
  assert pc.tokens_verdict(tokens)[0]
  assert not pc.tokens_verdict({**tokens, 'tokens16': stat(1.2, .96)})[0]


def test_parse_args_rejects_unknown_claims():
  with pytest.raises(SystemExit):
    pc.parse_args(['--out=/tmp/x', '--only=pooling,colour'])
  _, claims = pc.parse_args(['--out=/tmp/x', '--only=video'])
  assert [c.key for c in claims] == ['video']


def test_run_config_applies_overrides_and_schedule():
  claim = dict((c.key, c) for c in pc.CLAIMS)['pooling']
  config = pc.run_config(claim, dict(claim.runs)['spatial_pool'], seed=2, steps=40)
  assert (config.seed, config.num_train_steps, config.warmup_steps) == (2, 40, 4)
  assert tuple(map(tuple, config.model.spatial_pooling)) == ((1, 2),)
  assert config.model.tokenlearner.num_tokens == 0


def test_train_all_then_report(tmp_path, monkeypatch):
  """train_all hands each (run, seed) config to the trainer once (the trainer stands in: it writes
  the summary.json a run writes); the report tabulates those summaries and draws the figure."""
  import trainer  # pylint: disable=g-import-not-at-top
  pooling = [c for c in pc.CLAIMS if c.key == 'pooling']
  workdir, out = str(tmp_path / 'runs'), str(tmp_path / 'docs')
  calls = []

  def fake_train_and_evaluate(config, run_workdir):
    calls.append((config.model.tokenlearner.num_tokens, config.seed, config.num_train_steps))
    os.makedirs(run_workdir, exist_ok=True)
    accuracy = 0.5 + 0.1 * config.seed + 0.01 * config.model.tokenlearner.num_tokens
    with open(os.path.join(run_workdir, 'summary.json'), 'w') as f:
      json.dump({'gflops': 0.001 * (1 + config.model.tokenlearner.num_tokens), 'steps': 2,
                 'wall_time_s': 30.0, 'final_metrics': {'eval_accuracy': accuracy}}, f)

  monkeypatch.setattr(trainer, 'train_and_evaluate', fake_train_and_evaluate)
  root = lambda run: pc.run_dir(workdir, pooling[0], run, 2)
  assert root('tokenlearner') != root('spatial_pool')
  pc.train_all(pooling, workdir, seeds=2, steps_override=2, log=lambda _: None)
  assert sorted(calls) == [(0, 0, 2), (0, 1, 2), (4, 0, 2), (4, 1, 2)]
  pc.train_all(pooling, workdir, seeds=2, steps_override=2, log=lambda _: None)
  assert len(calls) == 4  # Finished runs are not trained again.
  os.remove(pc.summary_path(root('spatial_pool'), 1))
  with pytest.raises(FileNotFoundError, match='spatial_pool seed 1'):
    pc.collect(pooling[0], workdir, seeds=2, steps_override=2)
  pc.train_all(pooling, workdir, seeds=2, steps_override=2, log=lambda _: None)
  verdicts = pc.write_report(out, pooling, workdir, seeds=2, steps_override=2, note='Busy.')
  report = open(os.path.join(out, 'paper_claims.md')).read()
  # tokenlearner: 0.54 and 0.64 (mean 59.00, std 7.07); spatial_pool: 0.50 and 0.60.
  assert '| tokenlearner | 0.0050 | 59.00 | 7.07 | 54.00 | 64.00 |' in report
  assert '| spatial_pool | 0.0010 | 55.00 | 7.07 | 50.00 | 60.00 |' in report
  assert 'Wall time of the 4 training runs' in report and '2.0 min. Busy.' in report
  # +4 points, but the seeds spread 7.07 each: within the noise, so no agreement is claimed.
  stats = pc.collect(pooling[0], workdir, 2, 2)
  assert verdicts == [('pooling', False, pc.pooling_verdict(stats)[1])]
  assert 'within the noise' in verdicts[0][2] and verdicts[0][2] in report
  assert os.path.getsize(os.path.join(out, 'paper_claims_pooling.png')) > 1000


def test_equal_configs_share_one_run_directory():
  claims = {c.key: c for c in pc.CLAIMS}
  same = pc.run_dir('/w', claims['tokens'], 'tokens8', 600)
  assert same == pc.run_dir('/w', claims['location'], 'loc1', 600)
  assert same == pc.run_dir('/w', claims['fuser'], 'no_fuser', 600)
  assert same != pc.run_dir('/w', claims['tokens'], 'tokens8', 500)
  assert same != pc.run_dir('/w', claims['tokens'], 'tokens16', 600)


def test_runs_as_a_module_from_the_repository_root(subprocess_env):
  """`python -m tools.paper_claims` (the documented command) finds the library, `trainer` and
  `configs` from the repository root, with no sys.path edits of its own."""
  env = {k: v for k, v in subprocess_env().items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-m', 'tools.paper_claims', '--help'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert '--only' in out.stdout
  for tool in ('paper_claims.py', 'fault_suite.py'):
    assert 'sys.path' not in open(os.path.join(REPO, 'tools', tool)).read()
