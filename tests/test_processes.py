"""tests/processes.py: a command forked by the zygote behaves as the same command started fresh
(exit status, stderr, working directory, device count from XLA_FLAGS, signals)."""
import os
import signal
import subprocess
import sys

import processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_forked_command_matches_a_fresh_one(tmp_path, subprocess_env):
  """A config error (exit 2, one line naming the field) from a relative config path in another
  working directory, forked and fresh: the same status and the same lines on stderr; the
  forked one is a child of the zygote, not of this process."""
  config = os.path.relpath(os.path.join(REPO, 'configs', 'digits_tokenlearner.py'), tmp_path)
  command = lambda workdir: [sys.executable, os.path.join(REPO, 'main.py'), f'--config={config}',
                             f'--workdir={workdir}', '--config.num_train_steps=2']
  env = subprocess_env(num_devices=2)
  fresh = subprocess.run(command('fresh'), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
  process = processes.popen(command('popen'), tmp_path, env)
  assert isinstance(process, processes.ForkedProcess)
  process.wait(300)
  forked = processes.run(command('forked'), tmp_path, env, timeout=300)
  assert fresh.returncode == forked.returncode == process.returncode == 2, fresh.stderr[-2000:]
  error = [l for l in fresh.stderr.splitlines() if l.startswith('main.py:')]
  assert error == [l for l in forked.stderr.splitlines() if l.startswith('main.py:')]
  assert len(error) == 1 and 'warmup_steps' in error[0], fresh.stderr[-2000:]
  # The relative workdir is in the working directory, with what the fresh run left there.
  assert sorted(os.listdir(tmp_path)) == ['forked', 'fresh', 'popen']
  assert os.listdir(tmp_path / 'forked') == os.listdir(tmp_path / 'fresh')
  assert _devices(fresh.stderr) == _devices(forked.stderr) == 2


def _devices(stderr):
  """The number of devices main.py logged it has."""
  line = next(l for l in stderr.splitlines() if 'local devices:' in l)
  return line.count('CpuDevice(')


def test_forked_command_reads_its_own_device_count_and_signals_reach_it(tmp_path,
                                                                        subprocess_env):
  """XLA_FLAGS is the child's (the zygote never started a backend): the same command on 3
  devices has 3; a SIGKILLed child reports -9, as subprocess does."""
  command = [sys.executable, 'main.py', '--config=configs/digits_tokenlearner.py',
             f'--workdir={tmp_path}/run']
  out = processes.run(command + ['--config.num_train_steps=2'], REPO,
                      subprocess_env(num_devices=3), timeout=300)
  assert out.returncode == 2 and _devices(out.stderr) == 3, out.stderr[-2000:]
  process = processes.popen(command, REPO, subprocess_env())
  process.send_signal(signal.SIGKILL)
  assert process.wait(60) == -signal.SIGKILL
