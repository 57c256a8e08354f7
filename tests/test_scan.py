"""config.model.scan_layers / remat (token_learner/layer_scan.py): the scanned model computes what
the unrolled one does, parameters convert between the layouts, remat changes no gradient."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner import ModelConfig, build_model
from token_learner import layer_scan
from token_learner import pretrained
from token_learner.flops import count_flops_and_params
from token_learner.pretrained import InitConfig
from token_learner.tree import flatten
from token_learner.vit import Encoder


def make_config(name='vit', num_layers=3, num_tokens=3, loc=2, num_frames=4, **model):
  section = dict(name=name, variant='Mu/4', num_classes=5, num_layers=num_layers,
                 tokenlearner=dict(num_tokens=num_tokens, loc=loc), **model)
  return ModelConfig.from_dict(section, image_size=8, num_frames=num_frames)


def init(cfg, randomise, batch=2):
  """(model, randomised params as numpy, inputs); compiled init (quicker than op by op)."""
  model = build_model(cfg)
  x = jax.random.normal(jax.random.key(1), (batch, *cfg.input_shape))
  params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False)['params'])(x)
  return model, randomise(jax.device_get(params), scale=0.3), x


def forward(model, params, x):
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, x)


@pytest.mark.parametrize('name,classifier,num_tokens,loc', [
    ('vit', 'token', 3, 2),  # Two segments: [0, 2) on the grid, [2, 3) on the tokens.
    ('vit', 'gap', 3, 0),  # TokenLearner first: one segment.
    ('vit', 'gap', 0, 0),  # No TokenLearner: one segment.
    ('vivit', 'gap', 2, 1),
])
def test_scanned_model_with_converted_params_equals_unrolled(name, classifier, num_tokens, loc,
                                                             randomise):
  unrolled = make_config(name, classifier=classifier, num_tokens=num_tokens, loc=loc)
  scanned = make_config(name, classifier=classifier, num_tokens=num_tokens, loc=loc,
                        scan_layers=True)
  model, params, x = init(unrolled, randomise)
  want, want_aux = forward(model, params, x)
  segs = layer_scan.segments(scanned)
  converted = layer_scan.to_scanned(params, segs)
  scan_model = build_model(scanned)
  # The converted tree has the scanned model's own structure and shapes.
  fresh = jax.eval_shape(lambda: scan_model.init(jax.random.key(0), x, train=False)['params'])
  assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(np.shape, converted)
  got, got_aux = forward(scan_model, converted, x)
  assert float(np.abs(want).max()) > 0.1  # The head is randomised: the comparison means much.
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for a, b in zip(got_aux['attention_maps'], want_aux['attention_maps']):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # Entry j of segment k is layer start_k + j, leaf by leaf.
  for k, (start, stop) in enumerate(segs):
    stacked = flatten(converted['Transformer'][f'encoderblock_scan_{k}'])
    for j, lyr in enumerate(range(start, stop)):
      for key, leaf in flatten(params['Transformer'][f'encoderblock_{lyr}']).items():
        np.testing.assert_array_equal(stacked[key][j], leaf)


def test_layout_round_trips_are_identity(randomise):
  cfg = make_config(scan_layers=True, num_layers=4, loc=1)
  segs = layer_scan.segments(cfg)
  assert segs == ((0, 1), (1, 4))
  _, params, _ = init(make_config(num_layers=4, loc=1), randomise)
  back = layer_scan.to_unrolled(layer_scan.to_scanned(params, segs))
  assert flatten(back).keys() == flatten(params).keys()
  for key, leaf in flatten(params).items():
    np.testing.assert_array_equal(flatten(back)[key], leaf, err_msg=key)
  scanned = layer_scan.to_scanned(params, segs)
  again = layer_scan.to_scanned(layer_scan.to_unrolled(scanned), segs)
  for key, leaf in flatten(scanned).items():
    np.testing.assert_array_equal(flatten(again)[key], leaf, err_msg=key)
  with pytest.raises(ValueError, match=r'layers \[0, 1, 2, 3\].*\[0, 1, 2\]'):
    layer_scan.to_scanned(params, ((0, 1), (1, 3)))


def test_npz_and_checkpoint_layouts_load_into_either_model(tmp_path, randomise):
  """A vit_jax-layout (unrolled) .npz into a scanned model, and a scanned .npz into an unrolled
  one: the loaded models compute the source's logits."""
  unrolled, scanned = make_config(), make_config(scan_layers=True)
  model, params, x = init(unrolled, randomise)
  want, _ = forward(model, params, x)
  scan_model, scan_init, _ = init(scanned, randomise)
  path = str(tmp_path / 'unrolled.npz')
  pretrained.save_npz(path, params)
  loaded = pretrained.init_from(scan_init, InitConfig(path=path, load_head=True), scanned)
  assert 'encoderblock_scan_1' in loaded['Transformer']
  np.testing.assert_allclose(forward(scan_model, loaded, x)[0], want,
                             atol=1e-5, rtol=1e-5)
  path = str(tmp_path / 'scanned.npz')
  pretrained.save_npz(path, loaded)
  _, fresh, _ = init(unrolled, randomise)
  back = pretrained.init_from(fresh, InitConfig(path=path, load_head=True), unrolled)
  for key, leaf in flatten(params).items():
    np.testing.assert_array_equal(flatten(back)[key], leaf, err_msg=key)


