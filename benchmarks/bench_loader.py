r"""The pre-training loader at corpus scale: peak RSS, start-up time and batches/s, old vs new.

    python benchmarks/bench_loader.py --dir /tmp/bench_loader --sizes 3000000,24000000 \
        --old_rev main --old_mem_gb 12 --batches 100 --repeats 5 --measure_step --delete

1. Writes synthetic shards in the builder's format (`corpus.WRITER_OPTIONS`, records of
   int32le concat(input_ids, segment_ids), metadata.json), laid out round-robin over
   `--shards` shards as builds before resumable ones were (no `shard_examples`: the loader
   reads both layouts, at the same cost: one chunk per example either way)
   for each size: random ids in [5, 30522), lengths as the builder makes them at seq_len 128
   (95% of examples aim at the full length and come out 120-128 tokens after the [CLS]/[SEP]
   and the cut, 5% at a random length in [5, 128]), segment B starting at a random point.
   Shards are written by two processes in parallel; an existing complete size is reused.
2. Runs each (loader, size) in fresh subprocesses (`--repeats` of each new loader, medians): `new` is electra_jax.data.loader (Grain,
   prefetch threads as shipped), `new-sync` the same with no prefetch thread, `old` the in-memory
   loader of git revision `--old_rev` (its loader.py copied to a temporary module). Reported per
   child: peak RSS (resource.getrusage of the child; the import baseline beside it), start-up
   (constructing the loader until its first batch is in hand) and batches/s over `--batches`
   batches of 128 x 128 (one host). The old loader runs under RLIMIT_AS = `--old_mem_gb`, so
   a size it cannot hold ends in MemoryError instead of the machine's OOM killer. Then the
   step's view: the median time next() takes when a stand-in step (sleep of STEP_S, which
   releases the GIL as XLA's compute does) runs between calls: what the step waits.
3. `--measure_step`: one ELECTRA-Small train step at 128 x 128 on this machine (bench_step.py
   in a subprocess), for the ratio loader batches/s over step rate (goal >= 20x).
`--delete` removes the synthetic shards at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ = 128
VOCAB = 30522
STEP_S = 0.5  # a stand-in step for the wait measurement (the real one is ~10 s here)


def _write_shards(args) -> int:
  """Writes shards j = q, q + P, ... of a synthetic split; returns the bytes written."""
  out, n, shards, q, procs = args
  import numpy as np
  from array_record.python.array_record_module import ArrayRecordWriter
  from electra_jax.data import corpus
  written = 0
  for j in range(q, shards, procs):
    rng = np.random.default_rng([j, n])
    count = len(range(j, n, shards))
    full = rng.random(count) < 0.95
    lengths = np.where(full, rng.integers(120, SEQ + 1, count), rng.integers(5, SEQ + 1, count))
    name = out / f'train-{j:05d}-of-{shards:05d}.array_record'
    w = ArrayRecordWriter(str(name), corpus.WRITER_OPTIONS)
    cols = np.arange(SEQ)
    for lo in range(0, count, 65536):
      l = lengths[lo:lo + 65536]
      ids = rng.integers(5, VOCAB, (len(l), SEQ), dtype=np.int32)
      ids[:, 0] = 2
      ids[np.arange(len(l)), l - 1] = 3
      cut = rng.integers(2, np.maximum(l, 3), len(l))
      seg = (cols[None, :] >= cut[:, None]).astype('<i4')
      ids_b, seg_b = ids.astype('<i4'), seg
      for i, m in enumerate(l.tolist()):
        w.write(ids_b[i, :m].tobytes() + seg_b[i, :m].tobytes())
    w.close()
    written += name.stat().st_size
  return written


def make_synthetic(out: Path, n: int, shards: int) -> float:
  """Writes (or reuses) a synthetic split of n examples; returns the seconds it took."""
  from electra_jax.data import corpus
  if (out / 'metadata.json').is_file():
    return 0.0
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  t = time.perf_counter()
  procs = 2
  with multiprocessing.get_context('spawn').Pool(procs) as pool:
    pool.map(_write_shards, [(out, n, shards, q, procs) for q in range(procs)])
  meta = {'format': corpus.RECORD_FORMAT, 'split': 'train', 'source': 'synthetic', 'seed': 0,
          'vocab_hash': 'synthetic', 'vocab_size': VOCAB, 'lowercase': True,
          'special_ids': {'pad': 0, 'unk': 1, 'cls': 2, 'sep': 3, 'mask': 4},
          'max_seq_length': SEQ, 'num_examples': n,
          'num_shards': shards, 'shards': [f'train-{j:05d}-of-{shards:05d}.array_record'
                                           for j in range(shards)]}
  (out / 'metadata.json').write_text(json.dumps(meta, indent=1, sort_keys=True) + '\n')
  return time.perf_counter() - t


# ----------------------------------------------------------------------------- one child


def child(kind: str, data_dir: str, batches: int, old_module: str) -> dict:
  """Runs in a fresh process: one loader over one split."""
  import numpy as np
  if kind == 'old':
    sys.path.insert(0, str(Path(old_module).parent))
    import old_loader as lib  # pylint: disable=import-error
  else:
    from electra_jax.data import loader as lib
    import grain  # noqa: F401  pylint: disable=unused-import  (kept out of the start-up time)
  base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  kw = dict(process_index=0, process_count=1)
  if kind == 'new-sync':
    kw.update(num_threads=0, prefetch=0)
  t = time.perf_counter()
  try:
    ld = lib.PretrainingLoader(data_dir, 128, SEQ, 0, **kw)
    next(ld)
  except MemoryError:
    return {'error': 'MemoryError', 'startup_s': time.perf_counter() - t,
            'base_rss_mb': base_rss,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  startup = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(batches):
    next(ld)
  rate = batches / (time.perf_counter() - t)
  # The step's view: next() while a "step" of STEP_S runs between calls (sleep releases the
  # GIL as XLA's compute does); with prefetch the batch is ready, without it the step waits.
  waits = []
  for _ in range(10):
    time.sleep(STEP_S)
    t = time.perf_counter()
    next(ld)
    waits.append(time.perf_counter() - t)
  return {'startup_s': startup, 'batches_per_s': rate, 'wait_ms': 1e3 * float(np.median(waits)),
          'base_rss_mb': base_rss,
          'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'num_examples': ld.num_examples}


def run_child(kind: str, data_dir: Path, batches: int, old_module: Path, mem_gb: float) -> dict:
  with tempfile.TemporaryDirectory() as d:
    out = Path(d) / 'r.json'
    code = (f'import sys, json; sys.path.insert(0, {str(REPO / "benchmarks")!r}); '
            'import bench_loader as b; '
            f'r = b.child({kind!r}, {str(data_dir)!r}, {batches}, {str(old_module)!r}); '
            f'open({str(out)!r}, "w").write(json.dumps(r))')

    def limit():
      if kind == 'old':
        lim = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO, preexec_fn=limit,
                       capture_output=True, text=True)
    if r.returncode != 0 or not out.exists():
      return {'error': (r.stderr.strip().splitlines() or ['?'])[-1][:200]}
    res = json.loads(out.read_text())
  # The child's own peak, as its parent sees it (same number; kept as the check).
  return res


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dir', default='/tmp/bench_loader')
  p.add_argument('--sizes', default='3000000,24000000')
  p.add_argument('--shards', type=int, default=64)
  p.add_argument('--batches', type=int, default=300)
  p.add_argument('--repeats', type=int, default=5, help='children per (new loader, size); medians')
  p.add_argument('--kinds', default='new,new-sync,old')
  p.add_argument('--old_rev', default='main', help='git revision whose loader.py is "old"')
  p.add_argument('--old_mem_gb', type=float, default=16.0)
  p.add_argument('--measure_step', action='store_true')
  p.add_argument('--delete', action='store_true')
  p.add_argument('--json', default=None)
  a = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  root = Path(a.dir)
  sizes = [int(s) for s in a.sizes.split(',')]
  tmp = Path(tempfile.mkdtemp())
  old = tmp / 'old_loader.py'
  old.write_text(subprocess.run(['git', 'show', f'{a.old_rev}:electra_jax/data/loader.py'],
                                cwd=REPO, check=True, capture_output=True, text=True).stdout)
  results = []
  for n in sizes:
    d = root / f'n{n}'
    gen_s = make_synthetic(d, n, a.shards)
    size_gb = sum(f.stat().st_size for f in d.glob('*.array_record')) / 1e9
    print(f'{n:,} examples: {size_gb:.2f} GB in {a.shards} shards'
          + (f' (written in {gen_s:.0f} s)' if gen_s else ' (reused)'), flush=True)
    for kind in a.kinds.split(','):
      runs = []
      for _ in range(a.repeats if kind != 'old' else 1):  # old: one start-up is minutes
        runs.append(run_child(kind, d, a.batches, old, a.old_mem_gb))
        print('  ' + json.dumps({'kind': kind, **runs[-1]}), flush=True)
        if 'error' in runs[-1]:
          break
      r = dict(runs[-1]) if 'error' in runs[-1] else {
          k: float(np.median([x[k] for x in runs])) for k in runs[0] if k != 'num_examples'}
      r.update(kind=kind, size=n, size_gb=size_gb, runs=runs)
      if 'startup_s' in runs[0]:
        r['startup_range'] = (min(x['startup_s'] for x in runs), max(x['startup_s'] for x in runs))
      results.append(r)
  step_s = None
  if a.measure_step:
    import bench_data  # pylint: disable=g-import-not-at-top
    step_s = bench_data.measure_step(128, SEQ)
    print(f'ELECTRA-Small 128 x {SEQ} train step: {step_s:.2f} s', flush=True)
  print(f'\nmedians of {a.repeats} fresh processes (old: 1); start-up range in brackets')
  print('\n| loader | examples | shards GB | peak RSS MB (imports) | start-up s | batches/s | '
        'step waits ms |' + (' x step rate |' if step_s else ''))
  print('|---|---|---|---|---|---|---|' + ('---|' if step_s else ''))
  for r in results:
    if 'batches_per_s' in r:
      lo, hi = r['startup_range']
      cells = [f'{r["peak_rss_mb"]:,.0f} ({r["base_rss_mb"]:,.0f})',
               f'{r["startup_s"]:.2f} [{lo:.2f}-{hi:.2f}]',
               f'{r["batches_per_s"]:.1f}', f'{r["wait_ms"]:.1f}'] + ([f'{r["batches_per_s"] * step_s:,.0f}x'] if step_s else [])
    else:
      cells = [f'{r.get("peak_rss_mb", float("nan")):,.0f}', f'{r.get("startup_s", float("nan")):.2f}',
               r['error'], '-'] + (['-'] if step_s else [])
    print(f'| {r["kind"]} | {r["size"]:,} | {r["size_gb"]:.2f} | ' + ' | '.join(cells) + ' |')
  if a.json:
    Path(a.json).write_text(json.dumps({'results': results, 'step_s': step_s}, indent=1) + '\n')
  shutil.rmtree(tmp, ignore_errors=True)
  if a.delete:
    shutil.rmtree(root, ignore_errors=True)
    print(f'deleted {root}')


if __name__ == '__main__':
  main()
