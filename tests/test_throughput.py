"""Tests of token_learner/train/throughput.py: MFU arithmetic, the peak table, FLOP counting, and
the train loop reading each step's metrics only after dispatching the next step."""
import collections
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer
from token_learner import build_model
from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner import flops as flops_lib
from token_learner.model_config import ModelConfig
from token_learner.data import stream
from token_learner.train import setup, sharding, throughput

P = jax.sharding.PartitionSpec
FakeDevice = collections.namedtuple('FakeDevice', 'platform device_kind')


def test_rates_match_a_hand_computation():
  # 2.5 steps/s of 256 examples on 4 devices, 8 TFLOPs per step, 100 TFLOP/s peak per device:
  # 640 examples/s, 160 per device; 20 TFLOP/s in all, 5 per device; MFU 5 / 100.
  out = throughput.rates(steps_per_sec=2.5, global_batch=256, num_devices=4, step_flops=8e12,
                         peak_tflops=100.0)
  assert out == pytest.approx({'examples_per_sec': 640.0, 'examples_per_sec_per_device': 160.0,
                               'tflops_per_device': 5.0, 'mfu': 0.05})
  # Without a peak there is no MFU; without FLOPs neither TFLOP/s nor MFU.
  assert 'mfu' not in throughput.rates(steps_per_sec=2.5, global_batch=256, num_devices=4,
                                       step_flops=8e12, peak_tflops=None)
  assert set(throughput.rates(steps_per_sec=2.5, global_batch=256, num_devices=4,
                              step_flops=None, peak_tflops=100.0)) == {
                                  'examples_per_sec', 'examples_per_sec_per_device'}


@pytest.mark.parametrize('kind, dtype, precision, expected', [
    ('TPU v4', 'bfloat16', None, 275.0),
    ('TPU v4', 'float32', None, 275.0),  # One bfloat16 pass at default precision.
    ('TPU v5 lite', 'bfloat16', None, 197.0),
    ('TPU v5e', 'bfloat16', None, 197.0),
    ('TPU v5', 'bfloat16', None, 459.0),
    ('TPU v5p', 'bfloat16', None, 459.0),
    ('TPU v6 lite', 'bfloat16', None, 918.0),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', None, 312.0),
    ('NVIDIA A100-PCIE-40GB', 'float32', None, 156.0),  # TF32.
    ('NVIDIA A100-SXM4-40GB', 'float32', 'highest', 19.5),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', None, 989.0),
    ('NVIDIA H100 PCIe', 'bfloat16', None, 756.0),
    ('NVIDIA H100 NVL', 'float32', None, 417.5),
    ('NVIDIA H200', 'float32', None, 494.7),
    ('NVIDIA H200 NVL', 'bfloat16', None, 835.0),
    # Unknown kinds, dtypes or precisions: no peak, so no MFU.
    ('TPU v4 lite', 'bfloat16', None, None),
    ('TPU v3', 'bfloat16', None, None),
    ('Tesla V100-SXM2-16GB', 'float32', None, None),
    ('NVIDIA A800-SXM4-80GB', 'bfloat16', None, None),
    ('TPU v5 lite', 'float32', 'highest', None),
    ('NVIDIA H100 80GB HBM3', 'float16', None, None),
])
def test_peak_table_lookup(kind, dtype, precision, expected):
  assert throughput.table_peak_tflops(kind, dtype, precision) == expected


def test_unknown_device_kind_omits_mfu():
  devices = [FakeDevice('gpu', 'Tesla V100-SXM2-16GB')] * 2
  peak, source = throughput.device_peak(devices, 'float32')
  assert peak is None and 'unknown device kind' in source
  meter = throughput.Meter(devices, dtype='float32', global_batch=8)
  meter.step_flops = 4e12
  line = meter.window(steps=10, seconds=4.0)  # 2.5 steps/s: 20 examples/s, 10 per device.
  assert 'mfu' not in line and line['tflops_per_device'] == pytest.approx(5.0)
  assert line['examples_per_sec_per_device'] == pytest.approx(10.0)
  assert 'mfu' not in meter.summary() and meter.summary()['peak_tflops_per_device'] is None
  known = throughput.Meter([FakeDevice('tpu', 'TPU v5 lite')] * 2, dtype='bfloat16',
                           global_batch=8)
  known.step_flops = 4e12
  assert known.window(steps=10, seconds=4.0)['mfu'] == pytest.approx(5.0 / 197.0)


