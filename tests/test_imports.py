"""Imports in layers: the modules, the models and the config boundary load no training stack.

Each import runs in a fresh interpreter (`python -c`, JAX on CPU) that records, for every
forbidden module, the chain of modules whose import first pulled it in; the test fails naming the
heavy module and that chain (`__main__ -> token_learner.data -> token_learner.data.images ->
tensorflow`). Add an entry to MODEL_IMPORTS (strict) or LIGHT_IMPORTS to hold a new layer to it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Nothing below the trainer may load these: the input pipeline (TF / TFDS), video decoding (av),
# plotting, checkpointing (orbax) and metric writers (clu).
FORBIDDEN = ('tensorflow', 'tensorflow_datasets', 'matplotlib', 'av', 'orbax', 'clu')
# The modules and models need only jax, flax, einops and numpy.
FORBIDDEN_FOR_MODELS = FORBIDDEN + ('optax', 'ml_collections')

# (description, code run in a fresh interpreter from the repository root) held to
# FORBIDDEN_FOR_MODELS.
MODEL_IMPORTS = [
    ('the modules and models',
     'from token_learner import TokenLearner, TokenLearnerV11, TokenFuser, build_model'),
    ('the dataset dataclasses', 'import token_learner.data.config'),
    ('the init_from dataclass', 'from token_learner.init_config import InitConfig'),
    ('the Hugging Face / timm key mapping', 'import token_learner.hf_timm'),
]

_CONFIGS = textwrap.dedent("""\
    import importlib, pkgutil
    import configs
    from token_learner import experiment
    for info in pkgutil.iter_modules(configs.__path__):
      module = importlib.import_module('configs.' + info.name)
      if hasattr(module, 'get_config'):
        {}
    """)

# (description, code run in a fresh interpreter from the repository root) held to FORBIDDEN.
LIGHT_IMPORTS = [
    ('the data layer (no data read)', 'from token_learner import data'),
    # flax.nnx itself imports optax (flax.nnx.helpers), so the NNX layer is held to FORBIDDEN.
    ('the NNX modules and models', 'import token_learner.nnx'),
    ('the config boundary', 'import token_learner.experiment'),
    ('every configs/*.py get_config()', _CONFIGS.format('module.get_config()')),
    ('experiment.from_config of every config',
     _CONFIGS.format('experiment.from_config(module.get_config())')),
    ('the train step and the run builder (a GPU machine with only the JAX stack)',
     'from token_learner.train import setup, step\n'
     'from token_learner import experiment\n'
     'from configs import digits_tokenlearner\n'
     'config = digits_tokenlearner.get_config()\n'
     'config.model.num_layers = 1  # The same imports as the full model, a smaller compile.\n'
     'run = setup.build(experiment.from_config(config))\n'
     'state, metrics = run.train_step(run.init_state(), run.synthetic_batch(8), run.dropout_rng)\n'
     'assert metrics["loss"] > 0'),
    ('the evaluator configs', 'from token_learner.evals import config'),
]

# Runs `code` (argv[1]) with an import hook that records who first imports each watched module
# (argv[2], JSON), then prints {module: chain} for those in sys.modules.
_PROBE = textwrap.dedent("""\
    import json, sys
    code, watched = sys.argv[1], set(json.loads(sys.argv[2]))
    chains = {}

    class _Watch:
      def find_spec(self, name, path=None, target=None):
        top = name.partition('.')[0]
        if top in watched and top not in chains:
          names, frame = [name], sys._getframe(1)
          while frame is not None:
            module = frame.f_globals.get('__name__') or '?'
            if not module.startswith(('importlib', '_frozen_importlib')) and module != names[-1]:
              names.append(module)
            frame = frame.f_back
          chains[top] = ' -> '.join(reversed(names))
        return None

    sys.meta_path.insert(0, _Watch())
    exec(compile(code, '<import under test>', 'exec'), {'__name__': '__main__'})
    print('LOADED=' + json.dumps({m: chains.get(m, '?') for m in sorted(watched)
                                  if m in sys.modules}))
    """)


def _run(code, watched=FORBIDDEN_FOR_MODELS):
  """{forbidden module: import chain} of the modules `code` loaded, in a fresh interpreter."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run([sys.executable, '-c', _PROBE, code, json.dumps(sorted(watched))],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f'{code!r} failed:\n{proc.stderr[-3000:]}'
  line = [l for l in proc.stdout.splitlines() if l.startswith('LOADED=')][-1]
  return json.loads(line[len('LOADED='):])


def _check(code, forbidden):
  loaded = _run(code, forbidden)
  assert not loaded, 'heavy modules loaded by\n  ' + code.replace('\n', '\n  ') + '\n' + '\n'.join(
      f'- {module}, first imported via {chain}' for module, chain in loaded.items())


@pytest.mark.parametrize('code', [c for _, c in MODEL_IMPORTS], ids=[d for d, _ in MODEL_IMPORTS])
def test_model_imports_are_light(code):
  _check(code, FORBIDDEN_FOR_MODELS)


@pytest.mark.parametrize('code', [c for _, c in LIGHT_IMPORTS], ids=[d for d, _ in LIGHT_IMPORTS])
def test_light_imports(code):
  _check(code, FORBIDDEN)


def test_data_functions_load_their_backend():
  """The lazy data layer still reads data: TF arrives with the first call that needs it."""
  loaded = _run(textwrap.dedent("""\
      import sys
      from token_learner import data
      assert 'tensorflow' not in sys.modules
      cfg = data.from_dict({'name': 'digits', 'train_split': 'train', 'eval_split': 'test'},
                           num_classes=10)
      info = data.dataset_info(cfg)
      assert (info.num_classes, info.num_train, info.num_eval) == (10, 1437, 360), info
      assert data.images.dataset_info is not None and data.BatchIterator is not None
      assert {'images', 'stream', 'videos', 'BatchIterator', 'EvalInput'} <= set(dir(data))
      """))
  assert 'tensorflow' in loaded, loaded
