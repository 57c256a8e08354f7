"""Forward time of the NNX modules (`token_learner.nnx`, under `nnx.jit`) vs the linen modules
(under `jax.jit`), the same parameters, measured interleaved in one run.

NNX's `nnx.jit` splits and merges the module graph on every call (Python work outside the
compiled program); this measures that cost against the compiled forward. Prints per case the
median (and fastest) time of each and the ratio NNX / linen (>1: NNX slower) for three ways of
jitting an NNX call: `nnx.jit` (graph mode, the default: the graph protocol runs in Python on
every call), `nnx.jit(..., graph=False)` (tree mode: the module as a plain pytree) and
`nnx.cached_partial(nnx.jit(f), model)` (the graph traversal cached), and `jax.jit` of a function
of the split state that merges the module inside (no NNX work per call: the compiled programs
alone), and the load average.

    python -m benchmarks.nnx_vs_linen [--batch=32 --size=14 --channels=768 --repeats=30]
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from token_learner import ModelConfig, build_model, modules
from token_learner import nnx as tnnx


def cases(batch, size, channels, vit_variant, vit_image):
  x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
  tokens = jax.random.normal(jax.random.key(1), (batch, 8, channels))
  out = [
      ('TokenLearner (v1)', modules.TokenLearner(8), tnnx.TokenLearner(channels, 8,
                                                                        rngs=nnx.Rngs(0)), (x,)),
      ('TokenLearnerV11', modules.TokenLearnerV11(8), tnnx.TokenLearnerV11(channels, 8,
                                                                           rngs=nnx.Rngs(0)),
       (x,)),
      ('TokenFuser', modules.TokenFuser(), tnnx.TokenFuser(channels, 8, rngs=nnx.Rngs(0)),
       (tokens, x)),
  ]
  cfg = ModelConfig.from_dict({'variant': vit_variant, 'num_classes': 10,
                               'tokenlearner': {'num_tokens': 8, 'loc': 6}},
                              image_size=(vit_image, vit_image))
  images = jax.random.normal(jax.random.key(2), (batch // 4 or 1, vit_image, vit_image, 3))
  out.append((f'ViT-{vit_variant} + TL at {vit_image}px, batch {images.shape[0]}',
              build_model(cfg), tnnx.ViT(cfg, rngs=nnx.Rngs(0)), (images,)))
  return out


def measure(linen, model, args, repeats):
  """Median seconds per forward: linen under jax.jit, then NNX under each nnx.jit variant."""
  is_vit = isinstance(model, tnnx.ViT)
  kw = {'train': False} if is_vit else {}
  params = tnnx.to_linen_params(model)  # The same parameters for both.
  linen_fn = jax.jit(lambda p, *a: linen.apply({'params': p}, *a, **kw))
  fwd = lambda m, *a: m(*a, **kw)
  graph_fn, tree_fn = nnx.jit(fwd), nnx.jit(fwd, graph=False)
  cached_fn = nnx.cached_partial(nnx.jit(fwd), model)
  graphdef, state = nnx.split(model)
  pure_fn = jax.jit(lambda s, *a: fwd(nnx.merge(graphdef, s), *a))
  runs = {
      'linen': lambda: jax.block_until_ready(linen_fn(params, *args)),
      'nnx.jit': lambda: jax.block_until_ready(graph_fn(model, *args)),
      'nnx.jit(graph=False)': lambda: jax.block_until_ready(tree_fn(model, *args)),
      'nnx.cached_partial': lambda: jax.block_until_ready(cached_fn(*args)),
      'jax.jit(merge)': lambda: jax.block_until_ready(pure_fn(state, *args)),
  }
  for _ in range(3):  # Compile and warm up.
    for fn in runs.values():
      fn()
  times = {k: [] for k in runs}
  for _ in range(repeats):  # Interleaved: all see the same machine load.
    for k, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  return ({k: float(np.median(v)) for k, v in times.items()},
          {k: float(np.min(v)) for k, v in times.items()})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--size', type=int, default=14)  # B/16 at 224: a 14x14 grid
  parser.add_argument('--channels', type=int, default=768)
  parser.add_argument('--vit_variant', default='Ti/16')
  parser.add_argument('--vit_image', type=int, default=112)
  parser.add_argument('--repeats', type=int, default=30)
  args = parser.parse_args()
  print(f'backend {jax.default_backend()}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.1f}; modules on [{args.batch}, {args.size}, {args.size}, '
        f'{args.channels}]')
  variants = ('nnx.jit', 'nnx.jit(graph=False)', 'nnx.cached_partial', 'jax.jit(merge)')
  print(f'{"case":40s} {"linen ms":>9s} ' + ' '.join(f'{v:>21s}' for v in variants))
  for name, linen, model, inputs in cases(args.batch, args.size, args.channels,
                                          args.vit_variant, args.vit_image):
    med, low = measure(linen, model, inputs, args.repeats)
    cells = ' '.join(f'{1e3 * med[v]:8.2f} ms ({med[v] / med["linen"]:5.3f}x)' for v in variants)
    print(f'{name:40s} {1e3 * med["linen"]:9.2f} {cells}')
    cells = ' '.join(f'{1e3 * low[v]:8.2f} ms ({low[v] / low["linen"]:5.3f}x)' for v in variants)
    print(f'{"  (fastest run)":40s} {1e3 * low["linen"]:9.2f} {cells}')
  print(f'load average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
