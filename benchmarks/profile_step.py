r"""Where the train step's time goes: per-HLO-op totals from a jax.profiler trace.

    python benchmarks/profile_step.py --size small --batch 32 --seq-len 128 --top 25
    python benchmarks/profile_step.py --size tiny --batch 8 --dtype bfloat16 --attention xla

Runs the compiled step (benchmarks/bench_step.JaxStep) a few times under
`jax.profiler.trace(..., create_perfetto_trace=True)` and sums the duration of
every XLA:CPU thunk (one per fusion / dot / copy) over the traced steps. Each
op is joined with the compiled HLO so the table shows its kind and the
source location (`op_name` metadata, e.g. `.../attention/self/einsum` or
`sample_tokens/argmax`) that produced it. Also writes the optimized HLO text
next to the trace (`--out`), for reading by hand.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step  # noqa: E402
import jax  # noqa: E402

from electra_jax import hostmem  # noqa: E402

# Trace events that are wrappers around the whole step, not XLA ops.
WRAPPERS = ('ThunkExecutor', '$', 'np.asarray', 'PjRt', 'Execute')


def hlo_index(hlo_text: str) -> dict:
  """op name -> (opcode, op_name metadata) for every instruction in the HLO module text."""
  index = {}
  pat = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(')
  for line in hlo_text.splitlines():
    m = pat.match(line)
    if not m:
      continue
    meta = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r'calls=%?([\w.\-]+)', line)
    index[m.group(1)] = (m.group(2), meta.group(1) if meta else '',
                         calls.group(1) if calls else '')
  return index


def fusion_source(name: str, index: dict, hlo_text: str) -> str:
  """A readable source hint for op `name`: its own op_name, or its fused computation's."""
  kind, meta, calls = index.get(name, ('?', '', ''))
  if not meta and calls:  # metadata of the fused computation's instructions
    body = re.search(r'%?' + re.escape(calls) + r'[ \(][^{]*\{(.*?)\n\}', hlo_text, re.S)
    if body:
      metas = re.findall(r'op_name="([^"]*)"', body.group(1))
      if metas:
        meta = collections.Counter(metas).most_common(1)[0][0]
  meta = re.sub(r'jit\(train_step\)/', '', meta)
  return f'{kind}: {meta[-110:]}'


def main():
  p = argparse.ArgumentParser(description='Per-op profile of the electra_jax train step.')
  bench_step.add_step_args(p)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--out', default='/tmp/electra_jax_profile')
  a = p.parse_args()
  cfg = bench_step.config_from_args(a)
  runner = bench_step.JaxStep(cfg)
  batch = bench_step.synthetic_batch(cfg)
  runner.step(batch)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  hlo = runner.compiled.as_text()
  (out / 'step.hlo.txt').write_text(hlo)
  with jax.profiler.trace(str(out / 'trace'), create_perfetto_trace=True):
    for _ in range(a.steps):
      runner.step(batch)
  trace = sorted(glob.glob(str(out / 'trace' / '**' / 'perfetto_trace.json.gz'), recursive=True))[-1]
  data = json.load(gzip.open(trace))
  events = data['traceEvents'] if isinstance(data, dict) else data
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(WRAPPERS):
      total[e['name']] += e.get('dur', 0) / 1e3 / a.steps
      count[e['name']] += 1
  index = hlo_index(hlo)
  ops_ms = sum(total.values())
  by_kind = collections.Counter()
  for name, ms in total.items():
    by_kind[re.sub(r'[.\d]+$', '', name)] += ms
  print(f'{a.size} {a.batch}x{a.seq_len} {a.dtype} {a.attention} head={a.head} remat={a.remat}: '
        f'{ops_ms:.0f} ms of XLA ops per step ({len(total)} ops)')
  print('by kind: ' + ', '.join(f'{k} {v:.0f} ms' for k, v in by_kind.most_common(8)))
  print(f'| ms/step | share | op | source |\n|---|---|---|---|')
  for name, ms in total.most_common(a.top):
    print(f'| {ms:.1f} | {100 * ms / ops_ms:.1f}% | {name} | {fusion_source(name, index, hlo)} |')


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  main()
