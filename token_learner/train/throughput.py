"""How fast a run trains: examples/s, TFLOP/s per device, MFU and core-hours.

    meter = Meter(mesh.devices.flat, dtype='float32', global_batch=128)
    meter.count_flops(p_train_step, state, batch, rng)  # once, before the first step runs
    meter.window(steps=100, seconds=3.2)  # -> scalars of one log line
    meter.summary()  # -> summary.json's 'throughput'

FLOPs of a step are XLA's count of the compiled train step (forward, backward and optimizer, any
rematerialised recomputation included). For a program partitioned over several devices,
`cost_analysis()` describes the program of one device (a data-parallel step over 8 devices
reports 1/8 of the global batch's FLOPs; tests/test_throughput.py checks it), so a step's total is
that count times the devices. MFU is the achieved FLOP/s per device over the device's peak dense
rate for the model's compute dtype (`PEAK_TFLOPS`); on CPU the peak is the measured rate of a
float32 matmul in this process. A device kind missing from the table has no MFU (omitted rather
than wrong).
"""
import functools
import re
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp


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
          step_flops: Optional[float], peak_tflops: Optional[float]) -> Dict[str, float]:
  """examples/s (total and per device), TFLOP/s per device and MFU of a rate of steps.

  `step_flops`: FLOPs of one step summed over all devices; without it (or without a peak) the
  fields that need it are left out.
  """
  out = {'examples_per_sec': steps_per_sec * global_batch,
         'examples_per_sec_per_device': steps_per_sec * global_batch / num_devices}
  if step_flops:
    out['tflops_per_device'] = step_flops * steps_per_sec / num_devices / 1e12
    if peak_tflops:
      out['mfu'] = out['tflops_per_device'] / peak_tflops
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


class Meter:
  """Throughput of one run on `devices` (the mesh's), for the log lines and summary.json.

  `core_hours` of the processes before this one (read from the checkpoint) are added to this
  process's devices x wall hours since `start_time` (default: now).
  """

  def __init__(self, devices: Iterable[jax.Device], *, dtype: str, global_batch: int,
               core_hours: float = 0.0, start_time: Optional[float] = None):
    self.devices = list(devices)
    self.dtype, self.global_batch = dtype, global_batch
    self.step_flops: Optional[float] = None
    self.peak_tflops, self.peak_source = device_peak(self.devices, dtype)
    self._core_hours, self._start = core_hours, start_time or time.time()
    self._windows: List[Tuple[int, float]] = []

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def count_flops(self, step, *args, accumulation_free_step=None):
    """Sets `step_flops` from the jitted `step` lowered and compiled for `args` (the compilation
    its first call then reuses); a no-op once set.

    XLA counts a scan's body once, so a step that accumulates gradients over k micro-batches
    passes the same step without accumulation as `accumulation_free_step`: the k - 1 uncounted
    micro-batches are its lowered (whole-batch, not yet partitioned) program's FLOPs minus those
    of the accumulating step's lowered program. Lowering costs no compilation.
    """
    if self.step_flops is not None:
      return
    lowered = step.lower(*args)
    per_device = compiled_flops(lowered.compile())
    self.step_flops = per_device * self.num_devices if per_device else 0.0
    if per_device and accumulation_free_step is not None:
      whole, accumulating = (compiled_flops(accumulation_free_step.lower(*args)),
                             compiled_flops(lowered))
      self.step_flops = self.step_flops + whole - accumulating if whole and accumulating else 0.0
    logging.info('Train step: %.4g TFLOPs over %d devices; peak %s TFLOP/s per device (%s).',
                 self.step_flops / 1e12, self.num_devices,
                 '%.4g' % self.peak_tflops if self.peak_tflops else 'unknown', self.peak_source)

  def core_hours(self) -> float:
    return self._core_hours + self.num_devices * (time.time() - self._start) / 3600

  def window(self, steps: int, seconds: float) -> Dict[str, float]:
    """Scalars of a log line: `steps` took `seconds` (examples/s per device, TFLOP/s per device,
    MFU, core-hours so far)."""
    self._windows.append((steps, seconds))
    out = self._rates(steps / max(seconds, 1e-9))
    del out['examples_per_sec']  # The train logger writes it itself.
    out['core_hours'] = self.core_hours()
    return out

  def _rates(self, steps_per_sec):
    return rates(steps_per_sec=steps_per_sec, global_batch=self.global_batch,
                 num_devices=self.num_devices, step_flops=self.step_flops,
                 peak_tflops=self.peak_tflops)

  def summary(self) -> Dict[str, Any]:
    """The run's throughput: the mean rate of this process's log windows after the first (which
    holds the compilation) or of the only one, the peak used and the core-hours."""
    out = {'device_kind': self.devices[0].device_kind, 'num_devices': self.num_devices,
           'dtype': self.dtype, 'peak_tflops_per_device': self.peak_tflops,
           'peak_source': self.peak_source,
           'step_tflops': self.step_flops / 1e12 if self.step_flops else None}
    windows = self._windows[1:] or self._windows
    if windows:
      steps, seconds = map(sum, zip(*windows))
      out.update(self._rates(steps / max(seconds, 1e-9)))
    out['core_hours'] = self.core_hours()
    return out
