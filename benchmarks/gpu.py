r"""The default training path on one GPU: ViT-L/16 vs TL-L/16 train / forward img/s, MFU, memory.

  bash benchmarks/gpu.sh                       # what this runs; gpu.json in the repository root
  python -m benchmarks.gpu --out=/tmp/gpu.json --batch=128
  python -m benchmarks.gpu --cpu_smoke --out=/tmp/gpu.json   # tiny models on CPU (the test)

Groups, each in its own subprocess with its own timeout (and all within `--budget_s`):

- `backend`: JAX's backend and device; anything but a GPU stops here ("no GPU backend", exit 1).
- `matmul`: an 8192^3 bfloat16 matmul, TFLOP/s: the achievable peak of this chip in this run.
- `vit`, `tl`: ViT-L/16 and TL-L/16 (16 TokenLearner tokens before layer 12, the paper's
  "16-TL at 12"), 224x224, the default training path (`dtype='bfloat16'`, the model's default
  `attention_implementation`, which becomes 'auto'; AdamW, donated state, `setup.build`): train
  img/s, model TFLOP/s, MFU against the chip's peak (`throughput.device_peak`) and against the
  matmul, peak memory (`memory_stats()`), then forward img/s.
- `vivit_memory`: ViViT-L/16 + 16-TL at 12, 32 x 224 x 224 clips, the train step of
  configs/kinetics400_tokenlearner.py at its per-device batch (batch 64 over an 8-GPU node: 8),
  compiled only: XLA's `memory_analysis()`.

Model FLOPs are `throughput.train_step_flops` (scan-aware, no remat, attention counted whatever
its kernel); the TL/ViT speed-ups are printed beside the FLOPs ratio. Each measurement is printed
as it finishes and gpu.json is rewritten (atomically) after each one, so a group that times out
loses nothing measured before. The children get the GPU XLA flags of
token_learner/train/xla_flags.py unless XLA_FLAGS is set.

Imports jax, flax, optax and the library's model / run builder only: no TensorFlow, TFDS, clu,
ml_collections or matplotlib; the experiments are plain dicts (`experiment.from_config`).
"""
import argparse
import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2.0 ** 30
GROUPS = ('backend', 'matmul', 'vit', 'tl', 'vivit_memory')
TIMEOUTS_S = {'backend': 90, 'matmul': 60, 'vit': 150, 'tl': 120, 'vivit_memory': 150}
# The settings of a run on a GPU, and of --cpu_smoke (tiny models, the same code paths).
SETTINGS = {
    'gpu': dict(variant='L/16', num_layers=None, image_size=224, num_tokens=16, loc=12,
                batch=64, steps=20, matmul_size=8192, frames=32, video_batch=8),
    'cpu_smoke': dict(variant='Ti/16', num_layers=1, image_size=32, num_tokens=4, loc=1,
                      batch=2, steps=2, matmul_size=256, frames=4, video_batch=1),
}
RESULT = 'RESULT '
# What the TF-free path must not load (each child reports which it did load: gpu.json).
HEAVY_MODULES = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections', 'matplotlib')


def experiment_dict(s, name):
  """The experiment of a group as a config dict: bfloat16, the model's default attention."""
  from token_learner import experiment  # pylint: disable=g-import-not-at-top
  model = {'variant': s['variant'], 'num_layers': s['num_layers'], 'dtype': 'bfloat16',
           'tokenlearner': {'num_tokens': 0 if name == 'vit' else s['num_tokens'],
                            'loc': s['loc'], 'version': 'v1', 'fuser': False}}
  common = {'num_train_steps': 1000, 'warmup_steps': 10, 'learning_rate': 1e-4}
  if name == 'vivit_memory':  # configs/kinetics400_tokenlearner.py (tests check they agree).
    model.update(name='vivit', num_classes=400, tubelet_size=2, stochastic_depth=0.1)
    return experiment.from_config({
        **common, 'batch_size': s['video_batch'], 'eval_batch_size': s['video_batch'],
        'optimizer': 'momentum', 'momentum': 0.9, 'label_smoothing': 0.1, 'grad_clip_norm': 1.0,
        'model': model,
        'dataset': {'name': 'dmvr', 'num_frames': s['frames'], 'stride': 2,
                    'image_size': s['image_size'], 'multi_label': False}})
  model.update(name='vit', num_classes=1000)
  return experiment.from_config({
      **common, 'batch_size': s['batch'], 'eval_batch_size': s['batch'], 'optimizer': 'adamw',
      'weight_decay': 0.05, 'model': model,
      'dataset': {'name': 'imagenet2012', 'image_size': s['image_size']}})


