"""Tests of trainer.py on a micro model and the offline digits data (8 simulated CPU devices)."""
import glob
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline
import trainer
from configs import digits_tokenlearner
from token_learner import ModelConfig, build_model, pretrained


P = jax.sharding.PartitionSpec
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """Digits at 16x16, a 1-layer 64-wide ViT then 4 TokenLearner tokens, a few steps."""
  config = digits_tokenlearner.get_config()
  config.model.num_layers = 1
  config.model.tokenlearner.num_tokens = 4
  config.model.tokenlearner.loc = 1
  config.batch_size = 16
  config.eval_batch_size = 64  # 360 test digits: the last batch is padded with 24 masked rows.
  config.num_train_steps = 6
  config.warmup_steps = 2
  config.log_every_steps = 2
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 5
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return config


def _prepare(config, devices):
  """Model, optimizer, sharded state and compiled step for `config` on `devices`."""
  model_cfg = ModelConfig.from_config(config)
  mesh = trainer.create_mesh(devices)
  cfg = trainer.TrainConfig.from_config(config, num_train_examples=1437, num_classes=10,
                                        num_devices=mesh.size)
  model = build_model(model_cfg)
  tx = trainer.create_optimizer(cfg, trainer.create_learning_rate_fn(cfg))
  init_rng, _ = trainer.replicated_keys(0, mesh)
  state, shardings = trainer.create_train_state(
      init_rng, model, tx, model_cfg.input_shape, mesh, cfg.sharding_rules)
  step = trainer.compile_train_step(model, tx, cfg, mesh, shardings)
  return dict(model=model, mesh=mesh, cfg=cfg, state=state, step=step, shardings=shardings)


def _run_steps(config, devices, num_steps):
  setup = _prepare(config, devices)
  mesh, state = setup['mesh'], setup['state']
  _, rng = trainer.replicated_keys(1, mesh)
  batches = input_pipeline.create_train_iterator(config)
  losses = []
  for _ in range(num_steps):
    batch = trainer.make_global_batch(next(batches), jax.NamedSharding(mesh, P('data')))
    with jax.transfer_guard('disallow'):  # The step itself moves nothing between host/device.
      state, metrics = setup['step'](state, batch, rng)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), state


def restore_params(workdir, step):
  """The params of checkpoint `step` as numpy, whatever topology wrote it."""
  return pretrained.restore_checkpoint_params(os.path.join(workdir, 'checkpoints', str(step)))


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_train_and_evaluate_writes_outputs(tmp_path):
  workdir = str(tmp_path)
  result = trainer.train_and_evaluate(tiny_config(), workdir)
  assert result['step'] == 6
  assert result['eval_num_examples'] == 360
  assert 0.0 <= result['eval_accuracy'] <= result['eval_top5_accuracy'] <= 1.0
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['steps'] == 6 and summary['gflops'] > 0 and summary['num_params'] > 0
  assert summary['final_metrics']['eval_loss'] == pytest.approx(result['eval_loss'])
  assert summary['config']['model']['variant'] == 'Mu/4'
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


