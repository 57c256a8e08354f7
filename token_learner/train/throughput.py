"""How fast a run trains: examples/s, TFLOP/s per device, MFU, HFU and core-hours.

    meter = Meter(mesh.devices.flat, dtype='bfloat16', global_batch=128)
    meter.count_run_flops(run, batch)  # once; lowers two programs, compiles nothing
    meter.window(steps=100, seconds=3.2)  # -> scalars of one log line
    meter.summary()  # -> summary.json's 'throughput'

Model FLOPs of a step (`train_step_flops`) are XLA's cost analysis of the *lowered* (not
compiled) train step of the run's model in the form `flops.counted_config` gives it: layers
unrolled (XLA counts a scan's body once, so a scanned model's compiled count falls towards 1/L),
no rematerialisation (recomputation is not model FLOPs), attention as einsums (a cuDNN attention
call counts 0), no gradient accumulation (the accumulation scan again), at the run's global
batch. Forward, backward and the optimizer update are counted, for the whole global batch
whatever the partitioning (the lowered program is the unpartitioned one). MFU is those FLOPs per
second per device over the device's peak dense rate for the model's compute dtype
(`PEAK_TFLOPS`); on CPU the peak is the measured rate of a float32 matmul in this process. A
device kind missing from the table has no MFU (omitted rather than wrong).

HFU (hardware FLOPs utilisation, logged as `hfu` only for a model with `remat`) counts the same
way with the rematerialised forward passes kept.
"""
import dataclasses
import functools
import re
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

from token_learner import flops as flops_lib
from token_learner.models import build_model
from token_learner.train import sharding
from token_learner.train import step as step_lib


class Peak(NamedTuple):
  """Peak dense TFLOP/s of one chip: bfloat16, float32 matmuls at JAX's default precision (one
  bfloat16 pass on TPU, TF32 tensor cores on A100/H100/H200), and IEEE float32 (precision
  'highest'; not published for TPUs)."""
  bfloat16: float
  float32: float
  float32_highest: Optional[float]


# (device_kind regex, lower case, searched; the first match wins, peak per chip). Vendor numbers,
# dense (without 2:4 sparsity):
#   TPU v4 275, v5e 197, v5p 459, v6e 918 bf16 TFLOP/s per chip: cloud.google.com/tpu/docs/v4,
#     /v5e, /v5p, /v6e ("System architecture" / "chip specifications"). JAX reports v5e as
#     'TPU v5 lite', v5p as 'TPU v5', v6e as 'TPU v6 lite'. TPUs run float32 matmuls at default
#     precision as one bfloat16 pass (docs.jax.dev "Matmul precision").
#   A100 (SXM and PCIe, 40 / 80 GB): 312 bf16, 156 TF32, 19.5 FP32 (NVIDIA A100 Tensor Core GPU
#     datasheet).
#   H100 SXM: 989 bf16, 494.7 TF32, 67 FP32; H100 PCIe: 756, 378, 51; H100 NVL: 835, 417.5, 60
#     (NVIDIA H100 Tensor Core GPU datasheet; its sparse figures halved).
#   H200 SXM (and GH200): 989 bf16, 494.7 TF32, 67 FP32; H200 NVL: 835, 417.5, 60 (NVIDIA H200
#     Tensor Core GPU datasheet).
PEAK_TFLOPS: Tuple[Tuple[str, Peak], ...] = (
    (r'^tpu v4$', Peak(275.0, 275.0, None)),
    (r'^tpu v5 ?(lite|e)$', Peak(197.0, 197.0, None)),
    (r'^tpu v5p?$', Peak(459.0, 459.0, None)),
    (r'^tpu v6 ?(lite|e)$', Peak(918.0, 918.0, None)),
    (r'a100', Peak(312.0, 156.0, 19.5)),
    (r'h100.*pcie', Peak(756.0, 378.0, 51.0)),
    (r'h100.*nvl', Peak(835.0, 417.5, 60.0)),
    (r'h100', Peak(989.0, 494.7, 67.0)),
    (r'h200.*nvl', Peak(835.0, 417.5, 60.0)),
    (r'h200', Peak(989.0, 494.7, 67.0)),
)

_FULL_PRECISION = ('highest', 'float32', 'f32_f32_f32')


def table_peak_tflops(device_kind: str, dtype: str,
                      matmul_precision: Optional[str] = None) -> Optional[float]:
  """Peak dense TFLOP/s of one `device_kind` chip (jax.Device.device_kind) for compute `dtype`
  ('bfloat16' | 'float32'); None for a kind or precision the table does not know."""
  kind = device_kind.strip().lower()
  for pattern, peak in PEAK_TFLOPS:
    if re.search(pattern, kind):
      break
  else:
    return None
  if dtype == 'bfloat16':
    return peak.bfloat16
  if dtype != 'float32':
    return None
  if str(matmul_precision or '').lower() in _FULL_PRECISION:
    return peak.float32_highest
  return peak.float32


