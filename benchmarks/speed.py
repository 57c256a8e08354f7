r"""Images/s of ViT and TokenLearner (forward, train step) vs PyTorch eager and torch.compile.

  python -m benchmarks.speed                                   # ViT-B/16, TL-B/16 8 at 6, CPU
  python -m benchmarks.speed --only=jax --steps=3 --models=vit --modes=forward
  python -m benchmarks.speed --only=jax --jax_variants=base,fused,xla,fused+xla   # the levers
  XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.speed --only=jax
  python -m benchmarks.speed --only=jax --sharding=fsdp --num_devices=0   # all devices, FSDP

JAX runs the project's run (`token_learner.train.setup.build` of an experiment made from these
flags: the model, its real train step with AdamW and donated state, `--sharding` over a
`--mesh_shape` mesh of `--num_devices` devices, default one). PyTorch runs
`benchmarks/torch_vit.py` (`from benchmarks import torch_vit`, imported only then), the same
architecture (dims, layers, TokenLearner placement and token count), eager and `torch.compile`d,
with AdamW and cross-entropy for the train step and `torch.set_num_threads(--threads)`.

The contenders of one (model, mode) group run interleaved, one timed call each per round, with
one 2048^3 float32 matmul (`--matmul_size`) per round as the machine's measured matmul rate; each
number is a median over `--steps` rounds. "peak" = the model's XLA cost-analysis FLOPs per second
over that rate (for PyTorch, the same FLOPs as JAX). TL/ViT lines put the speed-up beside the
FLOPs ratio. Without torch the PyTorch columns are skipped with a note.
"""
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from token_learner import experiment
from token_learner.train import setup

FLAGS = flags.FLAGS
flags.DEFINE_list('only', ['jax', 'torch', 'compile'], 'Frameworks: jax, torch (eager), compile.')
flags.DEFINE_list('models', ['vit', 'tl'], 'vit and/or tl (TokenLearner before --loc).')
flags.DEFINE_list('modes', ['forward', 'train'], 'forward and/or train (fwd+bwd+AdamW).')
flags.DEFINE_list('jax_variants', ['base'], "JAX contenders: '+'-joined levers of {base "
                  "(attention_implementation='einsum'), fused (fused QKV), xla, cudnn, auto "
                  "(attention_implementation)}, e.g. base,fused+xla.")
