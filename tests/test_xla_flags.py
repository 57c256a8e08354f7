"""Tests of token_learner/train/xla_flags.py: the GPU defaults, when they apply, and that they
reach XLA (set after `import jax`, before the backend initialises)."""
import os
import subprocess
import sys
import textwrap

import pytest

from token_learner.train import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = lambda name: name == 'jax_cuda12_plugin'  # A machine with jax[cuda12] installed.
NOTHING = lambda name: False


@pytest.mark.parametrize('environ, installed, gpu', [
    ({}, CUDA, True),  # JAX_PLATFORMS unset: the installed CUDA plugin decides.
    ({}, NOTHING, False),
    ({}, lambda name: name in ('jax_cuda12_plugin', 'libtpu'), False),  # JAX prefers the TPU.
    ({'JAX_PLATFORMS': 'cuda'}, NOTHING, True),
    ({'JAX_PLATFORMS': 'gpu,cpu'}, NOTHING, True),
    ({'JAX_PLATFORMS': 'cpu'}, CUDA, False),
    ({'JAX_PLATFORMS': 'tpu'}, CUDA, False),
    ({'JAX_PLATFORM_NAME': 'cpu'}, CUDA, False),
])
def test_will_use_gpu(environ, installed, gpu):
  assert xla_flags.will_use_gpu(environ, installed) == gpu


def test_defaults_are_set_for_a_gpu_only_when_the_user_set_none():
  environ = {}
  assert xla_flags.apply_defaults(environ, CUDA) == xla_flags.gpu_flags()
  assert environ['XLA_FLAGS'] == xla_flags.gpu_flags()
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in environ['XLA_FLAGS'].split()
  assert any(f.startswith('--xla_gpu_all_reduce_combine_threshold_bytes=')
             for f in environ['XLA_FLAGS'].split())
  for users in ('--xla_dump_to=/tmp/hlo', ''):  # A user's XLA_FLAGS wins, even an empty one.
    environ = {'XLA_FLAGS': users}
    assert xla_flags.apply_defaults(environ, CUDA) is None and environ == {'XLA_FLAGS': users}
  environ = {'JAX_PLATFORMS': 'cpu'}
  assert xla_flags.apply_defaults(environ, CUDA) is None and environ == {'JAX_PLATFORMS': 'cpu'}


def _python(code, **env):
  environ = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  environ.update(JAX_PLATFORMS='cpu', **env)
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, env=environ,
                        capture_output=True, text=True, timeout=300)


def test_flags_set_after_importing_jax_reach_xla_and_are_known_to_it():
  # XLA parses XLA_FLAGS at the first device query, not at `import jax`; it aborts on a flag it
  # does not know, GPU flags included, so the defaults parsing on CPU shows they exist in this
  # jaxlib. The simulated device count shows the flags were read.
  proc = _python(f"""\
      import os, jax
      from jax._src import xla_bridge
      import main  # main.py's imports initialise no backend: its main() sets flags in time.
      assert not xla_bridge.backends_are_initialized()
      os.environ['XLA_FLAGS'] = {xla_flags.gpu_flags()!r} + ' --xla_force_host_platform_device_count=3'
      print('devices', jax.device_count())
      """)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'devices 3' in proc.stdout
  bogus = _python('import jax; jax.devices()', XLA_FLAGS='--xla_gpu_no_such_flag=true')
  assert bogus.returncode != 0 and 'Unknown flag' in bogus.stderr