@functools.lru_cache(maxsize=None)
def measured_matmul_tflops(n: int = 2048) -> float:
  """TFLOP/s of an n x n x n float32 matmul on this process's first device (the faster of two
  runs after a warm-up one), measured once per process."""
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(x, x).block_until_ready()
  best = float('inf')
  for _ in range(2):
    start = time.perf_counter()
    matmul(x, x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e12


def device_peak(devices: Iterable[jax.Device], dtype: str) -> Tuple[Optional[float], str]:
  """(peak TFLOP/s per device or None, where it comes from) for a mesh's `devices`.

  CPU: the measured float32 matmul rate of the process shared by its CPU devices (several only
  when simulated), whatever the dtype.
  """
  devices = list(devices)
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    num_cpus = sum(d.platform == 'cpu' for d in jax.local_devices())
    return measured_matmul_tflops() / num_cpus, f'measured 2048^3 float32 matmul / {num_cpus}'
  precision = jax.config.jax_default_matmul_precision
  peak = table_peak_tflops(kind, dtype, precision)
  if peak is None:
    return None, f'unknown device kind {kind!r} for {dtype} (no MFU)'
  return peak, f'{kind} {dtype} peak (vendor table)'


def rates(*, steps_per_sec: float, global_batch: int, num_devices: int,
          step_flops: Optional[float], peak_tflops: Optional[float],
          hardware_step_flops: Optional[float] = None) -> Dict[str, float]:
  """examples/s (total and per device), TFLOP/s per device, MFU (and HFU) of a rate of steps.

  `step_flops`: model FLOPs of one step summed over all devices; `hardware_step_flops`: the same
  with rematerialised recomputation (HFU, only when given). Without them (or without a peak)
  the fields that need them are left out.
  """
  out = {'examples_per_sec': steps_per_sec * global_batch,
         'examples_per_sec_per_device': steps_per_sec * global_batch / num_devices}
  if step_flops:
    out['tflops_per_device'] = step_flops * steps_per_sec / num_devices / 1e12
    if peak_tflops:
      out['mfu'] = out['tflops_per_device'] / peak_tflops
      if hardware_step_flops:
        out['hfu'] = hardware_step_flops * steps_per_sec / num_devices / 1e12 / peak_tflops
  return out


def compiled_flops(compiled) -> Optional[float]:
  """XLA's FLOP count of a compiled (or lowered) program; None where the backend has none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Some backends do not implement it.
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def _abstract(tree):
  """ShapeDtypeStructs (no shardings) of a tree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def train_step_flops(run, batch, *, recompute: bool = False) -> Optional[float]:
  """FLOPs of one train step of `run` (token_learner.train.setup.Run) on `batch` (arrays or
  ShapeDtypeStructs of the global batch), summed over all devices; None where the backend has
  no cost analysis.

  Counted from the lowered (not compiled) step of `flops.counted_config(run.experiment.model)`
  (unrolled, non-remat, attention as einsums) without gradient accumulation, on abstract inputs:
  nothing is allocated or compiled. `recompute=True` keeps the model's `remat`: the FLOPs the
  hardware runs, rematerialised forward passes included (HFU).

  Counted once per process for each program: everything the counted step depends on (the counted
  model, the train config, the normalisation, the batch's shapes, the mesh's shape) keys a cache,
  so a second run of the same experiment in one process reuses the count.
  """
  model_cfg = flops_lib.counted_config(run.experiment.model, keep_remat=recompute)
  cfg = dataclasses.replace(run.cfg, grad_accum_steps=1)
  key = repr((model_cfg, cfg, run.experiment.data.mean, run.experiment.data.std,
              jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), batch),
              dict(run.mesh.shape)))
  if key not in _STEP_FLOPS:
    if len(_STEP_FLOPS) >= 64:
      _STEP_FLOPS.pop(next(iter(_STEP_FLOPS)))
    _STEP_FLOPS[key] = _lowered_step_flops(run, model_cfg, cfg, batch)
  return _STEP_FLOPS[key]


# train_step_flops' counts in this process, by the repr of what the counted program depends on.
_STEP_FLOPS: Dict[str, Optional[float]] = {}


