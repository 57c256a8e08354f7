"""Activation sharding constraints under tensor parallelism, read from the compiled HLO.

On a simulated 2 x 4 mesh (data=2, model=4) the tiny model's batch of 16 is 8 rows per device
and its encoder sees 16 tokens, so an activation held by one device is `f32[8,16,...]`: no
all-gather, all-to-all or collective-permute may produce one (the weights are what moves).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np

from token_learner import experiment as experiment_lib
from token_learner.train import setup, sharding

P = jax.sharding.PartitionSpec
_MOVES = re.compile(r'= \(?f32\[8,16,[^=]*\b(all-gather|all-to-all|collective-permute)'
                    r'(-start)?\(')


def activation_moves(hlo: str):
  """The HLO lines that gather or permute a per-device activation `[8, 16, ...]`."""
  return [line.strip()[:160] for line in hlo.splitlines() if _MOVES.search(line)]


def _mesh():
  return sharding.create_mesh(jax.devices()[:8], (2, 4))


def test_the_check_sees_qkv_kernels_concatenated_across_heads():
  """The fused q/k/v layout before this change ([C, 3 * H * D]: kernels split by heads,
  concatenated along that split axis) makes XLA gather the projected activations."""
  mesh = _mesh()
  spec = lambda *s: jax.sharding.NamedSharding(mesh, P(*s))

  def loss(x, kernels):
    qkv = (x @ jnp.concatenate([k.reshape(64, 64) for k in kernels], axis=1))
    q, k, v = (qkv.reshape(16, 16, 3, 4, 16)[..., i, :, :] for i in range(3))
    weights = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k))
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v).sum()

  x = jax.ShapeDtypeStruct((16, 16, 64), jnp.float32, sharding=spec('data'))
  kernel = jax.ShapeDtypeStruct((64, 4, 16), jnp.float32, sharding=spec(None, 'model', None))
  hlo = jax.jit(jax.grad(loss)).lower(x, [kernel] * 3).compile().as_text()
  assert activation_moves(hlo)


def _build(config, devices, mesh_shape):
  experiment = experiment_lib.from_config(config)
  return experiment, setup.build(experiment,
                                 mesh=sharding.create_mesh(devices, mesh_shape))


def _losses(run, step, state, num_steps=2):
  """Losses of `num_steps` steps of `step` (the run's compiled train step) from `state` on fixed
  random digits-shaped batches (no input pipeline: no TensorFlow)."""
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    batch = {'inputs': rng.integers(0, 256, (16, *run.input_shape), np.uint8),
             'labels': rng.integers(0, 10, (16,), np.int32)}
    state, metrics = step(state, jax.device_put(batch, run.batch_sharding), run.dropout_rng)
    losses.append(float(metrics['loss']))
  return losses


def _compiled(run):
  return run.train_step.lower(run.abstract_state, run.synthetic_batch(),
                              run.dropout_rng).compile()


def test_tp_fused_qkv_moves_no_activations_and_matches_one_device(tiny_config):
  _, run = _build(tiny_config(sharding='tp', mesh_shape=(2, 4), **{'model.fused_qkv': True}),
                  jax.devices()[:8], (2, 4))
  step = _compiled(run)
  hlo = step.as_text()
  assert not activation_moves(hlo)
  # Megatron's pattern instead: the residual stream all-reduced over 'model' (forward and
  # backward of attention and MLP), whole on every device.
  assert len(re.findall(r'= f32\[8,16,64\][^=]*all-reduce(-start)?\(', hlo)) >= 2
  _, one = _build(tiny_config(), jax.devices()[:1], (1, 1))  # Three q/k/v matmuls.
  one_state = one.init_state()
  state = sharding.place(jax.device_get(one_state), run.state_shardings, run.abstract_state)
  np.testing.assert_allclose(_losses(run, step, state), _losses(one, _compiled(one), one_state),
                             rtol=1e-5, atol=1e-5)


def _constraints(config):
  _, run = _build(config, jax.devices()[:8], (2, 4))
  text = run.train_step.lower(run.abstract_state, run.synthetic_batch(),
                              run.dropout_rng).as_text()
  return re.findall(r'sharding_constraint .*<@mesh, (\[.*\])> : tensor<([0-9x]+)xf32>', text)


def test_constraints_follow_the_rule_set(tiny_config):
  tp = set(_constraints(tiny_config(sharding='tp', mesh_shape=(2, 4))))
  assert ('[{"data"}, {}, {}]', '16x16x64') in tp  # Residual stream: rows over 'data' only.
  assert ('[{"data"}, {}, {"model"}, {}]', '16x16x4x16') in tp  # q, k, v: heads over 'model'.
  assert ('[{"data"}, {}, {"model"}]', '16x16x128') in tp  # MLP hidden columns over 'model'.
  fsdp = set(_constraints(tiny_config(sharding='fsdp', mesh_shape=(2, 4))))
  assert ('[{"data"}, {}, {}]', '16x16x64') in fsdp
  assert ('[{"data"}, {}, {}, {}]', '16x16x4x16') in fsdp  # Heads whole: no 'model' rule.
  assert not _constraints(tiny_config(sharding='replicated', mesh_shape=(2, 4)))
