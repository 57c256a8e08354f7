"""token_learner.nnx: the NNX modules and ViT give the linen outputs from the same parameters
(directly, and through `flax.nnx.bridge` as an independent conversion path), work under nnx.jit /
nnx.scan / nnx.remat, carry sharding metadata, and a TokenLearner inserted into a pretrained NNX
ViT keeps the backbone's blocks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from token_learner import ModelConfig, build_model, modules
from token_learner import nnx as tnnx
from token_learner.tree import flatten

TOL = 1e-6
C = 16


def _max_diff(a, b):
  return max((float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)


# (linen module, NNX constructor, inputs (x, extra args)) for each module and layout.
def _cases():
  img = jax.random.normal(jax.random.key(0), (2, 6, 5, C))  # non-square grid
  vid = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, C))
  seq = img.reshape(2, 30, C)
  return {
      'TokenLearner image': (modules.TokenLearner(4), lambda r: tnnx.TokenLearner(C, 4, rngs=r),
                             (img,), {}),
      'TokenLearner video, mean': (modules.TokenLearner(3, pooling='mean'),
                                   lambda r: tnnx.TokenLearner(C, 3, pooling='mean', rngs=r),
                                   (vid,), {}),
      'TokenLearner sequence': (modules.TokenLearner(4), lambda r: tnnx.TokenLearner(C, 4, rngs=r),
                                (seq, (6, 5)), {}),
      'TokenLearnerV11 image': (modules.TokenLearnerV11(4, 8),
                                lambda r: tnnx.TokenLearnerV11(C, 4, 8, rngs=r), (img,), {}),
      'TokenLearnerV11 video': (modules.TokenLearnerV11(2, 8),
                                lambda r: tnnx.TokenLearnerV11(C, 2, 8, rngs=r), (vid,), {}),
      'TokenFuser image': (modules.TokenFuser(mlp_dim=8),
                           lambda r: tnnx.TokenFuser(C, 4, 1, mlp_dim=8, rngs=r),
                           (jax.random.normal(jax.random.key(2), (2, 4, C)), img), {}),
      'TokenFuser video global': (modules.TokenFuser(mlp_dim=8),
                                  lambda r: tnnx.TokenFuser(C, 2, 3, mlp_dim=8, rngs=r),
                                  (jax.random.normal(jax.random.key(3), (2, 6, C)), vid), {}),
      'TokenFuser video per_frame': (
          modules.TokenFuser('per_frame', mlp_dim=8),
          lambda r: tnnx.TokenFuser(C, 2, 3, 'per_frame', mlp_dim=8, rngs=r),
          (jax.random.normal(jax.random.key(4), (2, 6, C)), vid), {}),
  }


CASES = _cases()


@pytest.mark.parametrize('name', list(CASES))
def test_module_matches_linen_both_ways(name, randomise):
  linen, make, args, _ = CASES[name]
  params = randomise(linen.init(jax.random.key(5), *args)['params'])
  want = linen.apply({'params': params}, *args)
  model = tnnx.from_linen_params(make(nnx.Rngs(0)), params)
  got = model(*args)
  print(f'max |delta| {name}: {_max_diff(got, want):.1e}')
  assert _max_diff(got, want) <= TOL, name
  # NNX -> linen: the NNX module's own (fresh) parameters drive the linen module.
  fresh = make(nnx.Rngs(7))
  back = tnnx.to_linen_params(fresh)
  assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, params)
  assert _max_diff(linen.apply({'params': back}, *args), fresh(*args)) <= TOL
  # Independent path: nnx.bridge wraps the NNX module as a linen module fed the linen params.
  bridged = nnx.bridge.ToLinen(type(model), kwargs=_ctor_kwargs(name))
  print(f'max |delta| {name} via nnx.bridge.ToLinen: '
        f'{_max_diff(bridged.apply({"params": params}, *args), want):.1e}')
  assert _max_diff(bridged.apply({'params': params}, *args), want) <= TOL


def _ctor_kwargs(name):
  """The NNX constructor arguments of a case, as keywords (for nnx.bridge.ToLinen)."""
  return {
      'TokenLearner image': dict(in_features=C, num_tokens=4),
      'TokenLearner video, mean': dict(in_features=C, num_tokens=3, pooling='mean'),
      'TokenLearner sequence': dict(in_features=C, num_tokens=4),
      'TokenLearnerV11 image': dict(in_features=C, num_tokens=4, bottleneck_dim=8),
      'TokenLearnerV11 video': dict(in_features=C, num_tokens=2, bottleneck_dim=8),
      'TokenFuser image': dict(in_features=C, num_tokens=4, num_frames=1, mlp_dim=8),
      'TokenFuser video global': dict(in_features=C, num_tokens=2, num_frames=3, mlp_dim=8),
      'TokenFuser video per_frame': dict(in_features=C, num_tokens=2, num_frames=3,
                                         mixing='per_frame', mlp_dim=8),
  }[name]


def test_bridge_to_nnx_of_linen_matches_nnx_module(randomise):
  """The other bridge direction: the linen module wrapped as NNX (nnx.bridge.ToNNX)."""
  linen, make, args, _ = CASES['TokenLearner video, mean']
  wrapped = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(wrapped, *args)
  params = randomise(nnx.state(wrapped, nnx.Param).to_pure_dict())
  state = nnx.state(wrapped, nnx.Param)
  state.replace_by_pure_dict(params)
  nnx.update(wrapped, state)
  model = tnnx.from_linen_params(make(nnx.Rngs(1)), params)
  assert _max_diff(wrapped(*args), model(*args)) <= TOL


def test_dropout_acts_only_in_training():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, C))
  m = tnnx.TokenLearnerV11(C, 4, 8, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  np.testing.assert_array_equal(m(x)[0], m(x)[0])
  assert not np.allclose(m(x, train=True)[0], m(x)[0])


def test_jit_remat_scan_and_grad():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, C))
  learner = tnnx.TokenLearner(C, 4, rngs=nnx.Rngs(0))
  fuser = tnnx.TokenFuser(C, 4, rngs=nnx.Rngs(1))
  eager = fuser(learner(x)[0], x)

  @nnx.jit
  def fwd(learner, fuser, x):
    return fuser(learner(x)[0], x)

  assert _max_diff(fwd(learner, fuser, x), eager) <= TOL
  remat = nnx.remat(lambda l, f, x: f(l(x)[0], x))
  assert _max_diff(remat(learner, fuser, x), eager) <= TOL
  # Gradients through remat reach the TokenLearner (the fuser's zero mixing hides them, so the
  # loss reads the tokens too).
  loss = lambda l, x: jnp.sum(nnx.remat(lambda l, x: l(x)[0])(l, x) ** 2)
  grads = nnx.grad(loss)(learner, x)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))

  # nnx.scan over a stack of layers (TokenLearner -> fuser, Fig. 3(b) without the block),
  # created with nnx.vmap: the parameters carry a leading layer axis.
  class Layer(nnx.Module):

    def __init__(self, rngs):
      self.learner = tnnx.TokenLearner(C, 4, rngs=rngs)
      self.fuser = tnnx.TokenFuser(C, 4, rngs=rngs)

    def __call__(self, x):
      return self.fuser(self.learner(x)[0] * 2.0, x)

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Layer(rngs)

  stack = make(nnx.Rngs(2))
  assert nnx.state(stack, nnx.Param)['learner']['Conv_0']['kernel'].shape == (3, 3, 3, C, 4)

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def run(x, layer):
    return layer(x)

  want = x
  for i in range(3):
    layer = nnx.merge(*nnx.split(Layer(nnx.Rngs(0))))
    state = jax.tree.map(lambda a, i=i: a[i], nnx.state(stack))
    nnx.update(layer, state)
    want = layer(want)
  assert _max_diff(nnx.jit(run)(x, stack), want) <= 1e-5


def test_sharding_metadata_and_sharded_forward():
  learner = tnnx.TokenLearnerV11(C, 4, 8, rngs=nnx.Rngs(0))
  state = nnx.state(learner, nnx.Param)
  spec = nnx.get_partition_spec(state)
  assert spec['Dense_0']['kernel'].get_value() == jax.sharding.PartitionSpec('embed', 'mlp')
  rules = (('embed', None), ('mlp', 'model'))
  with nn.logical_axis_rules(rules):
    spec = nnx.get_partition_spec(state)
  assert spec['Dense_0']['kernel'].get_value() == jax.sharding.PartitionSpec(None, 'model')
  mesh = jax.make_mesh((2,), ('model',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  sharding = jax.tree.map(lambda p: jax.sharding.NamedSharding(mesh, p), spec)
  nnx.update(learner, jax.device_put(state, sharding))
  assert learner.Dense_0.kernel.get_value().sharding.spec == jax.sharding.PartitionSpec(
      None, 'model')
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, C))
  tokens, _ = nnx.jit(lambda m, x: m(x))(learner, x)
  assert tokens.shape == (2, 4, C)


# --------------------------------------------------------------------------------------- ViT
def _cfg(**kw):
  tl = kw.pop('tokenlearner', {'num_tokens': 0})
  image_size, num_frames = kw.pop('image_size', 16), kw.pop('num_frames', 4)
  return ModelConfig.from_dict(dict(variant='Mu/4', num_layers=3, num_classes=5, tubelet_size=2,
                                    **kw, tokenlearner=tl),
                               image_size=image_size, num_frames=num_frames)


VIT_CASES = {
    'ViT gap': _cfg(),
    'ViT token + pre_logits, TL v1 at 1': _cfg(classifier='token', representation_size=8,
                                               tokenlearner=dict(num_tokens=4, loc=1)),
    'ViT TL v1.1 + TokenFuser at 1': _cfg(tokenlearner=dict(num_tokens=4, loc=1, fuser=True,
                                                            version='v1.1')),
    'ViViT token, TL + TokenFuser at 2': _cfg(name='vivit', classifier='token',
                                              tokenlearner=dict(num_tokens=4, loc=2, fuser=True)),
    'ViViT TL at 1, remat': _cfg(name='vivit', remat='full',
                                 tokenlearner=dict(num_tokens=4, loc=1)),
}


@pytest.mark.parametrize('name', list(VIT_CASES))
def test_vit_matches_linen(name, randomise):
  cfg = VIT_CASES[name]
  linen = build_model(cfg)
  x = jax.random.normal(jax.random.key(0), (2, *cfg.input_shape))
  params = randomise(linen.init(jax.random.key(1), x, train=False)['params'], scale=0.3)
  # Both jitted (eager vs fused XLA differ by float32 rounding alone).
  want, want_aux = jax.jit(lambda p, x: linen.apply({'params': p}, x, train=False))(params, x)
  model = tnnx.from_linen_params(tnnx.ViT(cfg, rngs=nnx.Rngs(0)), params)
  got, aux = nnx.jit(lambda m, x: m(x, train=False))(model, x)
  print(f'max |delta logits| {name}: {_max_diff(got, want):.1e}, maps '
        f'{_max_diff(aux["attention_maps"], want_aux["attention_maps"]):.1e}')
  assert _max_diff(got, want) <= 1e-5, name
  assert _max_diff(aux['attention_maps'], want_aux['attention_maps']) <= 1e-5
  assert set(flatten(tnnx.to_linen_params(model))) == set(flatten(params))


def test_vit_from_scanned_linen_params(randomise):
  cfg = _cfg(scan_layers=True, tokenlearner=dict(num_tokens=4, loc=1))
  linen = build_model(cfg)
  x = jax.random.normal(jax.random.key(0), (2, *cfg.input_shape))
  params = randomise(linen.init(jax.random.key(1), x, train=False)['params'], scale=0.3)
  unrolled = _cfg(tokenlearner=dict(num_tokens=4, loc=1))
  model = tnnx.from_linen_params(tnnx.ViT(unrolled, rngs=nnx.Rngs(0)), params)
  assert _max_diff(model(x)[0], linen.apply({'params': params}, x, train=False)[0]) <= 1e-5
  with pytest.raises(ValueError, match='scan_layers'):
    tnnx.ViT(cfg, rngs=nnx.Rngs(0))


def test_insert_tokenlearner_keeps_backbone_blocks(randomise):
  cfg = _cfg(classifier='token')
  backbone = tnnx.ViT(cfg, rngs=nnx.Rngs(0))
  tnnx.from_linen_params(backbone, randomise(tnnx.to_linen_params(backbone), scale=0.3))
  model = tnnx.insert_tokenlearner(backbone, rngs=nnx.Rngs(1), num_tokens=4, loc=2)
  new, old = flatten(tnnx.to_linen_params(model)), flatten(tnnx.to_linen_params(backbone))
  assert {k for k in new if k not in old} == {k for k in new if '/tokenlearner_2/' in k}
  for key, value in old.items():
    np.testing.assert_array_equal(new[key], value, err_msg=key)
  logits, aux = model(jnp.ones((2, 16, 16, 3)))
  assert logits.shape == (2, 5) and aux['attention_maps'][0].shape == (2, 4, 4, 4)
  with pytest.raises(ValueError, match='loc'):
    tnnx.insert_tokenlearner(backbone, rngs=nnx.Rngs(1), num_tokens=4, loc=9)


def test_unsupported_configs_are_errors():
  with pytest.raises(ValueError, match='ablations'):
    tnnx.ViT(_cfg(tokenlearner=dict(num_tokens=4, loc=1, fuser=True, fuser_type='unpool')),
             rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='shape'):
    tnnx.from_linen_params(tnnx.TokenLearner(C, 4, rngs=nnx.Rngs(0)),
                           tnnx.to_linen_params(tnnx.TokenLearner(C + 1, 4, rngs=nnx.Rngs(0))))
