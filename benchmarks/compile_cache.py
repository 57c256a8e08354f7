r"""What the persistent compilation cache saves at a start: the default job compiled twice.

  python -m benchmarks.compile_cache [--config=configs/digits_tokenlearner.py]

Two fresh processes, one after the other, share a fresh cache folder
(`config.compilation_cache_dir`, turned on by token_learner/train/compile_cache.py as main.py
does). Each builds the config's run and compiles its train step and its eval step (the
classification evaluator's), timing XLA's compilation (`.compile()` of the lowered steps; tracing
and lowering are not cached and are reported apart). The first start fills the cache, the second
reads it; the last line is the second start's compile time as a fraction of the first's.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/digits_tokenlearner.py', 'Config file of the job.')
flags.DEFINE_string('cache_dir', None, 'Internal: the cache folder of one start.')


def compile_steps(config_path: str, cache_dir: str) -> dict:
  """One start: the cache on in `cache_dir`, then the train and eval steps lowered and compiled;
  {'lower_s', 'compile_s', 'entries'}."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from token_learner import experiment
  from token_learner.evals import classification
  from token_learner.train import compile_cache
  from token_learner.train import metrics as metrics_lib
  from token_learner.train import setup
  # pylint: enable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('job_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.compilation_cache_dir = cache_dir
  compile_cache.enable_for(config)
  exp = experiment.from_config(config)
  run = setup.build(exp, num_train_examples=10 ** 6)
  eval_step = classification.compile_eval_step(
      run.model, run.cfg, run.mesh, run.state_shardings.params, exp.data.is_video,
      mean=exp.data.mean, std=exp.data.std)
  b = run.cfg.eval_batch_size
  eval_batch = jax.device_put(
      {'inputs': jnp.zeros((b, *run.input_shape), jnp.uint8), 'labels': jnp.zeros((b,), jnp.int32),
       'mask': jnp.ones((b,), jnp.float32)}, run.batch_sharding)
  eval_metrics = jax.jit(metrics_lib.ClassificationMetrics.empty,
                         out_shardings=run.replicated)()
  start = time.perf_counter()
  lowered = [run.train_step.lower(run.abstract_state, run.synthetic_batch(), run.dropout_rng),
             eval_step.lower(run.abstract_state.params, eval_batch, eval_metrics)]
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  for step in lowered:
    step.compile()
  return {'lower_s': lower_s, 'compile_s': time.perf_counter() - start,
          'entries': len(os.listdir(cache_dir))}


def main(argv):
  del argv
  if FLAGS.cache_dir:  # One start (a child process).
    print(json.dumps(compile_steps(FLAGS.config, FLAGS.cache_dir)), flush=True)
    return
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  with tempfile.TemporaryDirectory(prefix='compile_cache_') as cache_dir:
    starts = []
    for name in ('first (empty cache)', 'second (cache filled)'):
      out = subprocess.run([sys.executable, '-m', 'benchmarks.compile_cache',
                            f'--config={FLAGS.config}', f'--cache_dir={cache_dir}'],
                           env=env, check=True, capture_output=True, text=True).stdout
      result = json.loads(out.strip().splitlines()[-1])
      starts.append(result)
      print(f'{name}: compile {result["compile_s"]:.2f} s (lowering {result["lower_s"]:.2f} s, '
            f'not cached), {result["entries"]} cache entries', flush=True)
  print(f'second start compile / first: {starts[1]["compile_s"] / starts[0]["compile_s"]:.3f}')


if __name__ == '__main__':
  app.run(main)