def test_killed_and_resumed_run_is_bit_identical(tmp_path, monkeypatch):
  config = tiny_config(**{'model.dropout_rate': 0.1, 'mixup_alpha': 0.2})  # RNG use per step.
  uninterrupted = str(tmp_path / 'a')
  trainer.train_and_evaluate(config, uninterrupted)

  create = input_pipeline.create_train_iterator

  def dies_after_three_batches(*args, **kwargs):
    iterator = create(*args, **kwargs)
    for _ in range(3):
      yield next(iterator)
    raise KeyboardInterrupt('simulated kill')

  interrupted = str(tmp_path / 'b')
  monkeypatch.setattr(input_pipeline, 'create_train_iterator', dies_after_three_batches)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, interrupted)
  assert sorted(os.listdir(os.path.join(interrupted, 'checkpoints'))) == ['2']
  monkeypatch.setattr(input_pipeline, 'create_train_iterator', create)
  trainer.train_and_evaluate(config, interrupted)
  _assert_trees_equal(restore_params(uninterrupted, 6), restore_params(interrupted, 6))

  # A corrupt newest checkpoint is skipped for the previous one; the result is still the same.
  for path in glob.glob(os.path.join(interrupted, 'checkpoints', '6', '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'garbage')
  trainer.train_and_evaluate(config, interrupted)
  _assert_trees_equal(restore_params(uninterrupted, 6), restore_params(interrupted, 6))
  assert any('corrupt' in d for d in os.listdir(os.path.join(interrupted, 'checkpoints')))

  # So is one with files missing.
  for path in glob.glob(os.path.join(interrupted, 'checkpoints', '6', 'default', '*')):
    if os.path.isfile(path):
      os.remove(path)
  assert trainer.train_and_evaluate(config, interrupted)['step'] == 6
  _assert_trees_equal(restore_params(uninterrupted, 6), restore_params(interrupted, 6))


def test_eight_devices_match_one_device():
  config = tiny_config()
  losses_1, params_1, _ = _run_steps(config, jax.devices()[:1], 3)
  losses_8, params_8, _ = _run_steps(config, jax.devices()[:8], 3)
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_1, params_8)


def test_fsdp_sharding_rules_shard_params_and_match():
  rules = [('.*Dense_.*/kernel', (None, 'data')), ('.*/kernel', ('data',))]
  config = tiny_config(sharding_rules=rules)
  losses_dp, params_dp, _ = _run_steps(tiny_config(), jax.devices()[:8], 2)
  losses_fsdp, params_fsdp, state = _run_steps(config, jax.devices()[:8], 2)
  specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
  assert any(spec != P() for spec in specs)
  opt_specs = [x.sharding.spec for x in jax.tree.leaves(state.opt_state)]
  assert any(spec != P() for spec in opt_specs)  # Adam moments follow their parameters.
  np.testing.assert_allclose(losses_dp, losses_fsdp, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_dp, params_fsdp)


def test_partition_spec_only_where_divisible():
  mesh = trainer.create_mesh(jax.devices()[:8])
  rules = [('Dense_0/kernel', (None, 'data'))]
  assert trainer.partition_spec('a/Dense_0/kernel', (4, 16), mesh, rules) == P(None, 'data')
  assert trainer.partition_spec('a/Dense_0/kernel', (4, 12), mesh, rules) == P()
  assert trainer.partition_spec('a/Dense_0/bias', (16,), mesh, rules) == P()
  assert trainer.partition_spec('count', (), mesh, [('.*', ('data',))]) == P()


def test_grad_accumulation_equals_big_batch():
  overrides = {'optimizer': 'sgd', 'learning_rate': 0.1, 'warmup_steps': 0, 'batch_size': 32}
  losses_big, params_big, _ = _run_steps(tiny_config(**overrides), jax.devices()[:8], 2)
  losses_acc, params_acc, _ = _run_steps(
      tiny_config(grad_accum_steps=4, **overrides), jax.devices()[:8], 2)
  np.testing.assert_allclose(losses_big, losses_acc, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_big, params_acc)


def test_evaluate_counts_every_example_once_with_padding():
  config = tiny_config()
  setup = _prepare(config, jax.devices()[:8])
  eval_step = trainer.compile_eval_step(setup['model'], setup['cfg'], setup['mesh'],
                                        setup['shardings'].params, example_ndim=3)
  result = trainer.evaluate(eval_step, setup['state'].params, config, setup['mesh'], setup['cfg'])
  assert result['num_examples'] == 360

  # Independent computation over the unpadded split.
  params = jax.device_get(setup['state'].params)
  inputs, labels = [], []
  for batch in input_pipeline.create_eval_iterator(config):
    keep = batch['mask'] > 0
    inputs.append(batch['inputs'][keep])
    labels.append(batch['labels'][keep])
  inputs, labels = np.concatenate(inputs), np.concatenate(labels)
  assert len(labels) == 360
  logits, _ = setup['model'].apply({'params': params}, inputs, train=False)
  log_probs = jax.nn.log_softmax(logits)
  expected_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], 1))
  expected_accuracy = np.mean(np.argmax(logits, -1) == labels)
  assert result['accuracy'] == pytest.approx(float(expected_accuracy), abs=1e-6)
  assert result['loss'] == pytest.approx(float(expected_loss), rel=1e-4)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  create = input_pipeline.create_train_iterator

  def nan_from_step_5(config, start_step=0, **kwargs):
    for step, batch in enumerate(create(config, start_step=start_step, **kwargs), start_step):
      if step >= 4:  # The batch of step 5 (steps count from 1).
        batch = dict(batch, inputs=np.full_like(batch['inputs'], np.nan))
      yield batch

  monkeypatch.setattr(input_pipeline, 'create_train_iterator', nan_from_step_5)
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match='at step 5'):
    trainer.train_and_evaluate(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  params = restore_params(workdir, 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('field,value,message', [
    ('optimizer', 'adamx', 'config.optimizer'),
    ('lr_schedule', 'step', 'config.lr_schedule'),
    ('batch_size', 12, 'config.batch_size'),
    ('grad_accum_steps', 3, 'config.grad_accum_steps'),
    ('model.variant', 'X/3', 'config.model.variant'),
    ('model.tokenlearner.loc', 7, 'config.model.tokenlearner.loc'),
    ('loss', 'hinge', 'config.loss'),
])
def test_bad_config_field_fails_before_compiling(tmp_path, monkeypatch, field, value, message):
  def no_compiling(*args, **kwargs):
    raise AssertionError('compiled before validating the config')

  monkeypatch.setattr(jax, 'jit', no_compiling)
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))