# ---------------------------------------------------------------------------------------------
# Children: one group each, a `RESULT {"line": ..., "values": {...}}` line per measurement.

def _emit(line, **values):
  print(RESULT + json.dumps({'line': line, 'values': values}), flush=True)


def _timed(call, steps):
  """Seconds per call over `steps` calls after one warm-up call (each call blocks)."""
  call()
  start = time.perf_counter()
  for _ in range(steps):
    call()
  return (time.perf_counter() - start) / steps


def child_backend(s):
  del s
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  _emit(f'backend {jax.default_backend()}: {jax.device_count()} x {device.device_kind}, '
        f'jax {jax.__version__}', backend=jax.default_backend(), device_kind=device.device_kind,
        device_count=jax.device_count(), jax=jax.__version__, jaxlib=jaxlib.__version__)


def child_matmul(s):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = s['matmul_size']
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  mm = jax.jit(jnp.matmul).lower(a, b).compile()
  seconds = _timed(lambda: mm(a, b).block_until_ready(), 10)
  tflops = 2 * n ** 3 / seconds / 1e12
  _emit(f'matmul {n}^3 bfloat16: {tflops:.4g} TFLOP/s', matmul_tflops=tflops, matmul_size=n)


def _memory_stats(device):
  try:
    return device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # Not every backend has it (CPU: None).
    return {}


def child_model(s, name):
  """Train step then forward pass of `name` ('vit' | 'tl') on the first device."""
  import jax  # pylint: disable=g-import-not-at-top
  from token_learner import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from token_learner.train import setup  # pylint: disable=g-import-not-at-top
  from token_learner.train import throughput  # pylint: disable=g-import-not-at-top
  exp = experiment_dict(s, name)
  device = jax.devices()[0]
  run = setup.build(exp, devices=[device])
  label = {'vit': f'ViT-{s["variant"]}', 'tl': f'TL-{s["variant"]} {s["num_tokens"]}-TL at '
                                                f'{s["loc"]}'}[name]
  batch = run.synthetic_batch()
  state = run.init_state()
  step_flops = throughput.train_step_flops(run, batch)
  peak, peak_source = throughput.device_peak([device], 'bfloat16')
  start = time.perf_counter()
  compiled = run.train_step.lower(state, batch, run.dropout_rng).compile()
  compile_s = time.perf_counter() - start
  box = [state]

  def train():
    box[0], metrics = compiled(box[0], batch, run.dropout_rng)
    jax.block_until_ready(metrics)
  seconds = _timed(train, s['steps'])
  tflops = step_flops / seconds / 1e12 if step_flops else None
  memory = _memory_stats(device)
  values = dict(model=label, attention_implementation=exp.model.attention_implementation,
                batch=s['batch'], train_img_per_sec=s['batch'] / seconds,
                train_step_tflops=step_flops / 1e12 if step_flops else None,
                train_tflops_per_sec=tflops, peak_tflops=peak, peak_source=peak_source,
                mfu=tflops / peak if tflops and peak else None, train_compile_s=compile_s,
                peak_memory_bytes=memory.get('peak_bytes_in_use'))
  mem = (f', peak memory {values["peak_memory_bytes"] / GIB:.1f} GiB'
         if values['peak_memory_bytes'] else '')
  _emit(f'{label} train: {values["train_img_per_sec"]:.1f} img/s, '
        + (f'{tflops:.4g} TFLOP/s, MFU {values["mfu"]:.3f} of {peak:.4g} ({peak_source})'
           if values['mfu'] else 'no MFU') + mem + f'; compiled in {compile_s:.0f} s', **values)

  params = box[0].params
  del box[0], state, compiled
  forward = jax.jit(lambda p, x: run.model.apply({'params': p}, x, train=False)[0])
  compiled = forward.lower(params, batch['inputs']).compile()
  seconds = _timed(lambda: jax.block_until_ready(compiled(params, batch['inputs'])), s['steps'])
  gflops_per_img = 2 * flops_lib.count_flops_and_params(exp.model)[0]
  tflops = gflops_per_img * s['batch'] / seconds / 1e3
  values = dict(forward_img_per_sec=s['batch'] / seconds, forward_gflops_per_img=gflops_per_img,
                forward_tflops_per_sec=tflops, forward_mfu=tflops / peak if peak else None)
  _emit(f'{label} forward: {values["forward_img_per_sec"]:.1f} img/s, {tflops:.4g} TFLOP/s'
        + (f', MFU {values["forward_mfu"]:.3f}' if peak else ''), **values)


