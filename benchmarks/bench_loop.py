r"""The training loop on real data against synthetic data: does the input pipeline cost anything?

    python benchmarks/bench_loop.py                       # tiny, builtin corpus, 32 x 128
    python benchmarks/bench_loop.py --size small --batch 32 --seq-len 128 \
        --source '/path/to/enwiki/*' --vocab /path/to/bert-base-uncased-vocab.txt

Runs the hot path of `electra_jax.pretrain.loop.train_and_evaluate` (next host batch
from the loader -> `sharding.global_batch` -> the jitted, donated train step
-> fetch the previous step's metrics after dispatching the next, as the loop
does) in alternating blocks of `--block` steps: one block reading the real
`PretrainingLoader` (electra_jax.data.loader.make_pretraining_data, shards
built once into --cache-dir), the next a fixed synthetic batch of the same
shape, and so on, in one process. Reported: median step time of each source,
their ratio, and the loader's own time per batch (`next()` alone, timed
inside the real blocks). The step loop runs under
`jax.transfer_guard('disallow')`: any implicit host<->device transfer in the
loop raises instead of silently costing time (the batch goes through the
explicit `make_array_from_process_local_data`, metrics through `device_get`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step  # noqa: E402  (puts the repo on sys.path)
import jax  # noqa: E402

from electra_jax import hostmem  # noqa: E402
from electra_jax import sharding  # noqa: E402
from electra_jax.pretrain import loop  # noqa: E402


def run_block(runner: bench_step.JaxStep, next_batch, steps: int, loader_times: list) -> list:
  """`steps` loop iterations; returns per-iteration wall times (loader + transfer + dispatch +
  waiting for the previous step), which in steady state is the step time."""
  times, pending = [], None
  for _ in range(steps):
    t0 = time.perf_counter()
    host = next_batch()
    loader_times.append(time.perf_counter() - t0)
    with jax.transfer_guard('disallow'):
      batch = sharding.global_batch(host, runner.mesh)
      runner.state, metrics = runner.compiled(runner.state, batch, runner.rng)
    if pending is not None:
      float(jax.device_get(pending['loss']))  # the previous step's metrics, as the loop does
    pending = metrics
    times.append(time.perf_counter() - t0)
  float(jax.device_get(pending['loss']))  # drain; in steady state each iteration waited one step
  return times


def main():
  p = argparse.ArgumentParser(description='Training loop on real vs synthetic batches.')
  p.add_argument('--size', default='tiny')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--source', default='', help='data.source (default: the config\'s)')
  p.add_argument('--vocab', default='', help='data.vocab (default: the config\'s)')
  p.add_argument('--cache-dir', default=None, help='default: $ELECTRA_JAX_CACHE or ~/.cache/electra_jax')
  p.add_argument('--block', type=int, default=5, help='steps per block')
  p.add_argument('--blocks', type=int, default=4, help='blocks per source')
  a = p.parse_args()
  config = bench_step.make_config(a.size, a.batch, a.seq_len)
  if a.source:
    config.data.source = a.source
  if a.vocab:
    config.data.vocab = a.vocab
  t = time.perf_counter()
  data = loop.load_data(config, a.cache_dir)
  print(f'data ready in {time.perf_counter() - t:.1f} s: {data.train.num_examples} examples '
        f'in {data.data_dir}', flush=True)
  runner = bench_step.JaxStep(config)
  print(f'compiled in {runner.compile_s:.1f} s', flush=True)
  real_iter = iter(data.train)
  synthetic = bench_step.synthetic_batch(config)
  sources = {'real': lambda: next(real_iter), 'synthetic': lambda: synthetic}
  times = {k: [] for k in sources}
  loader = {k: [] for k in sources}
  for name, fn in sources.items():  # warm-up block each
    run_block(runner, fn, 2, [])
  for b in range(a.blocks):
    for name in (('real', 'synthetic') if b % 2 == 0 else ('synthetic', 'real')):
      times[name] += run_block(runner, sources[name], a.block, loader[name])
    print(f'block {b}: real {statistics.median(times["real"][-a.block:]):.3f} s/step, '
          f'synthetic {statistics.median(times["synthetic"][-a.block:]):.3f} s/step', flush=True)
  real, syn = statistics.median(times['real']), statistics.median(times['synthetic'])
  load_ms = 1e3 * statistics.median(loader['real'])
  print(f'\n{a.size} {a.batch}x{a.seq_len}: real {real:.3f} s/step ({a.batch / real:.2f} seq/s), '
        f'synthetic {syn:.3f} s/step ({a.batch / syn:.2f} seq/s), real/synthetic time '
        f'{real / syn:.3f}; loader next() {load_ms:.2f} ms/batch '
        f'({100 * load_ms / 1e3 / real:.2f}% of a step); no implicit transfers (transfer_guard)')


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  main()