flags.DEFINE_integer('steps', 5, 'Timed rounds (after one warm-up call each).')
flags.DEFINE_integer('batch', 8, 'Batch size.')
flags.DEFINE_string('variant', 'B/16', 'ViT variant.')
flags.DEFINE_integer('image_size', 224, 'Image side.')
flags.DEFINE_integer('num_tokens', 8, 'TokenLearner tokens S.')
flags.DEFINE_integer('loc', 6, 'Layer the TokenLearner precedes.')
flags.DEFINE_integer('num_layers', None, 'Override the variant depth (quick runs).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'JAX compute dtype.')
flags.DEFINE_enum('sharding', 'replicated', ['replicated', 'fsdp', 'tp', 'fsdp_tp'],
                  'config.sharding of the JAX runs.')
flags.DEFINE_list('mesh_shape', ['-1', '1'], 'config.mesh_shape (data, model) of the JAX runs.')
flags.DEFINE_integer('num_devices', 1, 'Devices of the JAX mesh (0: all).')
flags.DEFINE_integer('threads', len(os.sched_getaffinity(0)), 'torch.set_num_threads.')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square matmul measuring the peak.')
flags.DEFINE_float('peak_tflops', 0.0, 'Nominal peak TFLOP/s of the device (0: only the '
                   'measured matmul rate); prints MFU against it too.')


def experiment_of(name, levers=()):
  """The experiment of one JAX contender: these flags as a config dict (validated, nothing read)."""
  impl = ('cudnn' if 'cudnn' in levers else 'xla' if 'xla' in levers else
          'auto' if 'auto' in levers else 'einsum')
  return experiment.from_config({
      'batch_size': FLAGS.batch, 'eval_batch_size': FLAGS.batch, 'num_train_steps': 1000,
      'optimizer': 'adamw', 'learning_rate': 1e-4, 'weight_decay': 0.05, 'warmup_steps': 10,
      'sharding': FLAGS.sharding, 'mesh_shape': tuple(int(n) for n in FLAGS.mesh_shape),
      'model': {'variant': FLAGS.variant, 'num_layers': FLAGS.num_layers, 'num_classes': 1000,
                'dtype': FLAGS.dtype, 'attention_implementation': impl,
                'fused_qkv': 'fused' in levers,
                'tokenlearner': {'num_tokens': FLAGS.num_tokens if name == 'tl' else 0,
                                 'loc': FLAGS.loc}},
      'dataset': {'name': 'imagenet2012', 'image_size': FLAGS.image_size}})


def _devices():
  return jax.devices()[:FLAGS.num_devices or None]


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def jax_contender(name, mode, levers):
  """(call() -> None that runs one batch synchronously, XLA FLOPs of one call)."""
  run = setup.build(experiment_of(name, levers), devices=_devices())
  state = run.init_state()
  images = jax.device_put(
      jax.random.normal(jax.random.key(1), (FLAGS.batch, *run.input_shape), jnp.float32),
      run.batch_sharding)
  if mode == 'forward':
    params = state.params
    del state  # The optimizer state is not needed.
    fwd = jax.jit(lambda p, x: run.model.apply({'params': p}, x, train=False)[0])
    compiled = fwd.lower(params, images).compile()
    return lambda: jax.block_until_ready(compiled(params, images)), _flops(compiled)
  labels = jax.device_put(jnp.arange(FLAGS.batch, dtype=jnp.int32) % 1000, run.batch_sharding)
  batch = {'inputs': images, 'labels': labels}
  compiled = run.train_step.lower(state, batch, run.dropout_rng).compile()
  box = [state]

  def call():
    box[0], metrics = compiled(box[0], batch, run.dropout_rng)
    jax.block_until_ready(metrics)
  return call, _flops(compiled)


def torch_contenders(name, mode, kinds):
  """{kind: call} for kinds in ('torch', 'compile'): the PyTorch model eager / compiled."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_vit  # pylint: disable=g-import-not-at-top
  cfg = experiment_of(name).model
  torch.manual_seed(0)
  model = torch_vit.ViT(image_size=FLAGS.image_size, patch=cfg.patch_size, dim=cfg.hidden_size,
                        depth=cfg.num_layers, heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                        num_tokens=cfg.tokenlearner.num_tokens, loc=FLAGS.loc)
  images = torch.randn(FLAGS.batch, 3, FLAGS.image_size, FLAGS.image_size)
  labels = torch.arange(FLAGS.batch) % 1000
  calls = {}
  for kind in kinds:
    net = torch.compile(model) if kind == 'compile' else model
    if mode == 'forward':
      def call(net=net):
        model.eval()
        with torch.inference_mode():
          net(images)
    else:
      opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

      def call(net=net, opt=opt):
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        opt.step()
    calls[kind] = call
  return calls


def matmul_call():
  n = FLAGS.matmul_size
  dtype = jnp.dtype(FLAGS.dtype)
  a = jax.random.normal(jax.random.key(2), (n, n), dtype)
  b = jax.random.normal(jax.random.key(3), (n, n), dtype)
  mm = jax.jit(jnp.matmul).lower(a, b).compile()
  return lambda: jax.block_until_ready(mm(a, b)), 2.0 * n ** 3


def timed(call):
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def run_group(name, mode, frameworks, torch_ok):
  """Times the contenders of one (model, mode) interleaved; returns {contender: (s, flops)}."""
  contenders, flops = {}, {}
  if 'jax' in frameworks:
    for v in FLAGS.jax_variants:
      start = time.perf_counter()
      levers = () if v == 'base' else tuple(v.split('+'))
      contenders[f'jax:{v}'], flops[f'jax:{v}'] = jax_contender(name, mode, levers)
      print(f'  [{name} {mode}] jax:{v} compiled in {time.perf_counter() - start:.0f}s',
            flush=True)
  kinds = [k for k in ('torch', 'compile') if k in frameworks and torch_ok]
  if kinds:
    contenders.update(torch_contenders(name, mode, kinds))
  contenders['matmul'], flops['matmul'] = matmul_call()
  for key, call in contenders.items():  # Warm-up (and torch.compile's compilation).
    print(f'  [{name} {mode}] warm-up {key}: {timed(call):.1f}s', flush=True)
  times = {key: [] for key in contenders}
  for _ in range(FLAGS.steps):
    for key, call in contenders.items():
      times[key].append(timed(call))
  return {k: (statistics.median(t), flops.get(k)) for k, t in times.items()}


def main(argv):
  del argv
  frameworks = set(FLAGS.only)
  torch_ok = False
  if frameworks & {'torch', 'compile'}:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(FLAGS.threads)
      torch_ok = True
    except ImportError:
      print('torch is not installed: PyTorch columns skipped '
            '(pip install -r benchmarks/requirements.txt)')
  print(f'{jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.threads} threads, '
        f'{FLAGS.variant} at {FLAGS.image_size}, batch {FLAGS.batch}, {FLAGS.dtype}, '
        f'{FLAGS.steps} rounds, sharding={FLAGS.sharding} mesh_shape={",".join(FLAGS.mesh_shape)} '
        f'over {len(_devices())} device(s); XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', flush=True)
  results = {}
  for mode in FLAGS.modes:
    for name in FLAGS.models:
      results[name, mode] = run_group(name, mode, frameworks, torch_ok)

  rows = ['| model | mode | contender | img/s | vs best torch | XLA GFLOP/img | '
          'fraction of matmul peak |', '|---|---|---|---|---|---|---|']
  for (name, mode), res in results.items():
    mm_s, mm_flops = res['matmul']
    peak = mm_flops / mm_s
    torch_best = max([FLAGS.batch / res[k][0] for k in ('torch', 'compile') if k in res],
                     default=None)
    jax_flops = next((f for k, (_, f) in res.items() if k.startswith('jax')), None)
    label = {'vit': f'ViT-{FLAGS.variant}', 'tl': f'TL-{FLAGS.variant} {FLAGS.num_tokens}@{FLAGS.loc}'}
    for key, (sec, flops) in res.items():
      if key == 'matmul':
        continue
      flops = flops or jax_flops
      ips = FLAGS.batch / sec
      vs = f'{ips / torch_best:.2f}x' if torch_best else '-'
      frac = f'{flops / sec / peak:.2f}' if flops else '-'
      gf = f'{flops / FLAGS.batch / 1e9:.1f}' if flops else '-'
      extra = f' (MFU {flops / sec / 1e12 / FLAGS.peak_tflops:.3f})' if (
          FLAGS.peak_tflops and flops) else ''
      rows.append(f'| {label[name]} | {mode} | {key} | {ips:.2f} | {vs} | {gf} | {frac}{extra} |')
    rows.append(f'| | {mode} | matmul {FLAGS.matmul_size}^3 | {peak / 1e9:.0f} GFLOP/s | | | 1 |')
  print('\n'.join(rows))
  for mode in FLAGS.modes:
    if ('vit', mode) not in results or ('tl', mode) not in results:
      continue
    vit, tl = results['vit', mode], results['tl', mode]
    for key in vit:
      if key == 'matmul' or key not in tl:
        continue
      ref = next(k for k in vit if k.startswith('jax')) if not vit[key][1] else key
      fr = vit[ref][1] / tl[ref][1] if vit[ref][1] and tl[ref][1] else float('nan')
      print(f'TL/ViT {mode} {key}: speed-up {vit[key][0] / tl[key][0]:.2f}x, FLOPs ratio '
            f'{fr:.2f}x ({vit[key][0] / tl[key][0] / fr:.2f} of it)')


if __name__ == '__main__':
  app.run(main)