def child_vivit_memory(s):
  import jax  # pylint: disable=g-import-not-at-top
  from token_learner.train import setup  # pylint: disable=g-import-not-at-top
  exp = experiment_dict(s, 'vivit_memory')
  run = setup.build(exp, devices=jax.devices()[:1])
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.batch_sharding)
  batch = jax.tree.map(spec, jax.eval_shape(run.synthetic_batch))
  start = time.perf_counter()
  mem = run.train_step.lower(run.abstract_state, batch, run.dropout_rng).compile().memory_analysis()
  compile_s = time.perf_counter() - start
  total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  values = dict(model=f'ViViT-{s["variant"]} + {s["num_tokens"]}-TL at {s["loc"]}',
                input_shape=list(run.input_shape), batch=s['video_batch'],
                attention_implementation=exp.model.attention_implementation,
                compiled_bytes=total, temp_bytes=mem.temp_size_in_bytes,
                argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
                alias_bytes=mem.alias_size_in_bytes, compile_s=compile_s)
  _emit(f'{values["model"]} {s["frames"]}x{s["image_size"]} batch {s["video_batch"]} train step: '
        f'compiled memory {total / GIB:.2f} GiB (temp {mem.temp_size_in_bytes / GIB:.2f}, '
        f'alias {mem.alias_size_in_bytes / GIB:.2f}); compiled in {compile_s:.0f} s', **values)


def run_child(group, s):
  if group == 'backend':
    child_backend(s)
  elif group == 'matmul':
    child_matmul(s)
  elif group in ('vit', 'tl'):
    child_model(s, group)
  elif group == 'vivit_memory':
    child_vivit_memory(s)
  else:
    raise ValueError(f'unknown group {group!r}; one of {GROUPS}')


# ---------------------------------------------------------------------------------------------
# The driver: never initialises a backend itself (a GPU's memory belongs to the children).

def _write_json(path, report):
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.gpu.', suffix='.json', dir=directory)
  with os.fdopen(fd, 'w') as f:
    json.dump(report, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _summary(groups):
  """TL/ViT speed-ups beside the FLOPs ratios, MFU against the measured matmul."""
  get = lambda g, k: groups.get(g, {}).get('results', {}).get(k)
  out = {}
  matmul = get('matmul', 'matmul_tflops')
  for g in ('vit', 'tl'):
    for mode in ('train', 'forward'):
      if matmul and get(g, f'{mode}_tflops_per_sec'):
        out[f'{g}_{mode}_fraction_of_matmul'] = get(g, f'{mode}_tflops_per_sec') / matmul
  for mode, flops in (('train', 'train_step_tflops'), ('forward', 'forward_gflops_per_img')):
    vit, tl = get('vit', f'{mode}_img_per_sec'), get('tl', f'{mode}_img_per_sec')
    if vit and tl:
      out[f'tl_vit_{mode}_speedup'] = tl / vit
    if get('vit', flops) and get('tl', flops):
      out[f'tl_vit_{mode}_flops_ratio'] = get('vit', flops) / get('tl', flops)
  return out


def _run_group(group, args, env, timeout, on_result):
  """Runs one group's child; returns (status, seconds, stderr tail)."""
  cmd = [sys.executable, '-m', 'benchmarks.gpu', f'--child={group}']
  if args.cpu_smoke:
    cmd.append('--cpu_smoke')
  for key in ('batch', 'steps'):
    if getattr(args, key):
      cmd.append(f'--{key}={getattr(args, key)}')
  start = time.monotonic()
  with tempfile.TemporaryFile('w+') as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                            text=True, start_new_session=True)
    lines = queue.Queue()

    def read():
      for line in proc.stdout:
        lines.put(line)
      lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    status = None
    while status is None:
      try:
        line = lines.get(timeout=max(0.0, start + timeout - time.monotonic()))
      except queue.Empty:
        os.killpg(proc.pid, signal.SIGKILL)
        status = f'timeout after {timeout:.0f} s'
        break
      if line is None:
        status = 'ok' if proc.wait() == 0 else f'failed (exit {proc.returncode})'
      elif line.startswith(RESULT):
        on_result(json.loads(line[len(RESULT):]))
    proc.wait()
    err.seek(0)
    tail = err.read().splitlines()[-12:]
  return status, time.monotonic() - start, tail


