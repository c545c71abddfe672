r"""electra_jax against the PyTorch/HF peer, side by side in one run, alternating.

    python benchmarks/bench_vs_peer.py --size small --batch 32 --seq-len 128 \
        --ours float32/einsum mixed/einsum --peer float32 bfloat16 --rounds 7

Runners: each electra_jax variant `dtype/attention[/remat][/recompute][/full][/before][/sysmalloc]`
(`before`: the step without the optimisations of benchmarks/ab_step.py; `recompute`:
model.recompute_activations=True, fine-tuning's default) and
each peer precision `float32 | bfloat16[/sysmalloc]` (bfloat16 = torch.autocast).
Every runner lives in its own worker process (this script with `--worker`),
so the two frameworks' thread pools and allocators never share a process:
measured, a peer that shares its process with a compiled JAX step runs 5-8%
slower than alone. Workers start with electra_jax.hostmem's allocator
settings (the ones `python -m electra_jax.main` uses) unless the runner says
`sysmalloc`; the peer gets the same settings, so neither side has an
allocator the other lacks, and a `/sysmalloc` runner shows what they are worth.

Each worker builds and compiles its step on the same synthetic batch
(benchmarks/bench_step.synthetic_batch, seed 0) and warms up. Then `--rounds`
rounds each tell every worker in turn (order rotated per round) to run one
step; only one worker runs at any time. Reported: median step time, seq/s,
MFU (useful FLOPs from electra_jax.pretrain.flops over the matmul peak measured in
this process before and after the rounds), minor page faults and system time
per step, and for every (ours, peer) pair the ratio of median throughputs and
the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step  # noqa: E402  (puts the repo on sys.path)

from electra_jax import hostmem  # noqa: E402

PEER_PRECISIONS = ('float32', 'bfloat16')


def parse_ours(spec: str) -> dict:
  """'bfloat16/xla/remat/full' -> make_config keyword arguments (`before`, `sysmalloc` apart;
  `recompute`: model.recompute_activations=True)."""
  parts = spec.split('/')
  if len(parts) < 2 or parts[0] not in bench_step.PRECISIONS:
    raise ValueError(f'--ours {spec!r}; expected dtype/attention[/remat][/recompute][/full][/before]'
                     f'[/sysmalloc] with dtype in {bench_step.PRECISIONS}, e.g. float32/einsum')
  extra = set(parts[2:])
  unknown = extra - {'remat', 'recompute', 'full', 'before', 'sysmalloc'}
  if unknown:
    raise ValueError(f'--ours {spec!r}: unknown flags {sorted(unknown)}; '
                     'expected remat, recompute, full, before, sysmalloc')
  return dict(dtype=parts[0], attention_impl=parts[1], remat='remat' in extra,
              recompute_activations='recompute' in extra,
              generator_head='full' if 'full' in extra else 'masked')


def parse_peer(spec: str) -> str:
  """'bfloat16/sysmalloc' -> 'bfloat16'."""
  prec, *extra = spec.split('/')
  if prec not in PEER_PRECISIONS or set(extra) - {'sysmalloc'}:
    raise ValueError(f'--peer {spec!r}; expected float32 or bfloat16, optionally /sysmalloc')
  return prec


def worker_env(spec: str) -> dict:
  """The environment a runner's worker starts with (allocator settings, see the docstring)."""
  env = dict(os.environ)
  if 'sysmalloc' in spec.split('/'):
    env.pop('GLIBC_TUNABLES', None)
    env[hostmem.OPT_OUT] = 'system'
  elif hostmem.applies(env):
    env = hostmem.tuned_environ(env)
  return env


# ---------------------------------------------------------------------------------------------
# Worker side: one runner per process, driven over stdin/stdout one JSON line at a time.

def _build(job: dict):
  """-> (step(batch) -> loss, batch, compile seconds)."""
  batch_cfg = bench_step.make_config(job['size'], job['batch'], job['seq_len'])
  batch = bench_step.synthetic_batch(batch_cfg, seed=0)
  if job['kind'] == 'peer':
    import torch_peer  # pylint: disable=g-import-not-at-top
    peer = torch_peer.TorchPeer(batch_cfg, autocast=parse_peer(job['spec']),
                                device=job['peer_device'])
    return peer.step, batch, 0.0
  import ab_step  # pylint: disable=g-import-not-at-top
  kw = parse_ours(job['spec'])
  cfg = bench_step.make_config(job['size'], job['batch'], job['seq_len'], **kw)
  if 'before' in job['spec'].split('/')[2:]:  # the step before benchmarks/ab_step.py's changes
    with ab_step.switched_off(ab_step.OPTIMISATIONS):
      r = bench_step.JaxStep(cfg, fast_rng=False)
  else:
    r = bench_step.JaxStep(cfg)
  return r.step, batch, r.compile_s


def worker(job: dict) -> None:
  out = sys.stdout
  sys.stdout = sys.stderr  # library prints must not reach the protocol stream
  step, batch, compile_s = _build(job)
  reply = lambda d: (out.write(json.dumps(d) + '\n'), out.flush())  # noqa: E731
  reply(dict(ready=True, compile_s=compile_s, tuned_malloc=hostmem.active()))
  for line in sys.stdin:
    if line.strip() != 'step':
      break
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    loss = step(batch)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    reply(dict(t=t1 - t0, loss=loss, minflt=r1.ru_minflt - r0.ru_minflt,
               stime=r1.ru_stime - r0.ru_stime))


