r"""electra_jax against the PyTorch/HF peer, side by side in one process.

    python benchmarks/bench_vs_peer.py --size small --batch 32 --seq-len 128 \
        --ours float32/einsum bfloat16/xla --peer float32 bfloat16 --rounds 6

Every runner (each electra_jax variant `dtype/attention[/remat][/full][/before]`,
`before` being the step without the optimisations of benchmarks/ab_step.py, each
peer precision `float32` | `bfloat16` autocast) is built, compiled and warmed
up on the same synthetic batch (benchmarks/bench_step.synthetic_batch). Then
`--rounds` rounds each run one step of every runner, in an order rotated per
round, so load from other processes on this shared machine falls on all of
them alike. Reported: median step time, seq/s, MFU (useful FLOPs from
electra_jax.counting over the matmul peak measured in this process before and
after the rounds), and for every (ours, peer) pair the ratio of median
throughputs and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ab_step  # noqa: E402
import bench_step  # noqa: E402  (puts the repo on sys.path, imports jax)
import jax  # noqa: E402
import matmul_peak  # noqa: E402
import torch  # noqa: E402
import torch_peer  # noqa: E402


def parse_ours(spec: str) -> dict:
  """'bfloat16/xla/remat/full' -> make_config keyword arguments (`before` is handled apart)."""
  parts = spec.split('/')
  if len(parts) < 2 or parts[0] not in bench_step.PRECISIONS:
    raise ValueError(f'--ours {spec!r}; expected dtype/attention[/remat][/full][/before] with '
                     f'dtype in {bench_step.PRECISIONS}, e.g. float32/einsum or mixed/einsum')
  extra = set(parts[2:])
  unknown = extra - {'remat', 'full', 'before'}
  if unknown:
    raise ValueError(f'--ours {spec!r}: unknown flags {sorted(unknown)}; '
                     'expected remat, full, before')
  return dict(dtype=parts[0], attention_impl=parts[1], remat='remat' in extra,
              generator_head='full' if 'full' in extra else 'masked')


def main():
  p = argparse.ArgumentParser(description='electra_jax vs the HF/PyTorch peer, alternating.')
  p.add_argument('--size', default='small')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--ours', nargs='+', default=['float32/einsum'])
  p.add_argument('--peer', nargs='+', default=['float32'], choices=['float32', 'bfloat16'])
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--peak-seconds', type=float, default=1.5)
  p.add_argument('--peak-sizes', type=int, nargs='+', default=[1024, 2048],
                 help='matmul sizes for the peak (GPU: 4096 8192)')
  p.add_argument('--peer-device', default='cpu', help='torch device of the peer: cpu | cuda')
  p.add_argument('--json', help='write all results to this path')
  a = p.parse_args()

  batch_cfg = bench_step.make_config(a.size, a.batch, a.seq_len)
  batch = bench_step.synthetic_batch(batch_cfg, seed=0)
  dtypes = sorted({bench_step.peak_dtype(parse_ours(s)['dtype']) for s in a.ours} | set(a.peer))
  peak = lambda d: matmul_peak.measure_peak(d, a.peak_sizes, a.peak_seconds)['peak_gflops']  # noqa: E731
  load_before = os.getloadavg()[0]
  peaks_before = {d: peak(d)
                  for d in dtypes}

  runners = {}  # name -> (step fn, config, flops dtype, compile seconds)
  for spec in a.ours:
    kw = parse_ours(spec)
    cfg = bench_step.make_config(a.size, a.batch, a.seq_len, **kw)
    if 'before' in spec.split('/')[2:]:  # the step as it was before benchmarks/ab_step.py's changes
      with ab_step.switched_off(ab_step.OPTIMISATIONS):
        r = bench_step.JaxStep(cfg, fast_rng=False)
    else:
      r = bench_step.JaxStep(cfg)
    runners[f'jax {spec}'] = (r.step, cfg, bench_step.peak_dtype(kw['dtype']), r.compile_s)
    print(f'built jax {spec}: compile {r.compile_s:.1f} s', flush=True)
  for prec in a.peer:
    peer = torch_peer.TorchPeer(batch_cfg, autocast=prec, device=a.peer_device)
    runners[f'peer {prec}'] = (peer.step, batch_cfg, prec, 0.0)
  for name, (fn, *_rest) in runners.items():
    for _ in range(a.warmup):
      fn(batch)
    print(f'warmed up {name}', flush=True)

  times = {n: [] for n in runners}
  names = list(runners)
  for rnd in range(a.rounds):
    order = names[rnd % len(names):] + names[:rnd % len(names)]
    for n in order:
      t = time.perf_counter()
      loss = runners[n][0](batch)
      times[n].append(time.perf_counter() - t)
      if loss != loss:
        raise SystemExit(f'{n}: NaN loss at round {rnd}')
    print(f'round {rnd}: ' + ', '.join(f'{n} {times[n][-1]:.2f}s' for n in names), flush=True)
  load_after = os.getloadavg()[0]
  peaks_after = {d: peak(d)
                 for d in dtypes}
  peaks = {d: max(peaks_before[d], peaks_after[d]) for d in dtypes}

  flops = bench_step.useful_flops(batch_cfg)
  print(f'\n{a.size} {a.batch}x{a.seq_len}, {flops / 1e9:.1f} GFLOP/step, matmul peak '
        + ', '.join(f'{d} {peaks[d]:.0f} GFLOP/s (before {peaks_before[d]:.0f}, after '
                    f'{peaks_after[d]:.0f})' for d in dtypes)
        + f'; torch threads {torch.get_num_threads()}; load average {load_before:.1f} before, '
        f'{load_after:.1f} after the rounds')
  print('| runner | median step s | seq/s | tok/s | GFLOP/s | MFU | compile s |\n|---|---|---|---|---|---|---|')
  results = {}
  for n in names:
    _, cfg, dt, comp = runners[n]
    med = statistics.median(times[n])
    f = bench_step.useful_flops(cfg)
    results[n] = dict(step_s=med, all=times[n], seq_per_s=a.batch / med,
                      tok_per_s=a.batch * a.seq_len / med, gflops=f / med / 1e9,
                      mfu=f / med / 1e9 / peaks[dt], peak=peaks[dt], compile_s=comp)
    r = results[n]
    print(f"| {n} | {med:.3f} | {r['seq_per_s']:.2f} | {r['tok_per_s']:.0f} | {r['gflops']:.1f} "
          f"| {100 * r['mfu']:.1f}% | {comp:.1f} |")
  print('\n| ours / peer | ratio of medians (x faster) | median per-round ratio |\n|---|---|---|')
  ratios = {}
  for o in (n for n in names if n.startswith('jax')):
    for q in (n for n in names if n.startswith('peer')):
      rm = statistics.median(times[q]) / statistics.median(times[o])
      pr = statistics.median(tq / to for tq, to in zip(times[q], times[o]))
      ratios[f'{o} / {q}'] = dict(ratio_of_medians=rm, median_round_ratio=pr)
      print(f'| {o} / {q} | {rm:.2f} | {pr:.2f} |')
  if a.json:
    with open(a.json, 'w') as fh:
      json.dump(dict(size=a.size, batch=a.batch, seq_len=a.seq_len, peaks=peaks,
                     load_average=[load_before, load_after], device=str(jax.devices()[0]),
                     peaks_before=peaks_before, peaks_after=peaks_after, results=results,
                     ratios=ratios, date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())),
                fh, indent=1)


if __name__ == '__main__':
  main()