def driver(args):
  from token_learner.train import xla_flags  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))
  if args.cpu_smoke:
    env['JAX_PLATFORMS'] = 'cpu'
  xla_flags.apply_defaults(env)
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  report = {'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'commit': commit, 'python': sys.executable, 'xla_flags': env.get('XLA_FLAGS', ''),
            'mode': 'cpu_smoke' if args.cpu_smoke else 'gpu',
            'settings': settings_of(args), 'groups': {}, 'summary': {}}
  deadline = time.monotonic() + args.budget_s
  ok = True
  for group in args.groups:
    left = deadline - time.monotonic()
    if left < 5:
      print(f'[{group}] skipped: the {args.budget_s:.0f} s budget is spent', flush=True)
      report['groups'][group] = {'status': 'skipped (budget)', 'results': {}}
      ok = False
      continue
    entry = report['groups'][group] = {'status': 'running', 'results': {}}

    def on_result(result, group=group, entry=entry):
      if group != 'backend' and result['line']:  # The backend's waits for the check.
        print(f'[{group}] {result["line"]}', flush=True)
      entry['results'].update(result['values'])
      if group == 'backend':
        entry['line'] = result['line']
      report['summary'] = _summary(report['groups'])
      if group != 'backend' or args.cpu_smoke:
        _write_json(args.out, report)
    status, seconds, tail = _run_group(group, args, env, min(TIMEOUTS_S[group], left),
                                       on_result)
    entry.update(status=status, seconds=round(seconds, 1))
    if group == 'backend':
      backend = entry['results'].get('backend')
      if backend != 'gpu' and not args.cpu_smoke:
        print(f'no GPU backend (JAX backend: {backend or "none: " + status}): nothing measured',
              flush=True)
        for line in tail if status != 'ok' else ():
          print('  ' + line, flush=True)
        return 1
      print(f'== {report["started"]} {commit} {sys.executable}; XLA_FLAGS='
            f'{report["xla_flags"]!r}', flush=True)
      if 'backend' in entry['results']:
        print(f'[backend] {entry["line"]}', flush=True)
    if status != 'ok':
      ok = False
      print(f'[{group}] {status} after {seconds:.0f} s; its stderr ends:', flush=True)
      for line in tail:
        print('  ' + line, flush=True)
    report['summary'] = _summary(report['groups'])
    _write_json(args.out, report)
  summary = report['summary']
  for mode in ('train', 'forward'):
    if f'tl_vit_{mode}_speedup' in summary:
      ratio = summary.get(f'tl_vit_{mode}_flops_ratio', float('nan'))
      print(f'TL/ViT {mode}: speed-up {summary[f"tl_vit_{mode}_speedup"]:.2f}x, FLOPs ratio '
            f'{ratio:.2f}x', flush=True)
  print(f'wrote {args.out}', flush=True)
  return 0 if ok else 1


def settings_of(args):
  s = dict(SETTINGS['cpu_smoke' if args.cpu_smoke else 'gpu'])
  for key in ('batch', 'steps'):
    if getattr(args, key):
      s[key] = getattr(args, key)
  return s


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default=os.path.join(REPO, 'gpu.json'), help='The JSON report.')
  parser.add_argument('--cpu_smoke', action='store_true',
                      help='Tiny models on CPU (Ti/16, 32 px, 1 layer, 2 steps): the code paths.')
  parser.add_argument('--groups', type=lambda v: v.split(','), default=list(GROUPS),
                      help=f'Comma-separated subset of {",".join(GROUPS)} (backend first).')
  parser.add_argument('--batch', type=int, default=0, help='Image batch (default 64; smoke 2).')
  parser.add_argument('--steps', type=int, default=0, help='Timed steps (default 20; smoke 2).')
  parser.add_argument('--budget_s', type=float, default=340.0,
                      help='Wall-clock budget of all groups together.')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  unknown = [g for g in args.groups if g not in GROUPS]
  if unknown:
    parser.error(f'unknown groups {unknown}; one of {GROUPS}')
  if args.child is None and 'backend' not in args.groups:
    args.groups = ['backend'] + args.groups
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    run_child(args.child, settings_of(args))
    print(RESULT + json.dumps({'line': None, 'values': {
        'heavy_modules_loaded': [m for m in HEAVY_MODULES if m in sys.modules]}}), flush=True)
    return 0
  return driver(args)


if __name__ == '__main__':
  sys.exit(main())