class Worker:
  """The parent's handle on one runner's process."""

  def __init__(self, name: str, job: dict):
    self.name = name
    self.proc = subprocess.Popen(
        [sys.executable, __file__, '--worker', json.dumps(job)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=worker_env(job['spec']))

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f'{self.name}: worker exited with {self.proc.wait()}')
    return json.loads(line)

  def ready(self) -> dict:
    return self._read()

  def step(self) -> dict:
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Parent side.

def main():
  p = argparse.ArgumentParser(description='electra_jax vs the HF/PyTorch peer, alternating.')
  p.add_argument('--size', default='small')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--ours', nargs='*', default=['float32/einsum'])
  p.add_argument('--peer', nargs='*', default=['float32'])
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--peak-seconds', type=float, default=1.5)
  p.add_argument('--peak-sizes', type=int, nargs='+', default=[1024, 2048],
                 help='matmul sizes for the peak (GPU: 4096 8192)')
  p.add_argument('--peer-device', default='cpu', help='torch device of the peer: cpu | cuda')
  p.add_argument('--json', help='write all results to this path')
  p.add_argument('--worker', help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    return worker(json.loads(a.worker))

  import jax  # pylint: disable=g-import-not-at-top
  import matmul_peak  # pylint: disable=g-import-not-at-top
  shape = dict(size=a.size, batch=a.batch, seq_len=a.seq_len, peer_device=a.peer_device)
  jobs, config_kw, flops_dtype = {}, {}, {}  # per runner name; each spec parsed once, here
  for spec in a.ours:
    n, kw = f'jax {spec}', parse_ours(spec)
    jobs[n], config_kw[n] = dict(kind='jax', spec=spec, **shape), kw
    flops_dtype[n] = bench_step.peak_dtype(kw['dtype'])
  for spec in a.peer:
    n = f'peer {spec}'
    jobs[n], config_kw[n], flops_dtype[n] = dict(kind='peer', spec=spec, **shape), {}, parse_peer(spec)
  dtypes = sorted(set(flops_dtype.values()))
  peak = lambda d: matmul_peak.measure_peak(d, a.peak_sizes, a.peak_seconds)['peak_gflops']  # noqa: E731
  load_before = os.getloadavg()[0]
  peaks_before = {d: peak(d) for d in dtypes}

  workers, info = {}, {}
  for n, job in jobs.items():  # one at a time: compiles do not overlap
    workers[n] = Worker(n, job)
    info[n] = workers[n].ready()
    for _ in range(a.warmup):
      workers[n].step()
    print(f"built {n}: compile {info[n]['compile_s']:.1f} s, tuned malloc "
          f"{info[n]['tuned_malloc']}", flush=True)

  steps = {n: [] for n in workers}
  names = list(workers)
  for rnd in range(a.rounds):
    for n in names[rnd % len(names):] + names[:rnd % len(names)]:
      r = workers[n].step()
      if r['loss'] != r['loss']:
        raise SystemExit(f'{n}: NaN loss at round {rnd}')
      steps[n].append(r)
    print(f'round {rnd}: ' + ', '.join(f"{n} {steps[n][-1]['t']:.2f}s" for n in names), flush=True)
  for w in workers.values():
    w.close()
  load_after = os.getloadavg()[0]
  peaks_after = {d: peak(d) for d in dtypes}
  peaks = {d: max(peaks_before[d], peaks_after[d]) for d in dtypes}

  flops = bench_step.useful_flops(bench_step.make_config(a.size, a.batch, a.seq_len))
  print(f'\n{a.size} {a.batch}x{a.seq_len}, {flops / 1e9:.1f} GFLOP/step, matmul peak '
        + ', '.join(f'{d} {peaks[d]:.0f} GFLOP/s (before {peaks_before[d]:.0f}, after '
                    f'{peaks_after[d]:.0f})' for d in dtypes)
        + f'; one process per runner; load average {load_before:.1f} before, '
        f'{load_after:.1f} after the rounds')
  print('| runner | median step s | seq/s | tok/s | GFLOP/s | MFU | page faults/step '
        '| sys s/step | compile s |\n|---|---|---|---|---|---|---|---|---|')
  results, times = {}, {n: [s['t'] for s in steps[n]] for n in names}
  for n in names:
    f = bench_step.useful_flops(bench_step.make_config(a.size, a.batch, a.seq_len, **config_kw[n]))
    med = statistics.median(times[n])
    results[n] = dict(step_s=med, all=times[n], seq_per_s=a.batch / med,
                      tok_per_s=a.batch * a.seq_len / med, gflops=f / med / 1e9,
                      mfu=f / med / 1e9 / peaks[flops_dtype[n]], peak=peaks[flops_dtype[n]],
                      minflt=statistics.median(s['minflt'] for s in steps[n]),
                      sys_s=statistics.median(s['stime'] for s in steps[n]), **info[n])
    r = results[n]
    print(f"| {n} | {med:.3f} | {r['seq_per_s']:.2f} | {r['tok_per_s']:.0f} | {r['gflops']:.1f} "
          f"| {100 * r['mfu']:.1f}% | {r['minflt']:.0f} | {r['sys_s']:.3f} "
          f"| {r['compile_s']:.1f} |")
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
