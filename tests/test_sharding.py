"""The 2-D ('data', 'model') mesh and the named rule sets on 8 simulated CPU devices."""
import jax
import numpy as np
import pytest

import trainer
from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner import fields, tree
from token_learner.train import setup, sharding

P = jax.sharding.PartitionSpec
BLOCK = 'Transformer/encoderblock_0/'


def _run_steps(config, devices, mesh_shape, num_steps=3):
  """Losses, final params (numpy) and the sharded state after `num_steps` train steps."""
  experiment = experiment_lib.from_config(config)
  run = setup.build(experiment, mesh=sharding.create_mesh(devices, mesh_shape))
  assert run.rules == sharding.rules_of(run.cfg)  # config.sharding and sharding_rules.
  state, cfg = run.init_state(), run.cfg
  _, rng = sharding.replicated_keys(0, run.mesh)
  batches = data.train_iterator(experiment.data, seed=cfg.seed, batch_size=cfg.batch_size)
  losses = []
  for _ in range(num_steps):
    batch = data.make_global_batch(next(batches), run.batch_sharding)
    state, metrics = run.train_step(state, batch, rng)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), state


def test_fsdp_tp_on_2x4_mesh_matches_one_device_and_splits_bytes(tiny_config):
  # Mu: width 64, 4 heads of 16, MLP 128; weight decay so that AdamW touches every kernel.
  config = tiny_config(weight_decay=0.1)
  losses_1, params_1, _ = _run_steps(config, jax.devices()[:1], (1, 1))
  config = tiny_config(weight_decay=0.1, sharding='fsdp_tp', mesh_shape=(2, 4))
  losses_8, params_8, state = _run_steps(config, jax.devices()[:8], (2, 4))
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_1, params_8)

  params = tree.flatten(state.params)
  attention, mlp = BLOCK + 'MultiHeadDotProductAttention_1/', BLOCK + 'MlpBlock_3/'
  expected = {  # TP over 'model' (4), then FSDP over 'data' (2) on the largest free dim.
      attention + 'query/kernel': P('data', 'model', None),  # [64, 4, 16]
      attention + 'value/bias': P('model', None),  # [4, 16]: too small for FSDP
      attention + 'out/kernel': P('model', None, 'data'),  # [4, 16, 64]
      mlp + 'Dense_0/kernel': P('data', 'model'),  # [64, 128]
      mlp + 'Dense_0/bias': P('model'),
      mlp + 'Dense_1/kernel': P('model', 'data'),  # [128, 64]
      BLOCK + 'LayerNorm_0/scale': P(),
  }
  for path, spec in expected.items():
    assert params[path].sharding.spec == spec, path
  # Bytes one device holds: 1/8 of each big kernel (measured from its shards), and its Adam
  # moments the same.
  moments = {path: x for path, x in tree.flatten(state.opt_state).items()
             if path.endswith(mlp + 'Dense_1/kernel')}
  assert len(moments) == 2  # mu, nu
  for path, x in [*((p, params[p]) for p in expected if p.endswith('kernel')),
                  *moments.items()]:
    fraction = x.addressable_shards[0].data.nbytes / x.nbytes
    print(f'{path}: per-device fraction {fraction}')
    assert fraction == 1 / 8, path
  # Every array of >= FSDP_MIN_SIZE elements (here the 6 kernels of the block): 1/8 per device.
  big = [x for x in params.values() if x.size >= sharding.FSDP_MIN_SIZE]
  big_per_device = sum(x.addressable_shards[0].data.nbytes for x in big)
  big_total = sum(x.nbytes for x in big)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in params.values())
  total = sum(x.nbytes for x in params.values())
  print(f'big kernels per device: {big_per_device} of {big_total} bytes; all params: '
        f'{per_device} of {total} bytes ({per_device / total:.3f})')
  assert len(big) == 6 and big_per_device * 8 == big_total