def _grads(cfg, params, x, train):
  model = build_model(cfg)
  loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=train,
                                       rngs={'dropout': jax.random.key(3)})[0] ** 2)
  return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize('scan', [False, True])
def test_remat_gives_the_same_gradients(scan, randomise):
  """Rematerialisation recomputes, with the same dropout and stochastic depth draws: every
  gradient equals remat 'none''s within 1e-5 of the largest entry of its parameter's gradient,
  or of 10% of the largest gradient of all (recomputation may sum float32 in another order)."""
  regs = dict(num_layers=2, loc=1, dropout_rate=0.1, stochastic_depth=0.3)
  _, params, x = init(make_config(**regs), randomise)
  if scan:
    params = layer_scan.to_scanned(params, layer_scan.segments(
        make_config(scan_layers=True, **regs)))
  want = _grads(make_config(scan_layers=scan, **regs), params, x, train=True)
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
  for remat in ('full', 'dots'):
    got = _grads(make_config(scan_layers=scan, remat=remat, **regs), params, x, train=True)
    for key, g in flatten(want).items():
      # Floored at 10% of the largest gradient: the key biases' exact gradient is 0 (softmax
      # ignores a per-query constant), so theirs are float32 rounding noise alone.
      scale = max(float(np.abs(g).max()), 0.1 * largest)
      np.testing.assert_allclose(flatten(got)[key] / scale, g / scale, atol=1e-5, rtol=0,
                                 err_msg=f'{remat} {key}')
  assert largest > 1e-3


class _Blocks(nn.Module):
  """The encoder's blocks alone (`Encoder._scan` / `_block` in this module's scope)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, *, train):
    # pylint: disable=protected-access
    if self.config.scan_layers:
      return Encoder._scan(self, (0, 0, self.config.num_layers), x, train)
    for lyr in range(self.config.num_layers):
      x = Encoder._block(self, lyr, train)(x)
    return x


@pytest.mark.parametrize('scan', [False, True])
def test_stochastic_depth_rate_grows_per_layer_and_draws_differ(scan):
  """3 blocks, stochastic_depth 0.8: layer l keeps its branch with probability 1 - 0.4 l. Each
  block's attention branch is zeroed and its MLP adds the constant c_l: x -> x + m_l c_l / keep_l
  with m_l the block's keep draw, so c = (1, 0.6, 0.4) gives 1 + m_1 + 2 m_2 per example."""
  cfg = make_config(num_layers=3, num_tokens=0, stochastic_depth=0.8, scan_layers=scan)
  blocks = _Blocks(cfg)
  x = jnp.zeros((4000, 1, 64))
  params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
      lambda: blocks.init(jax.random.key(0), x, train=False)['params']))
  consts = (1.0, 0.6, 0.4)
  if scan:
    params['encoderblock_scan_0']['MlpBlock_3']['Dense_1']['bias'] = (
        jnp.asarray(consts)[:, None] * jnp.ones((3, 64)))
  else:
    for lyr, c in enumerate(consts):
      params[f'encoderblock_{lyr}']['MlpBlock_3']['Dense_1']['bias'] = jnp.full((64,), c)
  out = jax.jit(lambda p: blocks.apply({'params': p}, x, train=True,
                                       rngs={'dropout': jax.random.key(5)}))(params)
  code = np.asarray(out[:, 0, 0])
  np.testing.assert_allclose(out, np.broadcast_to(code[:, None, None], out.shape), atol=1e-5)
  m1, m2 = (np.round(code - 1) % 2).astype(int), (np.round(code - 1) // 2).astype(int)
  np.testing.assert_allclose(code, 1 + m1 + 2 * m2, atol=1e-4)  # Layer 0 (rate 0) always adds 1.
  assert abs(m1.mean() - 0.6) < 0.04 and abs(m2.mean() - 0.2) < 0.04
  assert abs((m1 * m2).mean() - 0.12) < 0.03  # Independent draws per layer.


@pytest.mark.parametrize('change,field', [
    (dict(scan_layers=1), 'config.model.scan_layers'),
    (dict(remat='some'), 'config.model.remat'),
    (dict(scan_layers=True, fuser=True), 'config.model.tokenlearner.fuser'),
    (dict(scan_layers=True, num_tokens=0, spatial_pooling=((1, 2),)),
     'config.model.spatial_pooling'),
])
def test_bad_scan_config_names_the_field(change, field):
  tl = {k: change.pop(k) for k in ('fuser', 'num_tokens') if k in change}
  section = dict(name='vit', variant='Mu/4', num_classes=5, num_layers=3,
                 tokenlearner=dict(num_tokens=tl.get('num_tokens', 3), loc=2,
                                   fuser=tl.get('fuser', False)), **change)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    ModelConfig.from_dict(section, image_size=8)


def test_bottleneck_rejects_scan_layers():
  with pytest.raises(ValueError, match=r'config\.model\.scan_layers'):
    ModelConfig.from_dict(dict(name='bottleneck', scan_layers=True), image_size=32,
                          num_frames=4)


def test_flops_and_params_count_every_scanned_layer():
  """XLA's cost analysis counts a loop body once: FLOPs of a scanned model are the unrolled's."""
  unrolled = count_flops_and_params(make_config(num_layers=4))
  assert count_flops_and_params(make_config(num_layers=4, scan_layers=True)) == unrolled
  assert unrolled[0] > count_flops_and_params(make_config(num_layers=2, loc=1))[0]
