r"""Images/s of ViT and TokenLearner (forward, train step) vs PyTorch eager and torch.compile.

  python benchmarks/speed.py                                   # ViT-B/16, TL-B/16 8 at 6, CPU
  python benchmarks/speed.py --only=jax --steps=3 --models=vit --modes=forward
  python benchmarks/speed.py --only=jax --jax_variants=base,fused,xla,fused+xla   # the levers
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/speed.py --only=jax

JAX runs the project's model (`build_model`) and its real train step (`trainer.train_step`, AdamW
from `optim.create_optimizer`, donated state). PyTorch runs `benchmarks/torch_vit.py`, the same
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
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.model_config import ModelConfig, TokenLearnerConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from token_learner.train.config import TrainConfig  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('only', ['jax', 'torch', 'compile'], 'Frameworks: jax, torch (eager), compile.')
flags.DEFINE_list('models', ['vit', 'tl'], 'vit and/or tl (TokenLearner before --loc).')
flags.DEFINE_list('modes', ['forward', 'train'], 'forward and/or train (fwd+bwd+AdamW).')
flags.DEFINE_list('jax_variants', ['base'], "JAX contenders: '+'-joined levers of {base, fused "
                  "(fused QKV), xla, cudnn (attention_implementation)}, e.g. base,fused+xla.")
flags.DEFINE_integer('steps', 5, 'Timed rounds (after one warm-up call each).')
flags.DEFINE_integer('batch', 8, 'Batch size.')
flags.DEFINE_string('variant', 'B/16', 'ViT variant.')
flags.DEFINE_integer('image_size', 224, 'Image side.')
flags.DEFINE_integer('num_tokens', 8, 'TokenLearner tokens S.')
flags.DEFINE_integer('loc', 6, 'Layer the TokenLearner precedes.')
flags.DEFINE_integer('num_layers', None, 'Override the variant depth (quick runs).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'JAX compute dtype.')
flags.DEFINE_integer('threads', len(os.sched_getaffinity(0)), 'torch.set_num_threads.')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square matmul measuring the peak.')
flags.DEFINE_float('peak_tflops', 0.0, 'Nominal peak TFLOP/s of the device (0: only the '
                   'measured matmul rate); prints MFU against it too.')


def model_config(name, levers=()):
  tl = TokenLearnerConfig(num_tokens=FLAGS.num_tokens if name == 'tl' else 0, loc=FLAGS.loc)
  impl = 'cudnn' if 'cudnn' in levers else 'xla' if 'xla' in levers else None
  return ModelConfig(variant=FLAGS.variant, num_layers=FLAGS.num_layers, num_classes=1000,
                     dtype=FLAGS.dtype, tokenlearner=tl, attention_implementation=impl,
                     fused_qkv='fused' in levers, image_size=(FLAGS.image_size,) * 2)


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def jax_contender(name, mode, levers):
  """(call() -> None that runs one batch synchronously, XLA FLOPs of one call)."""
  cfg = model_config(name, levers)
  model = build_model(cfg)
  images = jax.random.normal(jax.random.key(1), (FLAGS.batch, *cfg.input_shape), jnp.float32)
  if mode == 'forward':
    params = jax.jit(lambda: model.init(jax.random.key(0), images[:1], train=False)['params'])()
    fwd = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False)[0])
    compiled = fwd.lower(params, images).compile()
    return lambda: jax.block_until_ready(compiled(params, images)), _flops(compiled)
  mesh = sharding.create_mesh(jax.devices()[:1])
  tcfg = TrainConfig(batch_size=FLAGS.batch, eval_batch_size=FLAGS.batch, num_train_steps=1000,
                     optimizer='adamw', learning_rate=1e-4, weight_decay=0.05,
                     warmup_steps=10, num_classes=1000)
  tx = optim.create_optimizer(tcfg, optim.learning_rate_fn(tcfg))
  init_rng, rng = sharding.replicated_keys(0, mesh)
  state, shardings = sharding.create_train_state(init_rng, model, tx, cfg.input_shape, mesh)
  batch = {'inputs': images, 'labels': jnp.arange(FLAGS.batch, dtype=jnp.int32) % 1000}
  compiled = trainer.compile_train_step(model, tx, tcfg, mesh, shardings).lower(
      state, batch, rng).compile()
  box = [state]

  def call():
    box[0], metrics = compiled(box[0], batch, rng)
    jax.block_until_ready(metrics)
  return call, _flops(compiled)


def torch_contenders(name, mode, kinds):
  """{kind: call} for kinds in ('torch', 'compile'): the PyTorch model eager / compiled."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_vit  # pylint: disable=g-import-not-at-top
  cfg = model_config(name)
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
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print(f'{jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.threads} threads, '
        f'{FLAGS.variant} at {FLAGS.image_size}, batch {FLAGS.batch}, {FLAGS.dtype}, '
        f'{FLAGS.steps} rounds; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', flush=True)
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