def test_cpu_peak_is_the_measured_matmul_rate_shared_by_the_cpu_devices():
  rate = throughput.measured_matmul_tflops()
  assert rate > 0 and throughput.measured_matmul_tflops() == rate  # Measured once.
  peak, _ = throughput.device_peak(jax.devices()[:2], 'bfloat16')
  assert peak == pytest.approx(rate / len(jax.local_devices()))


@pytest.mark.parametrize('num_devices', [1, 8])
def test_step_flops_sum_the_devices_of_a_sharded_program(num_devices):
  # XLA's count for a program partitioned over n devices is one device's: Meter multiplies by n.
  b, d = 64, 128
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  step = jax.jit(lambda w, x: jnp.tanh(x @ w) @ w.T,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))
  w, x = jnp.ones((d, d)), jnp.ones((b, d))
  per_device = throughput.compiled_flops(step.lower(w, x).compile())
  meter = throughput.Meter(mesh.devices.flat, dtype='float32', global_batch=b)
  meter.count_flops(step, w, x)
  two_matmuls = 2 * (2 * b * d * d)  # The tanh adds b * d more (XLA counts it as one each).
  assert meter.step_flops == pytest.approx(two_matmuls, rel=0.01)
  assert per_device == pytest.approx(two_matmuls / num_devices, rel=0.01)


def test_accumulating_step_counts_every_micro_batch(tiny_config):
  counts, run_counts = [], []
  for k in (1, 2):
    run = setup.build(experiment_lib.from_config(tiny_config(grad_accum_steps=k)),
                      devices=jax.devices()[:2])
    assert (run.accumulation_free_step is None) == (k == 1)
    meter = throughput.Meter(run.mesh.devices.flat, dtype='float32', global_batch=16)
    meter.count_flops(run.train_step, run.init_state(), run.synthetic_batch(), run.dropout_rng,
                      accumulation_free_step=run.accumulation_free_step)
    counts.append(meter.step_flops)
    run_counts.append(throughput.train_step_flops(run, run.synthetic_batch()))
  # Uncorrected, XLA's count of the k = 2 step is about half (the scan body counted once).
  assert counts[1] == pytest.approx(counts[0], rel=0.05)
  assert run_counts[1] == pytest.approx(run_counts[0], rel=0.01)
  assert run_counts[0] == pytest.approx(counts[0], rel=0.01)


def _xla_step_flops(run):
  """XLA's count of the compiled train step, summed over the devices (what MFU used to be)."""
  compiled = run.train_step.lower(run.abstract_state, run.synthetic_batch(),
                                  run.dropout_rng).compile()
  return throughput.compiled_flops(compiled) * run.mesh.size


def _deep_run(tiny_config, **model):
  """4 layers, a TokenLearner before layer 2 (two scan segments when scanned), on one device (on
  several, XLA's per-device counts add each device's copy of the replicated optimizer update)."""
  overrides = {'model.num_layers': 4, 'model.tokenlearner.loc': 2}
  overrides.update({f'model.{k}': v for k, v in model.items()})
  return setup.build(experiment_lib.from_config(tiny_config(**overrides)),
                     devices=jax.devices()[:1])


def test_scanned_and_unrolled_models_count_the_same_step_flops(tiny_config):
  unrolled, scanned = _deep_run(tiny_config), _deep_run(tiny_config, scan_layers=True)
  batch = unrolled.synthetic_batch()
  flops = {}
  for name, run in (('unrolled', unrolled), ('scanned', scanned)):
    meter = throughput.Meter(run.mesh.devices.flat, dtype='float32', global_batch=16)
    meter.count_run_flops(run, batch)
    flops[name] = meter.step_flops
    assert meter.hardware_step_flops is None and 'hfu' not in meter.window(1, 1.0)
  assert flops['scanned'] == pytest.approx(flops['unrolled'], rel=0.01)
  # ... and both are XLA's count of the compiled unrolled step (the ground truth), while the
  # compiled scanned step's count is far lower: a scan body is counted once.
  assert flops['unrolled'] == pytest.approx(_xla_step_flops(unrolled), rel=0.01)
  assert _xla_step_flops(scanned) < 0.8 * flops['unrolled']