def test_fsdp_shards_largest_divisible_dim_of_big_arrays_only():
  mesh = sharding.create_mesh(jax.devices()[:8], (4, 2))
  assert sharding.with_fsdp(P(), (64, 128), mesh) == P(None, 'data')
  assert sharding.with_fsdp(P(), (128, 64), mesh) == P('data', None)
  assert sharding.with_fsdp(P(), (130, 64), mesh) == P(None, 'data')  # 130 % 4 != 0
  assert sharding.with_fsdp(P(None, 'model'), (64, 128), mesh) == P('data', 'model')
  assert sharding.with_fsdp(P(), (63, 65), mesh) == P()  # Nothing divisible: replicated.
  assert sharding.with_fsdp(P(), (16, 16), mesh) == P()  # Small.
  assert sharding.with_fsdp(P('data'), (64, 128), mesh) == P('data')


def test_mesh_shape_sizes_and_axes():
  mesh = sharding.create_mesh(jax.devices()[:8], (-1, 2))
  assert dict(mesh.shape) == {'data': 4, 'model': 2}
  # Consecutive devices form a 'model' group.
  assert [d.id for d in mesh.devices[1]] == [jax.devices()[2].id, jax.devices()[3].id]
  assert dict(sharding.create_mesh(jax.devices()[:8], (8, -1)).shape) == {'data': 8, 'model': 1}
  assert dict(sharding.create_mesh(jax.devices()[:2]).shape) == {'data': 2, 'model': 1}


@pytest.mark.parametrize('mesh_shape, message', [
    ((3, -1), 'does not fit the 8 devices'),
    ((2, 2), 'must multiply to 8'),
    ((-1, -1), 'at most one of them -1'),
    ((0, 8), 'two ints >= 1'),
    ((8,), 'must be (data, model)'),
    (('8', 1), 'must be (data, model)'),
])
def test_bad_mesh_shape_is_a_config_error_before_compiling(tmp_path, tiny_config, mesh_shape,
                                                           message):
  config = tiny_config()
  config.mesh_shape = mesh_shape
  with pytest.raises(fields.ConfigError, match='config.mesh_shape') as error:
    trainer.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:8],
                               build=lambda *a, **k: pytest.fail('built'))
  assert message in str(error.value)


def test_bad_sharding_names_the_field(tiny_config):
  with pytest.raises(ValueError, match='config.sharding'):
    experiment_lib.from_config(tiny_config(sharding='zero3'))
  with pytest.raises(ValueError, match="mesh axis 'batch'"):
    experiment_lib.from_config(tiny_config(sharding_rules=[('kernel', ('batch',))]))


def test_tensor_parallel_rules_split_heads_and_mlp_in_both_layer_layouts():
  """Unrolled `encoderblock_{i}` and scanned `encoderblock_scan_{k}` ([L, ...] stacked) kernels
  get the same head / MLP split, the scanned ones shifted past their layer axis."""
  mesh = sharding.create_mesh(jax.devices()[:8], (2, 4))
  block = 'Transformer/encoderblock_3/'
  scanned = 'Transformer/encoderblock_scan_1/'
  attention = 'MultiHeadDotProductAttention_1/'
  spec = lambda path, shape: sharding.partition_spec(path, shape, mesh, sharding.TP_RULES)
  assert spec(block + attention + 'query/kernel', (64, 8, 8)) == P(None, 'model', None)
  assert spec(scanned + attention + 'query/kernel', (6, 64, 8, 8)) == P(None, None, 'model', None)
  assert spec(block + attention + 'out/kernel', (8, 8, 64)) == P('model', None, None)
  assert spec(scanned + attention + 'out/kernel', (6, 8, 8, 64)) == P(None, 'model', None, None)
  assert spec(block + 'MlpBlock_3/Dense_0/kernel', (64, 256)) == P(None, 'model')
  assert spec(scanned + 'MlpBlock_3/Dense_1/kernel', (6, 256, 64)) == P(None, 'model', None)
  assert spec(block + attention + 'query/kernel', (64, 6, 8)) == P()  # 6 heads, 4-way: replicated.
