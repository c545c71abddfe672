"""Per-seed GLUE dev scores of several `glue.sh` runs, side by side.

  python experiments/cpu_scale/glue_table.py /work/exp/glue/random_h128 /work/exp/glue/pt_h128 \
      --out experiments/cpu_scale/runs/glue_h128.json

Each run dir holds one folder per task with `seed_*/results.json` (the final epoch's dev score
of the task's main metric; no epoch is picked on dev). Prints a markdown table: per task and
run, the per-seed scores, their mean and spread (max - min), and for every run after the
first, its mean minus the first run's with the verdict "beats" only when the gap exceeds both
runs' spreads.
"""
import argparse
import json
import statistics
from pathlib import Path


def scores(run: Path) -> dict:
  """{task: {'metric', 'seeds': {seed: value}}} for every task folder with finished seeds."""
  out = {}
  for task_dir in sorted(p for p in run.iterdir() if p.is_dir()):
    seeds = {}
    for f in sorted(task_dir.glob('seed_*/results.json')):
      r = json.loads(f.read_text())
      split = next(iter(r['dev']))
      seeds[int(r['seed'])] = float(r['dev'][split][r['main_metric']])
      metric = r['main_metric']
    if seeds:
      out[task_dir.name] = {'metric': metric, 'seeds': seeds}
  return out


def summary(values: list[float]) -> dict:
  return {'mean': statistics.fmean(values), 'spread': max(values) - min(values), 'n': len(values)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('runs', nargs='+', type=Path, help='glue.sh output dirs; the first is the baseline')
  p.add_argument('--out', type=Path, help='write the table as JSON here')
  args = p.parse_args()
  table = {r.name: scores(r) for r in args.runs}
  base = table[args.runs[0].name]
  tasks = sorted({t for s in table.values() for t in s})
  rows = ['| task (metric) | run | per-seed (seed: score) | mean | spread | vs first |',
          '|---|---|---|---|---|---|']
  for task in tasks:
    for run in args.runs:
      s = table[run.name].get(task)
      if not s:
        continue
      vals = list(s['seeds'].values())
      sm = summary(vals)
      s.update(sm)
      vs = ''
      if run != args.runs[0] and task in base:
        b = summary(list(base[task]['seeds'].values()))
        gap = sm['mean'] - b['mean']
        verdict = ('beats' if gap > max(sm['spread'], b['spread']) else
                   'below' if -gap > max(sm['spread'], b['spread']) else 'within spread')
        vs = f'{gap:+.3f} ({verdict})'
      per = ', '.join(f'{k}: {v:.3f}' for k, v in sorted(s['seeds'].items()))
      rows.append(f'| {task} ({s["metric"]}) | {run.name} | {per} | {sm["mean"]:.3f} | '
                  f'{sm["spread"]:.3f} | {vs} |')
  print('\n'.join(rows))
  if args.out:
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True) + '\n')


if __name__ == '__main__':
  main()
