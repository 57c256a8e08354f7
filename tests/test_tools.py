"""Tools on a trained run: visualize.py (token maps, diagnostics by hand), evaluate.py."""
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import processes
from token_learner import build_model
from token_learner import diagnostics
from token_learner import experiment as experiment_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_token_stats_by_hand():
  # One frame, 2 tokens over 2x1 positions: token 0 uniform, token 1 on position 0.
  maps = np.array([[[[0.3], [0.3]], [[2.0], [0.0]]]])  # [B=1, S=2, H=2, W=1]
  stats = diagnostics.token_stats(maps)
  assert stats['entropy'] == pytest.approx((1.0 + 0.0) / 2)  # log 2 / log 2 and 0
  assert stats['overlap'] == pytest.approx(0.5)  # min(.5, 1) + min(.5, 0)
  collapsed = np.ones((3, 2, 4, 4, 4))  # video [B, T, S, H, W], all tokens uniform
  assert diagnostics.token_stats(collapsed) == pytest.approx({'entropy': 1.0, 'overlap': 1.0})
  disjoint = np.eye(4).reshape(1, 4, 2, 2)  # 4 tokens, each on its own position
  assert diagnostics.token_stats(disjoint) == pytest.approx({'entropy': 0.0, 'overlap': 0.0})
  both = diagnostics.all_token_stats([maps, disjoint])
  assert both['tokenlearner_1/overlap'] == 0.0 and both['tokenlearner_0/entropy'] == 0.5


@pytest.fixture(scope='module')
def trained(tmp_path_factory, trained_workdir):
  """A copy of the shared finished run of the tiny default job (checkpoints 2, 4, 6), which
  these tests write into: (workdir, its final metrics)."""
  workdir = str(tmp_path_factory.mktemp('run') / 'workdir')
  shutil.copytree(trained_workdir, workdir)
  return workdir, json.load(open(os.path.join(workdir, 'summary.json')))['final_metrics']


def _listing(folder):
  return sorted((os.path.relpath(os.path.join(d, f), folder),
                 os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(folder) for f in files)


def test_evaluate_command_reproduces_the_run_and_writes_nothing_else(trained, subprocess_env):
  workdir, final = trained
  before = _listing(os.path.join(workdir, 'checkpoints'))
  # The config comes from the checkpoint itself, not from summary.json (which a run killed
  # before its end has not written).
  os.rename(os.path.join(workdir, 'summary.json'), os.path.join(workdir, 'summary.json.away'))
  out = processes.run([sys.executable, 'evaluate.py', f'--workdir={workdir}'], REPO,
                      subprocess_env(num_devices=2), timeout=180)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, 'eval_6_test_eval.json')))
  assert result['step'] == 6 and result['split'] == 'test'
  for key in ('eval_loss', 'eval_accuracy', 'eval_top5_accuracy', 'eval_num_examples'):
    assert result[key] == pytest.approx(final[key], abs=1e-6), key
  assert _listing(os.path.join(workdir, 'checkpoints')) == before
  # An earlier step, on another split: a different model state, the split's own size.
  out = processes.run([sys.executable, 'evaluate.py', f'--workdir={workdir}', '--step=2',
                       '--split=train[:100]', '--fewshot',
                       '--config=configs/digits_tokenlearner.py',
                       '--config.model.num_layers=1', '--config.model.tokenlearner.num_tokens=4',
                       '--config.model.tokenlearner.loc=1'], REPO, subprocess_env(),
                      timeout=180)
  assert out.returncode == 0, out.stderr[-3000:]
  early = json.load(open(os.path.join(workdir, 'eval_2_train--100-_eval+fewshot.json')))
  assert early['step'] == 2 and early['eval_num_examples'] == 100
  assert 0.0 <= early['fewshot_1shot'] <= 1.0 and 0.0 <= early['fewshot_25shot'] <= 1.0
  assert early['eval_accuracy'] != result['eval_accuracy']  # Another state, another split.


def test_visualize_command_on_a_trained_run(trained, subprocess_env):
  workdir, _ = trained
  out = processes.run([sys.executable, 'visualize.py', f'--workdir={workdir}',
                       '--num_examples=3'], REPO, subprocess_env(), timeout=180)
  assert out.returncode == 0, out.stderr[-3000:]
  files = sorted(os.listdir(os.path.join(workdir, 'maps')))
  assert files == ['example_0.png', 'example_1.png', 'example_2.png', 'token_stats.json']
  stats = json.load(open(os.path.join(workdir, 'maps', 'token_stats.json')))
  assert set(stats) == {'tokenlearner_0/entropy', 'tokenlearner_0/overlap'}
  assert 0.0 <= stats['tokenlearner_0/entropy'] <= 1.0


def test_video_figures_frames_by_tokens(tmp_path):
  from configs import moving_digits_tokenlearner  # pylint: disable=g-import-not-at-top
  from token_learner.evals import attention_maps  # pylint: disable=g-import-not-at-top
  config = moving_digits_tokenlearner.get_config()
  config.update_from_flattened_dict({'model.num_layers': 2, 'dataset.image_size': 16,
                                     'dataset.num_frames': 4, 'model.tokenlearner.num_tokens': 3})
  experiment = experiment_lib.from_config(config)
  inputs = attention_maps.examples(experiment.data, 'test', 2)
  assert inputs.shape == (2, 4, 16, 16, 3)
  model = build_model(experiment.model)
  assert inputs.dtype == np.uint8  # Pixels, as batches carry them; the maps normalise them.
  params = model.init(jax.random.key(0), jnp.zeros(inputs.shape), train=False)['params']
  stats = attention_maps.render(experiment, params, inputs, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['example_0.png', 'example_1.png', 'token_stats.json']
  assert set(stats) == {'tokenlearner_0/entropy', 'tokenlearner_0/overlap'}
