"""Eq. 1's pooling as one einsum vs. the literal Hadamard product then sum (§2.1).

The literal form builds a [B, S, HW, C] tensor; the einsum never does. Prints, from one run on the
same machine, XLA's temporary memory and the median time of each, and their ratios.

    python -m benchmarks.pooling [--batch=32 --tokens=8 --size=24 --channels=768]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def einsum_pool(maps, x):
  return jnp.einsum('bsn,bnc->bsc', maps, x)


def literal_pool(maps, x):
  return jnp.sum(maps[..., None] * x[:, None], axis=2)  # [B, S, HW, C] materialised


def measure(fn, maps, x, repeats=20):
  compiled = jax.jit(fn).lower(maps, x).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  compiled(maps, x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(maps, x).block_until_ready()
    times.append(time.perf_counter() - start)
  return temp, float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--tokens', type=int, default=8)
  parser.add_argument('--size', type=int, default=24)  # B/16 at 384: a 24x24 grid
  parser.add_argument('--channels', type=int, default=768)
  args = parser.parse_args()
  n = args.size * args.size
  maps = jax.random.uniform(jax.random.key(0), (args.batch, args.tokens, n))
  x = jax.random.normal(jax.random.key(1), (args.batch, n, args.channels))
  np.testing.assert_allclose(einsum_pool(maps, x), literal_pool(maps, x), rtol=1e-4, atol=1e-3)
  mem_e, t_e = measure(einsum_pool, maps, x)
  mem_l, t_l = measure(literal_pool, maps, x)
  print(f'device={jax.devices()[0].platform} B={args.batch} S={args.tokens} HW={n} C={args.channels}')
  print(f'einsum : temp {mem_e / 2**20:8.2f} MiB  {t_e * 1e3:8.3f} ms')
  print(f'literal: temp {mem_l / 2**20:8.2f} MiB  {t_l * 1e3:8.3f} ms')
  memory = f'{mem_l / mem_e:.1f}x' if mem_e else f'{mem_l} vs {mem_e} bytes'
  print(f'ratio literal/einsum: memory {memory}  time {t_l / t_e:.2f}x')


if __name__ == '__main__':
  main()