@pytest.mark.parametrize('scan_layers', [False, True])
def test_remat_changes_hfu_not_mfu(tiny_config, scan_layers):
  plain = _deep_run(tiny_config, scan_layers=scan_layers)
  remat = _deep_run(tiny_config, scan_layers=scan_layers, remat='full')
  meters = {}
  for name, run in (('plain', plain), ('remat', remat)):
    meters[name] = throughput.Meter(run.mesh.devices.flat, dtype='float32', global_batch=16)
    meters[name].count_run_flops(run, run.synthetic_batch())
  assert meters['remat'].step_flops == pytest.approx(meters['plain'].step_flops, rel=1e-6)
  line, plain_line = meters['remat'].window(10, 2.0), meters['plain'].window(10, 2.0)
  assert line['mfu'] == pytest.approx(plain_line['mfu'], rel=1e-6)
  # Full remat recomputes each block's forward pass: about 4/3 of the model FLOPs, as HFU.
  ratio = meters['remat'].hardware_step_flops / meters['remat'].step_flops
  assert 1.15 < ratio < 1.4, ratio
  assert line['hfu'] == pytest.approx(line['mfu'] * ratio, rel=1e-6)
  assert meters['remat'].summary()['hardware_step_tflops'] > meters['remat'].summary()[
      'step_tflops']


def test_flop_counts_are_kept_per_program_and_only_per_program(tiny_config, monkeypatch):
  """A second run of the same experiment in one process reuses both counts (no new trace); a
  change of anything the counted program depends on (the optimizer, the batch, the model) is
  counted anew and gives its own number."""
  def run_of(**overrides):
    return setup.build(experiment_lib.from_config(tiny_config(**overrides)),
                       devices=jax.devices()[:1])
  base = run_of(**{'model.tokenlearner.num_tokens': 3})  # A model no other test counts.
  step_flops = throughput.train_step_flops(base, base.synthetic_batch())
  gflops = flops_lib.count_flops_and_params(base.experiment.model)
  others = {
      'sgd': run_of(**{'model.tokenlearner.num_tokens': 3, 'optimizer': 'momentum'}),
      'batch': run_of(**{'model.tokenlearner.num_tokens': 3, 'batch_size': 8}),
      'model': run_of(**{'model.tokenlearner.num_tokens': 5}),
  }
  counted = {name: throughput.train_step_flops(run, run.synthetic_batch())
             for name, run in others.items()}
  assert len({step_flops, *counted.values()}) == 4, (step_flops, counted)
  model_gflops = flops_lib.count_flops_and_params(others['model'].experiment.model)
  assert model_gflops[0] > gflops[0] and model_gflops[1] > gflops[1]  # 5 maps, not 3.

  def traced(*args, **kwargs):
    raise AssertionError('counted again')
  monkeypatch.setattr(throughput, '_lowered_step_flops', traced)
  monkeypatch.setattr(flops_lib, 'build_model', traced)
  again = run_of(**{'model.tokenlearner.num_tokens': 3})
  assert throughput.train_step_flops(again, again.synthetic_batch()) == step_flops
  assert flops_lib.count_flops_and_params(again.experiment.model) == gflops
  with pytest.raises(AssertionError, match='counted again'):
    run = run_of(**{'model.tokenlearner.num_tokens': 3, 'weight_decay': 0.0})
    throughput.train_step_flops(run, run.synthetic_batch())