def test_unknown_top_level_field_is_an_error(tmp_path):
  config = tiny_config()
  with config.unlocked():
    config.learning_rat = 0.1
  with pytest.raises(ValueError, match='config.learning_rat'):
    trainer.train_and_evaluate(config, str(tmp_path))


def _config_files():
  files = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
  return [f for f in files if os.path.basename(f) not in ('common.py', '__init__.py')]


@pytest.mark.parametrize('path', _config_files(), ids=os.path.basename)
def test_every_config_builds(path):
  module = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
  variants = [module.get_config()]
  for entry in getattr(module, 'get_sweep', lambda: [])():
    config = module.get_config()
    config.update_from_flattened_dict(entry['overrides'])
    variants.append(config)
  for config in variants:
    model_cfg = ModelConfig.from_config(config)
    trainer.TrainConfig.from_config(config, num_train_examples=100_000,
                                    num_classes=model_cfg.num_classes, num_devices=1)
    model = build_model(model_cfg)
    x = jnp.zeros((1, *model_cfg.input_shape), jnp.float32)
    variables = jax.eval_shape(lambda m=model, x=x: m.init(jax.random.key(0), x, train=False))
    logits, _ = jax.eval_shape(
        lambda v, m=model, x=x: m.apply(v, x, train=False), variables)
    assert logits.shape == (1, model_cfg.num_classes)


def test_main_imports():
  importlib.import_module('main')  # sweep.py is run in tests/test_sweep.py.


def test_video_multi_view_multi_label_end_to_end(tmp_path):
  from configs import moving_digits_tokenlearner  # pylint: disable=g-import-not-at-top
  config = moving_digits_tokenlearner.get_config()
  config.update_from_flattened_dict({
      'model.num_layers': 2, 'model.tokenlearner.loc': 1, 'dataset.image_size': 16,
      'dataset.num_frames': 4, 'dataset.multi_label': True, 'loss': 'sigmoid_xent',
      'eval_average': 'probs', 'batch_size': 16, 'eval_batch_size': 160,
      'num_train_steps': 2, 'warmup_steps': 1, 'log_every_steps': 1,
      'checkpoint_every_steps': 0})
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result['eval_num_examples'] == 1440  # Videos, each the mean of its 2 views.
  assert 0.0 < result['eval_map'] <= 1.0
  assert np.isfinite(result['eval_loss'])


def test_multi_label_loss_must_fit_the_data(tmp_path):
  config = tiny_config(loss='sigmoid_xent')
  with pytest.raises(ValueError, match='config.loss'):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_init_from_checkpoint_loads_params(tmp_path):
  source = str(tmp_path / 'source')
  trainer.train_and_evaluate(tiny_config(num_train_steps=2), source)
  config = tiny_config(num_train_steps=2, learning_rate=0.0)  # Params stay as loaded.
  with config.unlocked():
    config.init_from = dict(path=source, kind='checkpoint', load_head=True)
  target = str(tmp_path / 'target')
  trainer.train_and_evaluate(config, target)
  _assert_trees_equal(restore_params(source, 2), restore_params(target, 2))
