"""The trainer on a gs:// workdir, against a real GCS-protocol server (tests/gcs_emulator.py):
a run SIGKILLed mid-training resumes bit-identically to an uninterrupted one, evaluate.py reads
the workdir, two processes save and restore together through the bucket, TensorBoard events
land in the bucket, and no local folder named `gs:` is ever made."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

from gcs_emulator import BUCKET, gcs, gcs_server  # pylint: disable=unused-import
import processes
import evaluate
from token_learner import paths
from token_learner.train import checkpoints
from token_learner.train import logger
from token_learner.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
CONFIG = {
    'model.num_layers': 1, 'model.tokenlearner.num_tokens': 4, 'model.tokenlearner.loc': 1,
    'model.dropout_rate': 0.1, 'batch_size': 16, 'eval_batch_size': 64,
    'num_train_steps': STEPS, 'warmup_steps': 2, 'log_every_steps': 3,
    'checkpoint_every_steps': 6, 'keep_checkpoints': 2,  # Each save to the emulator: ~1.5 s.
}


def _main_command(workdir, overrides, *extra):
  return [sys.executable, os.path.join(REPO, 'main.py'),
          f'--config={os.path.join(REPO, "configs", "digits_tokenlearner.py")}',
          f'--workdir={workdir}', *extra] + [f'--config.{k}={v}' for k, v in overrides.items()]


def _params(workdir, step):
  return checkpoints.restore_params(paths.join(workdir, checkpoints.CHECKPOINTS, str(step)))


@pytest.fixture(scope='module')
def runs(gcs, tiny_config, subprocess_env, tmp_path_factory):
  """A run SIGKILLed mid-training (main.py) and resumed in-process, and an uninterrupted
  in-process run, both in gs://; every process works in an empty local folder `cwd`."""
  cwd = tmp_path_factory.mktemp('cwd')
  prefix = f'runs-{uuid.uuid4().hex[:8]}'
  killed, reference = (f'gs://{BUCKET}/{prefix}/killed', f'gs://{BUCKET}/{prefix}/reference')
  env = dict(subprocess_env(num_devices=8), **gcs.env)
  # The child compiles into this session's cache, so the in-process runs below reuse its programs.
  env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  log = open(cwd.parent / 'killed.log', 'w')
  first = processes.popen(_main_command(killed, CONFIG), cwd, env, stdout=log,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not any(n.startswith(f'{prefix}/killed/checkpoints/6/') for n in gcs.objects(prefix)):
    assert first.poll() is None and time.time() < deadline, open(log.name).read()[-3000:]
    time.sleep(0.05)
  first.send_signal(signal.SIGKILL)  # Mid-training, possibly mid-save.
  first.wait()
  before_resume = gcs.objects(f'{prefix}/killed/')
  old_cwd = os.getcwd()
  os.chdir(cwd)
  try:
    resumed = loop.train_and_evaluate(tiny_config(**CONFIG), killed)
    uninterrupted = loop.train_and_evaluate(tiny_config(**CONFIG), reference)
  finally:
    os.chdir(old_cwd)
  return dict(killed=killed, reference=reference, resumed=resumed, prefix=prefix,
              uninterrupted=uninterrupted, before_resume=before_resume, cwd=cwd, env=env)


def test_killed_run_resumes_bit_identically_in_the_bucket(runs, gcs):
  killed = [n[len(runs['prefix']) + 1:] for n in runs['before_resume']]
  assert not any(n.endswith('summary.json') for n in killed)  # Killed before the end.
  assert any(n.startswith('killed/checkpoints/6/') for n in killed)
  for key in ('eval_accuracy', 'eval_loss', 'train_loss', 'step'):
    assert runs['resumed'][key] == runs['uninterrupted'][key], key
  jax.tree.map(np.testing.assert_array_equal, _params(runs['killed'], STEPS),
               _params(runs['reference'], STEPS))
  summary = json.loads(paths.read_text(paths.join(runs['killed'], 'summary.json')))
  assert summary['steps'] == STEPS
  names = gcs.objects(runs['prefix'])
  assert f'{runs["prefix"]}/killed/summary.json' in names
  assert not [n for n in names if n.endswith('workdir.lock')]  # Released by both runs.


def test_tensorboard_events_in_the_bucket_each_step_once(runs, gcs):
  events = [n for n in gcs.objects(f'{runs["prefix"]}/killed/') if '.tfevents.' in n
            and '/events_before.' not in n]  # Set aside if the kill tore the first save.
  assert 1 <= len(events) <= 2, events  # The killed process's file and the resumed one's.
  steps = logger._logged_steps(runs['killed'])  # pylint: disable=protected-access
  assert steps['train_loss'] == STEPS and steps['eval_accuracy'] == STEPS
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TF's own reader, via gs://.
  seen = {}
  for name in events:
    for event in tf.compat.v1.train.summary_iterator(f'gs://{BUCKET}/{name}'):
      for value in event.summary.value:
        if value.tag == 'train_loss':
          seen.setdefault(event.step, 0)
          seen[event.step] += 1
  every = CONFIG['log_every_steps']
  assert seen == {s: 1 for s in range(every, STEPS + 1, every)}


def test_evaluate_reads_the_bucket_workdir(runs):
  result = evaluate.evaluate_checkpoint(None, runs['killed'])
  assert result['step'] == STEPS
  assert result['eval_accuracy'] == pytest.approx(runs['resumed']['eval_accuracy'], abs=1e-6)
  assert result['eval_loss'] == pytest.approx(runs['resumed']['eval_loss'], rel=1e-5)


def _two_processes(command, cwd, env):
  """Runs `command` as processes 0 and 1 of one run; their (return codes, outputs)."""
  return processes.run_processes(command, cwd, env, timeout=300)


def test_two_processes_restore_and_save_together_in_the_bucket(runs, gcs, tiny_config):
  """A 2 x 4-device run on the killed run's workdir: first, with another live run's lock
  there, both processes exit 2 before compiling, naming the holder, and write nothing; then
  both restore step STEPS from the bucket and save step STEPS + 2 together, and the result
  matches one process."""
  more = dict(CONFIG, num_train_steps=STEPS + 2, checkpoint_every_steps=2)
  command = _main_command(runs['killed'], more, '--allow_config_change=num_train_steps')
  env = dict(runs['env'], XLA_FLAGS=runs['env']['XLA_FLAGS'].replace('count=8', 'count=4'))
  lock = paths.join(runs['killed'], 'workdir.lock')
  paths.write_text_atomic(lock, json.dumps(dict(  # A live holder: its heartbeat is ahead.
      host='another-host', pid=4242, start_time=1.7e9, heartbeat=time.time() + 3600,
      token='rival')))
  before = gcs.objects(f'{runs["prefix"]}/killed/')
  codes, outputs = _two_processes(command, runs['cwd'], env)
  for code, out in zip(codes, outputs):
    assert code == 2, out[-3000:]
    assert (f'main.py: workdir {runs["killed"]} is in use by another run (host another-host, '
            'pid 4242, started 2023-11-14 22:13:20 UTC') in out, out[-3000:]
    assert 'Train step:' not in out  # Refused before the train step was compiled.
  assert gcs.objects(f'{runs["prefix"]}/killed/') == before
  paths.remove(lock)

  codes, outputs = _two_processes(command, runs['cwd'], env)
  for code, out in zip(codes, outputs):
    assert code == 0, out[-3000:]
    assert f'Resuming at step {STEPS}' in out
  one = loop.train_and_evaluate(tiny_config(**more), runs['reference'],
                                allow_config_change=['num_train_steps'])
  summary = json.loads(paths.read_text(paths.join(runs['killed'], 'summary.json')))
  assert summary['num_processes'] == 2 and summary['steps'] == STEPS + 2
  assert summary['final_metrics']['eval_accuracy'] == pytest.approx(one['eval_accuracy'],
                                                                    abs=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               _params(runs['killed'], STEPS + 2), _params(runs['reference'], STEPS + 2))
  assert not paths.exists(lock)  # Released by process 0.


def test_no_local_folder_named_gs(runs):
  """os.path.abspath('gs://b/run') is ./gs:/b/run: nothing may make such a folder."""
  for top in (runs['cwd'], REPO):
    for root, dirs, files in os.walk(top):
      dirs[:] = [d for d in dirs if d not in ('.git', '__pycache__')]
      assert not [n for n in dirs + files if n.startswith('gs:')], root


def test_path_calls_on_a_url_stay_in_the_bucket(gcs, tmp_path, monkeypatch):
  """The checkpoint layer's own path calls on a gs:// workdir: the probe and manager folder go
  to the bucket (not ./gs:/...), no free-space probe runs there."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(os, 'statvfs', lambda path: pytest.fail(f'statvfs({path!r}) on a URL'))
  prefix = f'paths-{uuid.uuid4().hex[:8]}'
  workdir = f'gs://{BUCKET}/{prefix}'
  checkpoints.check_writable(workdir, needed_bytes=2**40)
  manager = checkpoints.manager(workdir, keep=1)
  assert os.fspath(manager.directory) == f'{workdir}/checkpoints'
  manager.close()
  paths.write_text_atomic(paths.join(workdir, 'checkpoints', '7', 'default', 'x'), '')
  assert checkpoints.item_dir(workdir) == f'{workdir}/checkpoints/7/default'
  assert not os.listdir(tmp_path)
  assert not [n for n in gcs.objects(prefix) if '.write_probe' in n]  # Removed after probing.