def _vit_forward_macs(*, image=224, patch=16, width=768, depth=12, mlp=3072, classes=1000,
                      cls_token=False):
  """Multiply-adds of a ViT forward pass on one image, by formula: the patch embedding, per layer
  the q, k, v and output projections (4 N D^2), the attention logits q.k and the weighted sum of
  the values (2 N^2 D, all heads together), the MLP (2 N D M), and the head."""
  n = (image // patch) ** 2 + cls_token
  embed = (image // patch) ** 2 * patch * patch * 3 * width
  layer = 4 * n * width ** 2 + 2 * n ** 2 * width + 2 * n * width * mlp
  return embed + depth * layer + width * classes


@pytest.mark.parametrize('classifier', ['gap', 'token'])
def test_vit_b16_forward_flops_match_the_analytic_count(classifier):
  macs = _vit_forward_macs(cls_token=classifier == 'token')
  # The published figure: ViT-B/16 at 224 (a class token, 197 tokens) is 17.6 GMACs ("GFLOPs").
  if classifier == 'token':
    assert macs / 1e9 == pytest.approx(17.56, abs=0.01)
  cfg = ModelConfig.from_dict({'variant': 'B/16', 'classifier': classifier, 'num_classes': 1000,
                               'tokenlearner': {'num_tokens': 0}}, image_size=224)
  gmacs, _ = flops_lib.count_flops_and_params(cfg)
  # XLA also counts the normalisations, softmax, GELU and residual adds: < 1 % of the matmuls.
  assert gmacs * 1e9 == pytest.approx(macs, rel=0.01)
  assert gmacs * 1e9 > macs


def test_cudnn_attention_is_counted_as_einsums():
  model = lambda impl: ModelConfig.from_dict(
      {'variant': 'Ti/16', 'num_layers': 2, 'dtype': 'bfloat16', 'attention_implementation': impl,
       'tokenlearner': {'num_tokens': 8, 'loc': 1}}, image_size=64)
  assert flops_lib.counted_config(model('cudnn')).attention_implementation == 'einsum'
  assert flops_lib.count_flops_and_params(model('cudnn'))[0] == pytest.approx(
      flops_lib.count_flops_and_params(model(None))[0], rel=0.01)


class _Metrics(dict):
  """Step metrics that record when the host first reads them (a dict subclass is a pytree leaf,
  so device_get hands it over as is and the reader iterates it)."""

  def __init__(self, metrics, step, events):
    super().__init__(metrics)
    self._step, self._events = step, events

  def _read(self):
    if ('read', self._step) not in self._events:
      self._events.append(('read', self._step))

  def items(self):
    self._read()
    return super().items()

  def __getitem__(self, key):
    self._read()
    return super().__getitem__(key)


def test_loop_reads_metrics_one_step_late_and_logs_throughput(tmp_path, tiny_config):
  events = []

  def recording_build(*args, **kwargs):
    run = setup.build(*args, **kwargs)
    jitted = run.train_step

    def step(state, batch, rng):
      events.append(('dispatch', len([e for e in events if e[0] == 'dispatch']) + 1))
      state, metrics = jitted(state, batch, rng)
      return state, _Metrics(metrics, events[-1][1], events)
    step.lower = jitted.lower
    return dataclasses.replace(run, train_step=step)

  config = tiny_config(checkpoint_every_steps=0, log_every_steps=1)  # Saves only at the end.
  workdir = str(tmp_path)
  trainer.train_and_evaluate(config, workdir, build=recording_build)
  order = {event: i for i, event in enumerate(events)}
  for step in range(1, 6):  # Read after the next step was dispatched.
    assert order[('read', step)] > order[('dispatch', step + 1)], events
  assert ('read', 6) in order  # The last step's metrics are read (and logged) too.

  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  t = summary['throughput']
  assert t['num_devices'] == 8 and t['device_kind'] == 'cpu'
  # The step's model FLOPs against an independent count: XLA's cost analysis of the model's
  # forward pass alone on the global batch of 16, unsharded. A train step is that forward pass
  # and a backward pass of about twice its FLOPs (plus the loss and the optimizer's elementwise
  # update): about 3x. A count of one device's share (1/8), of the forward pass alone (1x) or of
  # the step twice (6x) is outside.
  experiment = experiment_lib.from_config(config)
  model = build_model(experiment.model)
  x = jnp.zeros((16, *experiment.model.input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, x)
  forward_flops = forward.cost_analysis()['flops']
  assert 2.7 < t['step_tflops'] * 1e12 / forward_flops < 3.6, (t['step_tflops'], forward_flops)
  # TFLOP/s per device from examples/s (16 a step, over 8 devices), and MFU over the CPU's peak:
  # the matmul rate this process measured, shared by its 8 devices.
  np.testing.assert_allclose(
      t['tflops_per_device'], t['step_tflops'] * t['examples_per_sec'] / 16 / 8, rtol=1e-6)
  assert t['peak_tflops_per_device'] == pytest.approx(throughput.measured_matmul_tflops() / 8)
  np.testing.assert_allclose(t['mfu'], t['tflops_per_device'] / t['peak_tflops_per_device'],
                             rtol=1e-6)
  assert t['core_hours'] == pytest.approx(8 * summary['wall_time_s'] / 3600, rel=0.01)
  last = summary['final_metrics']
  assert last['examples_per_sec_per_device'] == pytest.approx(last['examples_per_sec'] / 8)
  assert {'mfu', 'tflops_per_device', 'core_hours', 'eta_minutes'} <= set(last)


def test_batched_digits_input_equals_row_by_row(monkeypatch, tiny_config):
  # Without augmentation the digits are processed a batch at a time (input throughput): the
  # batches are those of the row-by-row pipeline, bit for bit.
  cfg = experiment_lib.from_config(tiny_config()).data
  assert not cfg.augment
  batched = data.train_iterator(cfg, seed=3, batch_size=32, start_step=40)
  create = stream.train_batches
  monkeypatch.setattr(stream, 'train_batches',
                      lambda *args, batched, **kwargs: create(*args, batched=False, **kwargs))
  row_by_row = data.train_iterator(cfg, seed=3, batch_size=32, start_step=40)
  for _ in range(3):
    a, b = next(batched), next(row_by_row)
    assert a.keys() == b.keys() and a['inputs'].shape == (32, 16, 16, 3)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
