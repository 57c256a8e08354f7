"""The precision policy: activations in config.model.dtype; parameters, optimizer state, logits,
attention softmax statistics and losses in float32. Paper configs train in bfloat16, the
offline CPU jobs in float32."""
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

import conftest  # tests/ is on sys.path (as in test_faults.py)
from test_attention import dots
from token_learner import experiment
from token_learner import attention as attention_lib
from token_learner.train import setup

# The paper's experiments (§3-§6): ImageNet, ImageNet-21k / JFT-style pretraining, Kinetics,
# Charades, AViD, and the §6 bottleneck models.
PAPER_CONFIGS = ('imagenet_tokenlearner', 'imagenet21k_tokenlearner', 'kinetics400_tokenlearner',
                 'charades_tokenlearner', 'avid_tokenlearner', 'charades_bottleneck',
                 'avid_bottleneck')
# Offline jobs sized for the CPU (no accelerator, where bfloat16 is emulated and slower).
OFFLINE_CONFIGS = ('digits_tokenlearner', 'digits_vit', 'moving_digits_bottleneck',
                   'moving_digits_tokenlearner', 'moving_digits_vivit')
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')


def test_every_config_is_classified():
  names = {f[:-3] for f in os.listdir(CONFIG_DIR)
           if f.endswith('.py') and f not in ('__init__.py', 'common.py')}
  assert names == set(PAPER_CONFIGS) | set(OFFLINE_CONFIGS)


@pytest.mark.parametrize('name', PAPER_CONFIGS + OFFLINE_CONFIGS)
def test_paper_configs_train_in_bfloat16_offline_ones_in_float32(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  want = 'bfloat16' if name in PAPER_CONFIGS else 'float32'
  assert config.model.dtype == want
  assert config.model.attention_implementation == 'auto'
  assert experiment.from_config(config).model.dtype == want  # Validated through the boundary.


def _floating(tree):
  return [a for a in jax.tree.leaves(tree)
          if hasattr(a, 'dtype') and jnp.issubdtype(a.dtype, jnp.floating)]


@pytest.fixture(scope='module')
def bf16_run():
  """The default job shrunk (conftest._tiny_config: a 1-layer ViT, 4 TokenLearner tokens, adamw)
  with 2 layers, one before and one after the TokenLearner, in bfloat16."""
  config = conftest._tiny_config(**{  # pylint: disable=protected-access
      'model.dtype': 'bfloat16', 'model.num_layers': 2, 'batch_size': 4})
  return setup.build(experiment.from_config(config), devices=jax.devices()[:1])


def test_train_step_state_and_loss_stay_float32(bf16_run):
  run = bf16_run
  state = run.init_state()
  assert _floating(state.params) and all(a.dtype == jnp.float32 for a in _floating(
      state.params))
  assert _floating(state.opt_state) and all(a.dtype == jnp.float32 for a in _floating(
      state.opt_state))
  state, metrics = run.train_step(state, run.synthetic_batch(4), run.dropout_rng)
  assert all(a.dtype == jnp.float32 for a in _floating(state.params) + _floating(
      state.opt_state))
  assert metrics['loss'].dtype == jnp.float32 and jnp.isfinite(metrics['loss'])
  assert metrics['grad_norm'].dtype == jnp.float32


def test_activations_are_bfloat16_and_logits_float32(bf16_run):
  """Every module's output (captured intermediates, training mode) is bfloat16 except the
  head's and the model's logits; the parameter-only helper modules are left out."""
  run = bf16_run
  params = run.init_state().params
  x = jnp.ones((2, *run.input_shape), jnp.float32)
  (logits, aux), state = run.model.apply(
      {'params': params}, x, train=True, rngs={'dropout': jax.random.key(0)},
      capture_intermediates=lambda mdl, _: not isinstance(mdl, attention_lib._DenseParams),  # pylint: disable=protected-access
      mutable=['intermediates'])
  assert logits.dtype == jnp.float32
  assert all(a.dtype == jnp.bfloat16 for a in _floating(aux))  # pre-logits, TokenLearner maps
  inter = state['intermediates']
  assert all(a.dtype == jnp.float32 for a in _floating(inter['head']['__call__']))
  rest = {k: v for k, v in inter.items() if k not in ('head', '__call__')}
  leaves = [(p, a) for p, a in jax.tree_util.tree_leaves_with_path(rest) if hasattr(a, 'dtype')]
  assert len(leaves) > 20  # Blocks, attention, MLPs, LayerNorms, the TokenLearner, ...
  wrong = [jax.tree_util.keystr(p) for p, a in leaves
           if jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != jnp.bfloat16]
  assert not wrong


def test_train_step_dots_are_bfloat16_but_the_head_and_logits(bf16_run):
  """The compiled program's matmuls: every dot_general of the train step (forward and backward)
  has bfloat16 operands, except the float32 head's (an operand with the num_classes axis); the
  attention logits [B, H, N, N] are dots of bfloat16 q, k with a float32 result."""
  run = bf16_run
  state, batch = run.init_state(), run.synthetic_batch(4)
  found = dots(lambda s, b: run.train_step(s, b, run.dropout_rng), state, batch)
  k = run.cfg.num_classes
  head = [d for d in found if d[0] == (jnp.float32, jnp.float32)]
  assert head and all(k in d[2].shape or d[2].ndim <= 2 for d in head), head
  mixed = [d for d in found if d[0] not in ((jnp.bfloat16, jnp.bfloat16),
                                            (jnp.float32, jnp.float32))]
  assert not mixed
  n = run.model.config.grid_shape[1] * run.model.config.grid_shape[2]
  logits = [a for ops, p, a in found if ops == (jnp.bfloat16, jnp.bfloat16)
            and a.shape[-2:] == (n, n) and a.dtype == jnp.float32]
  assert logits


def test_bottleneck_mhsa_forms_float32_logits_in_bfloat16():
  """The §6 models' MHSA (flax's module) runs `einsum_attention`, not flax's bf16 logits."""
  from token_learner.bottleneck import PreNormMHSA  # pylint: disable=g-import-not-at-top
  x = jnp.ones((2, 16, 32), jnp.bfloat16)
  layer = PreNormMHSA(num_heads=4, dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(0), x)
  found = dots(lambda p: layer.apply(p, x), params)
  logits = [a for ops, _, a in found if a.shape[-2:] == (16, 16)]
  assert logits and all(a.dtype == jnp.float32 for a in logits)
  assert layer.apply(params, x).dtype == jnp.bfloat16