def _lowered_step_flops(run, model_cfg, cfg, batch) -> Optional[float]:
  model = build_model(model_cfg)
  state, _ = sharding.abstract_train_state(run.init_rng, model, run.tx, model_cfg.input_shape,
                                           run.mesh)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=run.tx, cfg=cfg,
                                   mean=run.experiment.data.mean, std=run.experiment.data.std))
  return compiled_flops(step.lower(_abstract(state), _abstract(batch),
                                   _abstract(run.dropout_rng)))


class Meter:
  """Throughput of one run on `devices` (the mesh's), for the log lines and summary.json.

  `core_hours` of the processes before this one (read from the checkpoint) are added to this
  process's devices x wall hours since `start_time` (default: now).
  """

  def __init__(self, devices: Iterable[jax.Device], *, dtype: str, global_batch: int,
               core_hours: float = 0.0, start_time: Optional[float] = None):
    self.devices = list(devices)
    self.dtype, self.global_batch = dtype, global_batch
    self.step_flops: Optional[float] = None  # Model FLOPs of one step, all devices.
    self.hardware_step_flops: Optional[float] = None  # With remat's recomputation (HFU).
    self.peak_tflops, self.peak_source = device_peak(self.devices, dtype)
    self._core_hours, self._start = core_hours, start_time or time.time()
    self._windows: List[Tuple[int, float]] = []

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def count_run_flops(self, run, batch):
    """Sets `step_flops` (model FLOPs, MFU) and, for a model with `remat`, `hardware_step_flops`
    (HFU) from `train_step_flops(run, batch)`; a no-op once set. Compiles nothing."""
    if self.step_flops is not None:
      return
    self.step_flops = train_step_flops(run, batch) or 0.0
    if run.experiment.model.remat != 'none' and self.step_flops:
      self.hardware_step_flops = train_step_flops(run, batch, recompute=True)
    self._log_flops()

  def count_flops(self, step, *args, accumulation_free_step=None):
    """Sets `step_flops` from the lowered program of a jitted `step` for `args` (the whole,
    unpartitioned program: all devices' FLOPs); a no-op once set. For a model's train step use
    `count_run_flops`, which also unrolls scanned layers and drops remat.

    XLA counts a scan's body once, so a step that accumulates gradients over k micro-batches
    passes the same step without accumulation as `accumulation_free_step`, whose count is used.
    Lowering costs no compilation.
    """
    if self.step_flops is not None:
      return
    counted = accumulation_free_step if accumulation_free_step is not None else step
    self.step_flops = compiled_flops(counted.lower(*args)) or 0.0
    self._log_flops()

  def _log_flops(self):
    logging.info('Train step: %.4g TFLOPs (model) over %d devices%s; peak %s TFLOP/s per device '
                 '(%s).', self.step_flops / 1e12, self.num_devices,
                 ', %.4g TFLOPs with remat' % (self.hardware_step_flops / 1e12)
                 if self.hardware_step_flops else '',
                 '%.4g' % self.peak_tflops if self.peak_tflops else 'unknown', self.peak_source)

  def core_hours(self) -> float:
    return self._core_hours + self.num_devices * (time.time() - self._start) / 3600

  def window(self, steps: int, seconds: float) -> Dict[str, float]:
    """Scalars of a log line: `steps` took `seconds` (examples/s per device, TFLOP/s per device,
    MFU, HFU with remat, core-hours so far)."""
    self._windows.append((steps, seconds))
    out = self._rates(steps / max(seconds, 1e-9))
    del out['examples_per_sec']  # The train logger writes it itself.
    out['core_hours'] = self.core_hours()
    return out

  def _rates(self, steps_per_sec):
    return rates(steps_per_sec=steps_per_sec, global_batch=self.global_batch,
                 num_devices=self.num_devices, step_flops=self.step_flops,
                 peak_tflops=self.peak_tflops, hardware_step_flops=self.hardware_step_flops)

  def summary(self) -> Dict[str, Any]:
    """The run's throughput: the mean rate of this process's log windows after the first (which
    holds the compilation) or of the only one, the peak used and the core-hours."""
    out = {'device_kind': self.devices[0].device_kind, 'num_devices': self.num_devices,
           'dtype': self.dtype, 'peak_tflops_per_device': self.peak_tflops,
           'peak_source': self.peak_source,
           'step_tflops': self.step_flops / 1e12 if self.step_flops else None}
    if self.hardware_step_flops:
      out['hardware_step_tflops'] = self.hardware_step_flops / 1e12
    windows = self._windows[1:] or self._windows
    if windows:
      steps, seconds = map(sum, zip(*windows))
      out.update(self._rates(steps / max(seconds, 1e-9)))
    out['core_hours'] = self.core_hours()
    return out
