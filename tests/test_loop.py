"""token_learner.train.loop and setup: train_and_evaluate end to end on a micro model and the
offline digits data, the run builder, evaluators from config.evals (8 simulated CPU devices)."""
import glob
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer
from token_learner import build_model, data
from token_learner import experiment as experiment_lib
from token_learner import fields
from token_learner.evals import classification
from token_learner.data.normalize import normalize
from token_learner.train import checkpoints
from token_learner.train import setup, sharding

P = jax.sharding.PartitionSpec
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(config, devices):
  """The Run of `config` on `devices` (the run builder training uses) and a fresh state."""
  run = setup.build(experiment_lib.from_config(config), devices=devices)
  return dict(model=run.model, mesh=run.mesh, cfg=run.cfg, state=run.init_state(),
              step=run.train_step, shardings=run.state_shardings, data=run.experiment.data)


def _run_steps(config, devices, num_steps):
  setup = _prepare(config, devices)
  mesh, state, cfg = setup['mesh'], setup['state'], setup['cfg']
  _, rng = sharding.replicated_keys(1, mesh)
  batches = data.train_iterator(setup['data'], seed=cfg.seed, batch_size=cfg.batch_size)
  losses = []
  for _ in range(num_steps):
    batch = data.make_global_batch(next(batches), sharding.batch_sharding(mesh))
    with jax.transfer_guard('disallow'):  # The step itself moves nothing between host/device.
      state, metrics = setup['step'](state, batch, rng)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), state


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _event_tags(workdir):
  """{tag: {step: value}} of the TensorBoard scalars and images of `workdir` (None for images)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, {})[event.step] = (
            value.simple_value if value.HasField('simple_value')
            else float(tf.make_ndarray(value.tensor)) if value.tensor.dtype == 1 else None)
  return tags


def test_train_and_evaluate_writes_the_outputs_of_every_evaluator(tmp_path, tiny_config):
  # One run, the evaluators of config.evals side by side: the digits test split, a slice of the
  # train split (each under its own prefix, at its own cadence), few-shot and attention maps, and
  # the mean per-class accuracy asked for. The slice has 100 examples (the test split 360), and
  # a model that has seen that slice's images does better on it than on the test split only by
  # chance at 6 steps, so the check is by values: each evaluator's metrics are those of an
  # independent pass over its own split.
  workdir = str(tmp_path)
  result = trainer.train_and_evaluate(tiny_config(mean_per_class_accuracy=True, evals={
      'eval': dict(every_steps=3),
      'train_slice': dict(split='train[:100]', every_steps=2, batch_size=32),
      'fewshot': dict(kind='fewshot', every_steps=3, shots=(1, 5), seeds=1),
      'maps': dict(kind='attention_maps', every_steps=3, num_examples=2)}), workdir)
  assert result['step'] == 6
  assert result['eval_num_examples'] == 360 and result['train_slice_num_examples'] == 100
  assert 0.0 < result['fewshot_1shot'] <= 1.0 and 0.0 < result['fewshot_5shot'] <= 1.0
  assert 0.0 <= result['eval_accuracy'] <= result['eval_top5_accuracy'] <= 1.0
  assert 0.0 <= result['eval_mean_per_class_accuracy'] <= 1.0
  assert 'eval_map' not in result and 'eval_real_accuracy' not in result
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['steps'] == 6 and summary['gflops'] > 0 and summary['num_params'] > 0
  assert summary['config']['model']['variant'] == 'Mu/4'
  for name in ('eval', 'train_slice'):
    for metric in ('loss', 'accuracy', 'top5_accuracy', 'num_examples'):
      assert summary['final_metrics'][f'{name}_{metric}'] == result[f'{name}_{metric}']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']
  tags = _event_tags(workdir)
  # Maps and token diagnostics at both evaluations (step 3 and the final one), few-shot too;
  # each evaluator at its cadence, and the end.
  for tag in ('maps_images', 'maps_tokenlearner_0/entropy', 'maps_tokenlearner_0/overlap',
              'fewshot_1shot', 'eval_accuracy'):
    assert set(tags.get(tag, ())) == {3, 6}, (tag, tags.get(tag))
  assert set(tags['train_slice_accuracy']) == {2, 4, 6}
  assert tags['eval_loss'][6] == pytest.approx(result['eval_loss'])
  assert tags['train_slice_loss'][6] == pytest.approx(result['train_slice_loss'])

  # Independent: the final parameters over each split by hand.
  experiment = experiment_lib.from_config(tiny_config())
  model = build_model(experiment.model)
  params = checkpoints.restore_params(workdir)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False)[0])
  for name, split, count in (('eval', 'test', 360), ('train_slice', 'train[:100]', 100)):
    cfg = data.from_dict({**fields.section_dict(experiment.data), 'eval_split': split},
                         num_classes=10)
    batches = list(data.eval_input(cfg, batch_size=40))
    x = normalize(np.concatenate([b['inputs'][b['mask'] > 0] for b in batches]), cfg.mean,
                  cfg.std)
    y = np.concatenate([b['labels'][b['mask'] > 0] for b in batches])
    assert len(y) == count
    logits = np.asarray(forward(params, x), np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
    correct = logits.argmax(-1) == y
    assert result[f'{name}_accuracy'] == pytest.approx(np.mean(correct), abs=1e-9)
    assert result[f'{name}_loss'] == pytest.approx(-np.mean(log_probs[np.arange(count), y]),
                                                   rel=1e-4)
    if f'{name}_mean_per_class_accuracy' in result:
      per_class = [np.mean(correct[y == c]) for c in np.unique(y)]
      assert result[f'{name}_mean_per_class_accuracy'] == pytest.approx(np.mean(per_class),
                                                                        abs=1e-6)


def test_bad_evaluator_is_a_config_error_before_compiling(tmp_path, monkeypatch, tiny_config):
  monkeypatch.setattr(jax, 'jit', _no_compiling)
  for evals_section, message in (
      ({'Val': {}}, 'config.evals.Val: an evaluator name'),
      ({'val': {'kind': 'linear_probe'}}, 'config.evals.val.kind'),
      ({'val': {'every_step': 2}}, 'config.evals.val.every_step is not a field'),
      ({'few': {'kind': 'fewshot', 'shots': ()}}, 'config.evals.few.shots'),
      ({'val': {'dataset': {'name': 'cifar100_missing'}}}, 'cifar100_missing')):
    config = tiny_config()
    config.evals = evals_section  # As written in a config file: only the fields it sets.
    with pytest.raises(ValueError, match=message):
      trainer.train_and_evaluate(config, str(tmp_path))


def test_eight_devices_match_one_device(tiny_config):
  config = tiny_config()
  losses_1, params_1, _ = _run_steps(config, jax.devices()[:1], 3)
  losses_8, params_8, _ = _run_steps(config, jax.devices()[:8], 3)
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5, atol=1e-5)
  # Adam scales rounding-level gradients (near-zero entries summed in another order) up to
  # learning-rate-sized steps: a few entries differ by ~1e-5 after 3 steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5), params_1, params_8)


def test_fsdp_sharding_rules_shard_params_and_match(tiny_config):
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
  mesh = sharding.create_mesh(jax.devices()[:8])
  rules = [('Dense_0/kernel', (None, 'data'))]
  assert sharding.partition_spec('a/Dense_0/kernel', (4, 16), mesh, rules) == P(None, 'data')
  assert sharding.partition_spec('a/Dense_0/kernel', (4, 12), mesh, rules) == P()
  assert sharding.partition_spec('a/Dense_0/bias', (16,), mesh, rules) == P()
  assert sharding.partition_spec('count', (), mesh, [('.*', ('data',))]) == P()


def test_evaluate_counts_every_example_once_with_padding(tiny_config):
  config = tiny_config()
  setup = _prepare(config, jax.devices()[:8])
  eval_step = classification.compile_eval_step(setup['model'], setup['cfg'], setup['mesh'],
                                               setup['shardings'].params, multi_view=False,
                                               mean=setup['data'].mean, std=setup['data'].std)
  eval_input = data.eval_input(setup['data'], batch_size=setup['cfg'].eval_batch_size)
  result = trainer.evaluate(eval_step, setup['state'].params, eval_input, setup['mesh'])
  assert result['num_examples'] == 360
  # The eval input is built once and gives the same pass every time.
  again = trainer.evaluate(eval_step, setup['state'].params, eval_input, setup['mesh'])
  assert again == result

  # Independent computation over the unpadded split.
  params = jax.device_get(setup['state'].params)
  inputs, labels = [], []
  for batch in eval_input:
    keep = batch['mask'] > 0
    inputs.append(batch['inputs'][keep])
    labels.append(batch['labels'][keep])
  inputs, labels = np.concatenate(inputs), np.concatenate(labels)
  assert len(labels) == 360
  inputs = normalize(inputs, setup['data'].mean, setup['data'].std)
  logits, _ = setup['model'].apply({'params': params}, inputs, train=False)
  log_probs = jax.nn.log_softmax(logits)
  expected_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], 1))
  expected_accuracy = np.mean(np.argmax(logits, -1) == labels)
  assert result['accuracy'] == pytest.approx(float(expected_accuracy), abs=1e-6)
  assert result['loss'] == pytest.approx(float(expected_loss), rel=1e-4)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_config, restore_params):
  create = data.train_iterator

  def nan_from_step_5(cfg, start_step=0, **kwargs):
    for step, batch in enumerate(create(cfg, start_step=start_step, **kwargs), start_step):
      if step >= 4:  # The batch of step 5 (steps count from 1).
        # Float inputs are model inputs as they are (uint8 pixels cannot hold a NaN).
        batch = dict(batch, inputs=np.full(batch['inputs'].shape, np.nan, np.float32))
      yield batch

  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match='at step 5'):
    trainer.train_and_evaluate(tiny_config(), workdir, train_input=nan_from_step_5)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  params = restore_params(workdir, 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _no_compiling(*args, **kwargs):
  raise AssertionError('compiled before validating the config')


@pytest.mark.parametrize('field,value,message', [
    ('optimizer', 'adamx', 'config.optimizer'),
    ('lr_schedule', 'step', 'config.lr_schedule'),
    ('batch_size', 12, 'config.batch_size'),
    ('grad_accum_steps', 3, 'config.grad_accum_steps'),
    ('model.variant', 'X/3', 'config.model.variant'),
    ('model.tokenlearner.loc', 7, 'config.model.tokenlearner.loc'),
    ('loss', 'hinge', 'config.loss'),
    ('dataset.crop_min_area', 1.5, 'config.dataset.crop_min_area'),
    ('init_from.kind', 'torch', 'config.init_from.kind'),
    ('init_from.path', '/nonexistent/ViT-B_16.npz', 'config.init_from.path'),
    ('weight_decay_regex', '(', 'config.weight_decay_regex'),
])
def test_bad_config_field_fails_before_compiling(tmp_path, monkeypatch, field, value, message,
                                                 tiny_config):
  monkeypatch.setattr(jax, 'jit', _no_compiling)
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))


@pytest.mark.parametrize('key', ['learning_rat', 'model.num_layer', 'model.tokenlearner.locc',
                                 'dataset.image_sise', 'init_from.pth'])
def test_misspelt_key_in_any_section_is_an_error(tmp_path, tiny_config, monkeypatch, key):
  monkeypatch.setattr(jax, 'jit', _no_compiling)
  config = tiny_config()
  *parents, leaf = key.split('.')
  with config.unlocked():
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = 1
  section = '.'.join(['config', *parents])
  with pytest.raises(ValueError, match=f'config.{key} is not a field of {section}'):
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
    experiment = experiment_lib.from_config(config)
    experiment.train.for_run(num_train_examples=100_000, num_devices=1)
    model_cfg = experiment.model
    assert model_cfg.input_shape == experiment.data.example_shape
    model = build_model(model_cfg)
    x = jnp.zeros((1, *model_cfg.input_shape), jnp.float32)
    # init_with_output: the parameters and the logits from one trace of the model.
    (logits, _), variables = jax.eval_shape(
        lambda m=model, x=x: m.init_with_output(jax.random.key(0), x, train=False))
    assert logits.shape == (1, model_cfg.num_classes) and variables['params']


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


def test_multi_label_loss_must_fit_the_data(tmp_path, tiny_config):
  config = tiny_config(loss='sigmoid_xent')
  with pytest.raises(ValueError, match='config.loss'):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_init_from_checkpoint_loads_params(tmp_path, tiny_config, trained_workdir,
                                           restore_params):
  # The source: the shared finished run (its newest checkpoint, step 6, is the one loaded).
  config = tiny_config(num_train_steps=2, learning_rate=0.0)  # Params stay as loaded.
  config.init_from.update(dict(path=trained_workdir, kind='checkpoint', load_head=True))
  target = str(tmp_path / 'target')
  trainer.train_and_evaluate(config, target)
  _assert_trees_equal(restore_params(trained_workdir, 6), restore_params(target, 2))
