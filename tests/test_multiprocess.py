"""main.py in subprocesses: 2 processes (jax.distributed, gloo) x 4 CPU devices == 1 process x 8
devices; a run killed with SIGKILL mid-training and restarted == an uninterrupted run, bit for
bit."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY_OVERRIDES
import processes
import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_command(workdir, overrides=None):
  return [sys.executable, 'main.py', '--config=configs/digits_tokenlearner.py',
          f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in (overrides or {}).items()]


def test_two_processes_match_one_process(tmp_path, subprocess_env, trained_workdir,
                                        restore_params):
  """The tiny job as 2 processes x 4 devices (from scratch: init, data per process, saves of
  both) against the shared one-process 8-device run of it (`trained_workdir`)."""
  workdir = str(tmp_path / 'two')
  codes, outputs = processes.run_processes(_main_command(workdir, TINY_OVERRIDES), REPO,
                                           subprocess_env(num_devices=4), timeout=240)
  for code, out in zip(codes, outputs):
    assert code == 0, out[-3000:]
  two = json.load(open(os.path.join(workdir, 'summary.json')))
  one = json.load(open(os.path.join(trained_workdir, 'summary.json')))
  assert two['num_processes'] == 2 and two['num_devices'] == 8 and one['num_processes'] == 1
  assert two['final_metrics']['eval_num_examples'] == 360
  for key in ('eval_loss', 'eval_accuracy', 'train_loss', 'step'):
    assert two['final_metrics'][key] == pytest.approx(one['final_metrics'][key], abs=1e-5), key
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']
  # Summed across processes in another order: float32 rounding (the key biases, whose exact
  # gradient is 0, are rounding alone), far below what one wrong batch or shard would change.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=3e-5),
               restore_params(workdir, 6), restore_params(trained_workdir, 6))


def test_sigkilled_run_resumes_bit_identical(tmp_path, subprocess_env, tiny_config,
                                             trained_workdir, restore_params, caplog):
  """main.py of the tiny job SIGKILLed after its first checkpoint (mid-training, possibly
  mid-save), resumed: the same parameters, bit for bit, and the same metrics as the shared
  uninterrupted run (`trained_workdir`). Resumes with random numbers drawn every step (dropout,
  mixup) are test_gcs.py's. The child runs on the same 8 devices as that run, so it loads its
  compiled programs."""
  killed = str(tmp_path / 'killed')
  log = open(tmp_path / 'killed.log', 'w')
  first = processes.popen(_main_command(killed, TINY_OVERRIDES), REPO,
                          subprocess_env(num_devices=8), stdout=log, stderr=subprocess.STDOUT)
  checkpoint_dir = os.path.join(killed, 'checkpoints')
  deadline = time.time() + 240
  while not (os.path.isdir(checkpoint_dir) and '2' in os.listdir(checkpoint_dir)):
    assert first.poll() is None and time.time() < deadline, open(log.name).read()[-3000:]
    time.sleep(0.01)
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert not os.path.exists(os.path.join(killed, 'summary.json'))  # Killed before the end.

  caplog.set_level(logging.INFO)
  resumed = trainer.train_and_evaluate(tiny_config(), killed)
  assert 'Resuming at step' in caplog.text
  uninterrupted = json.load(open(os.path.join(trained_workdir, 'summary.json')))['final_metrics']
  for key in ('eval_loss', 'eval_accuracy', 'train_loss', 'step'):
    assert resumed[key] == uninterrupted[key], key
  jax.tree.map(np.testing.assert_array_equal, restore_params(killed, 6),
               restore_params(trained_workdir, 6))
