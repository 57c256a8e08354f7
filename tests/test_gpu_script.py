"""benchmarks/gpu.sh and benchmarks/gpu.py: one clear line without a GPU, the TF-free import
path, a tiny group end to end on CPU, and the ViViT group matching the Kinetics config."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

from benchmarks import gpu
import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
  """This environment on the CPU, without the tests' 8 simulated devices (XLA_FLAGS unset: the
  scripts choose their flags) unless `extra` sets them."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return dict(env, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', **extra)


def test_gpu_sh_without_a_gpu_prints_one_line_and_fails_fast(tmp_path):
  out = tmp_path / 'gpu.json'
  start = time.monotonic()
  proc = subprocess.run(['bash', os.path.join(REPO, 'benchmarks', 'gpu.sh'), f'--out={out}'],
                        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
  seconds = time.monotonic() - start
  assert proc.returncode != 0
  assert proc.stdout.splitlines() == [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(proc.stdout.splitlines()) == 1 and 'no GPU backend' in proc.stdout, proc.stdout
  assert seconds < 20, seconds
  assert not out.exists()


def test_gpu_py_imports_no_tensorflow_clu_or_ml_collections():
  # The module and everything its children import (the run builder, the FLOP counts), in a
  # fresh interpreter: a machine with the JAX stack alone runs it.
  code = textwrap.dedent(f"""\
      import sys
      from benchmarks import gpu
      for name in ('vit', 'tl', 'vivit_memory'):
        gpu.experiment_dict(gpu.SETTINGS['gpu'], name)
      from token_learner import flops
      from token_learner.train import setup, throughput, xla_flags
      print('LOADED', [m for m in {gpu.HEAVY_MODULES!r} if m in sys.modules])
      """)
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'LOADED []' in proc.stdout, proc.stdout


def test_cpu_smoke_group_writes_gpu_json(tmp_path):
  out = tmp_path / 'gpu.json'
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.gpu', '--cpu_smoke', '--groups=tl',
                         f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=600,
                        # Compiled fast, as in the other tests (a GPU run's flags are never set
                        # on a CPU, so this changes no code path).
                        env=_env(XLA_FLAGS=' '.join(conftest.FAST_COMPILE_FLAGS)))
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert '[tl] TL-Ti/16 4-TL at 1 train:' in proc.stdout and 'wrote' in proc.stdout
  report = json.loads(out.read_text())
  assert report['mode'] == 'cpu_smoke' and list(report['groups']) == ['backend', 'tl']
  assert report['groups']['backend']['results']['backend'] == 'cpu'
  tl = report['groups']['tl']
  assert tl['status'] == 'ok'
  results = tl['results']
  for key in ('train_img_per_sec', 'train_step_tflops', 'train_tflops_per_sec', 'mfu',
              'forward_img_per_sec', 'forward_gflops_per_img', 'forward_mfu'):
    assert results[key] > 0, key
  assert 'peak_memory_bytes' in results and 'attention_implementation' in results
  assert results['heavy_modules_loaded'] == []
  # Model FLOPs of the step exceed 2x the forward pass's on the batch (forward + backward).
  assert results['train_step_tflops'] * 1e3 > 2 * results['forward_gflops_per_img'] * 2

def test_vivit_group_is_the_kinetics_config_at_its_per_device_batch():
  from configs import kinetics400_tokenlearner  # pylint: disable=g-import-not-at-top
  from token_learner import experiment  # pylint: disable=g-import-not-at-top
  kinetics = experiment.from_config(kinetics400_tokenlearner.get_config())
  ours = gpu.experiment_dict(gpu.SETTINGS['gpu'], 'vivit_memory')
  assert ours.model == dataclasses.replace(kinetics.model, dtype='bfloat16')
  assert gpu.SETTINGS['gpu']['video_batch'] * 8 == kinetics.train.batch_size  # 8 GPUs a node.
  for field in ('optimizer', 'label_smoothing', 'grad_clip_norm', 'momentum'):
    assert getattr(ours.train, field) == getattr(kinetics.train, field), field
