"""main.py in subprocesses: 2 processes (jax.distributed, gloo) x 2 CPU devices == 1 process x 4
devices; a run killed with SIGKILL and restarted == an uninterrupted run, bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import processes
import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'model.num_layers': 1, 'model.tokenlearner.num_tokens': 4, 'model.tokenlearner.loc': 1,
    'batch_size': 16, 'eval_batch_size': 64, 'num_train_steps': 4, 'warmup_steps': 2,
    'log_every_steps': 2, 'checkpoint_every_steps': 2,
    'keep_checkpoints': 5,
}


def test_two_processes_match_one_process(tmp_path, subprocess_env, tiny_config,
                                        restore_params):
  workdir = str(tmp_path / 'two')
  command = [sys.executable, 'main.py', '--config=configs/digits_tokenlearner.py',
             f'--workdir={workdir}']
  command += [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  codes, outputs = processes.run_processes(command, REPO, subprocess_env(num_devices=2),
                                           timeout=240)
  for code, out in zip(codes, outputs):
    assert code == 0, out[-3000:]
  two = json.load(open(os.path.join(workdir, 'summary.json')))
  assert two['num_processes'] == 2 and two['num_devices'] == 4

  one_dir = str(tmp_path / 'one')
  one = trainer.train_and_evaluate(tiny_config(**OVERRIDES), one_dir,
                                   devices=jax.devices()[:4])
  assert two['final_metrics']['eval_num_examples'] == one['eval_num_examples'] == 360
  for key in ('eval_loss', 'eval_accuracy', 'train_loss'):
    assert two['final_metrics'][key] == pytest.approx(one[key], abs=1e-5), key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               restore_params(workdir, 4), restore_params(one_dir, 4))


def test_sigkilled_run_resumes_bit_identical(tmp_path, subprocess_env, restore_params):
  overrides = dict(OVERRIDES, num_train_steps=60, checkpoint_every_steps=5, keep_checkpoints=2,
                   log_every_steps=50, **{'model.dropout_rate': 0.1})
  env = subprocess_env(num_devices=2)

  def command(workdir):
    return [sys.executable, 'main.py', '--config=configs/digits_tokenlearner.py',
            f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()]

  killed, reference = str(tmp_path / 'killed'), str(tmp_path / 'reference')
  log = open(tmp_path / 'reference.log', 'w')
  uninterrupted = subprocess.Popen(command(reference), cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=log)
  first = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  checkpoints = os.path.join(killed, 'checkpoints')
  deadline = time.time() + 240
  while not (os.path.isdir(checkpoints) and '5' in os.listdir(checkpoints)):
    assert first.poll() is None and time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)
  first.send_signal(signal.SIGKILL)  # Mid-training, possibly mid-save.
  first.wait()
  assert not os.path.exists(os.path.join(killed, 'summary.json'))
  resumed = subprocess.run(command(killed), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=240)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming at step' in resumed.stderr
  assert uninterrupted.wait(timeout=240) == 0, open(tmp_path / 'reference.log').read()[-3000:]
  jax.tree.map(np.testing.assert_array_equal, restore_params(killed, 60),
               restore_params(reference, 60))
