"""token_learner.train.optim: weight decay applies to kernels only (big_vision's convention)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import ModelConfig, build_model
from token_learner.train import optim
from token_learner.train.config import TrainConfig
from token_learner.tree import flatten


def _params():
  cfg = ModelConfig.from_dict(dict(variant='Mu/4', num_classes=3, num_layers=2, classifier='token',
                                   tokenlearner=dict(num_tokens=2, loc=1, fuser=True)),
                              image_size=8)
  return jax.eval_shape(lambda: build_model(cfg).init(
      jax.random.key(0), jnp.zeros((1, *cfg.input_shape)), train=False)['params'])


def test_default_mask_is_kernels_only():
  mask = flatten(optim.decay_mask(_params(), TrainConfig.weight_decay_regex))
  decayed = sorted(k for k, v in mask.items() if v)
  assert decayed and all(k.endswith('/kernel') for k in decayed)
  for key in ('cls', 'Transformer/posembed_input/pos_embedding', 'embedding/bias',
              'Transformer/encoder_norm/scale', 'Transformer/encoderblock_0/LayerNorm_0/scale',
              'head/bias'):
    assert mask[key] is False, key
  for key in ('embedding/kernel', 'head/kernel', 'Transformer/fuser_1/token_mixing/kernel',
              'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'):
    assert mask[key] is True, key


def test_regex_selects_and_the_optimizer_follows_it():
  mask = flatten(optim.decay_mask(_params(), r'^head/kernel$|pos_embedding'))
  assert {k for k, v in mask.items() if v} == {'head/kernel',
                                               'Transformer/posembed_input/pos_embedding'}
  params = {'head': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  cfg = TrainConfig(num_train_steps=1, optimizer='sgd', weight_decay=0.5, learning_rate=1.0)
  tx = optim.create_optimizer(cfg, lambda _: 1.0)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates['head']['kernel'], -0.5 * np.ones((2, 2)))
  np.testing.assert_array_equal(updates['head']['bias'], np.zeros(2))  # No decay on a bias.


def test_bad_regex_names_the_field():
  with pytest.raises(ValueError, match='config.weight_decay_regex'):
    TrainConfig(num_train_steps=1, weight_decay_regex='(')
