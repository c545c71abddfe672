r"""Measured matmul peak of this machine with JAX: the denominator of MFU.

    python benchmarks/matmul_peak.py                 # float32 and bfloat16, n = 1024..2048
    python benchmarks/matmul_peak.py --dtype float32 --sizes 2048 --seconds 3

Times a jitted chain of square matmuls (`x @ w` applied `reps` times inside
one jit, so dispatch overhead is negligible) and reports the best and the
median GFLOP/s over repeated runs, counting 2 n^3 FLOPs per matmul. The peak
is the best over sizes of the median, which is what a well-shaped matmul
reaches here *now*, load from other users included; `bench_step.py` and
`bench_vs_peer.py` call `measure_peak` in the same process as the step they
time, so MFU compares numbers taken under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _chain(reps: int):
  @jax.jit
  def f(x, w):
    # A data dependency between the matmuls so XLA cannot drop or merge them;
    # the tanh keeps values bounded and costs O(n^2) against O(n^3).
    for _ in range(reps):
      # float32 accumulation and output: XLA:CPU uses its bf16 dot-product
      # kernels (AVX512-BF16) only for bf16 x bf16 -> f32 dots, twice the rate
      # of a bf16-output dot; this is also what mixed precision runs.
      x = jnp.tanh(jnp.dot(x, w, preferred_element_type=jnp.float32)).astype(x.dtype)
    return x
  return f


def time_matmul(n: int, dtype: str, seconds: float = 2.0, reps: int = 4) -> dict:
  """GFLOP/s of an n x n @ n x n matmul in `dtype` (float32 accumulation in XLA)."""
  if dtype not in DTYPES:
    raise ValueError(f'dtype {dtype!r}; expected one of {sorted(DTYPES)}')
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (n, n), DTYPES[dtype])
  w = (jax.random.normal(k2, (n, n), jnp.float32) / n ** 0.5).astype(DTYPES[dtype])
  f = _chain(reps)
  f(x, w).block_until_ready()  # compile + warm-up
  flops = 2.0 * n ** 3 * reps
  rates = []
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(rates) < 3:
    t = time.perf_counter()
    f(x, w).block_until_ready()
    rates.append(flops / (time.perf_counter() - t) / 1e9)
  return {'n': n, 'dtype': dtype, 'median_gflops': statistics.median(rates),
          'best_gflops': max(rates), 'runs': len(rates)}


def measure_peak(dtype: str, sizes=(1024, 2048), seconds: float = 2.0) -> dict:
  """Best-over-sizes median GFLOP/s; the dict also lists each size's result."""
  results = [time_matmul(n, dtype, seconds) for n in sizes]
  best = max(results, key=lambda r: r['median_gflops'])
  return {'dtype': dtype, 'peak_gflops': best['median_gflops'], 'at_n': best['n'],
          'by_size': results}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dtype', choices=sorted(DTYPES) + ['all'], default='all')
  p.add_argument('--sizes', type=int, nargs='+', default=[1024, 2048])
  p.add_argument('--seconds', type=float, default=2.0, help='timing window per size')
  p.add_argument('--json', help='also write the results to this file')
  a = p.parse_args()
  dtypes = sorted(DTYPES) if a.dtype == 'all' else [a.dtype]
  out = {'backend': jax.default_backend(), 'device': str(jax.devices()[0]),
         'peaks': [measure_peak(d, a.sizes, a.seconds) for d in dtypes]}
  for pk in out['peaks']:
    for r in pk['by_size']:
      print(f"{pk['dtype']:>8} n={r['n']:5d}: median {r['median_gflops']:8.1f} GFLOP/s, "
            f"best {r['best_gflops']:8.1f} ({r['runs']} runs)")
    print(f"{pk['dtype']:>8} peak (median at best n={pk['at_n']}): {pk['peak_gflops']:.1f} GFLOP/s")
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
