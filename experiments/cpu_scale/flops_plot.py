"""GLUE mean against pre-training FLOPs: ELECTRA, MLM and random init (issue 13).

  python experiments/cpu_scale/flops_plot.py --tasks sst2 cola stsb \
      --random /work/exp/glue/random_h128 \
      --run electra /work/exp/cs/h128l4_at2000 /work/exp/glue/pt2000_h128 \
      --run electra /work/exp/cs/h128l4_at4000 /work/exp/glue/pt4000_h128 \
      --run mlm /work/exp/cs/h128l4_mlm_at2134 /work/exp/glue/mlm2134_h128 \
      --out experiments/cpu_scale/runs/flops_glue   # writes .json and .png

Each --run is OBJECTIVE SNAPSHOT GLUE_RUN: SNAPSHOT is a pre-training workdir copy holding
`config.json` and one `checkpoints/<step>` (its step and config give the training FLOPs,
`electra_jax.pretrain.flops.train_flops_per_step` x step), GLUE_RUN a `glue.sh` output dir.
A point is the mean over seeds of the per-seed mean of the tasks' main metrics (x100); its
error bar spans the per-seed means (min to max). Seeds missing a task are left out of the
point, and a point with fewer than 2 seeds is not drawn.
"""
import argparse
import json
import statistics
from pathlib import Path

import ml_collections

from electra_jax.pretrain import flops as flopslib

import glue_table  # pylint: disable=g-bad-import-order  (this folder)


def per_seed_means(run: Path, tasks: list[str]) -> dict:
  """{seed: mean over `tasks` of the main metric x 100}, for seeds that have every task."""
  s = glue_table.scores(run)
  seeds = set.intersection(*(set(s[t]['seeds']) for t in tasks)) if all(t in s for t in tasks) else set()
  return {k: 100 * statistics.fmean(s[t]['seeds'][k] for t in tasks) for k in sorted(seeds)}


def snapshot_flops(snapshot: Path) -> tuple[int, float]:
  """(step, training FLOPs up to it) of a workdir copy with one checkpoint."""
  steps = sorted(int(p.name) for p in (snapshot / 'checkpoints').iterdir() if p.name.isdigit())
  if len(steps) != 1:
    raise ValueError(f'{snapshot}/checkpoints holds steps {steps}; expected exactly one')
  config = ml_collections.ConfigDict(json.loads((snapshot / 'config.json').read_text()))
  return steps[0], steps[0] * flopslib.train_flops_per_step(config)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tasks', nargs='+', required=True)
  p.add_argument('--random', type=Path, required=True, help='glue.sh dir of the random-init control')
  p.add_argument('--run', nargs=3, action='append', default=[],
                 metavar=('OBJECTIVE', 'SNAPSHOT', 'GLUE_RUN'))
  p.add_argument('--out', type=Path, required=True, help='writes OUT.json and OUT.png')
  a = p.parse_args()
  random = per_seed_means(a.random, a.tasks)
  points = []
  for objective, snapshot, run in a.run:
    step, flops = snapshot_flops(Path(snapshot))
    seeds = per_seed_means(Path(run), a.tasks)
    points.append(dict(objective=objective, step=step, flops=flops, glue_run=str(run),
                       seeds=seeds, mean=statistics.fmean(seeds.values()) if seeds else None))
  out = dict(tasks=a.tasks, random=dict(glue_run=str(a.random), seeds=random,
                                        mean=statistics.fmean(random.values()) if random else None),
             points=points)
  a.out.with_suffix('.json').write_text(json.dumps(out, indent=1) + '\n')
  print(f'| objective | step | FLOPs | per-seed mean of {"/".join(a.tasks)} (x100) | mean |')
  print('|---|---|---|---|---|')
  print(f'| random init | 0 | 0 | {", ".join(f"{v:.1f}" for v in random.values())} | '
        f'{out["random"]["mean"]:.1f} |')
  for q in points:
    mean = f'{q["mean"]:.1f}' if q['mean'] is not None else 'n/a'
    print(f'| {q["objective"]} | {q["step"]} | {q["flops"]:.2e} | '
          f'{", ".join(f"{v:.1f}" for v in q["seeds"].values())} | {mean} |')

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for objective in dict.fromkeys(q['objective'] for q in points):
    qs = sorted((q for q in points if q['objective'] == objective and len(q['seeds']) >= 2),
                key=lambda q: q['flops'])
    if not qs:
      continue
    x = [q['flops'] for q in qs]
    y = [q['mean'] for q in qs]
    lo = [q['mean'] - min(q['seeds'].values()) for q in qs]
    hi = [max(q['seeds'].values()) - q['mean'] for q in qs]
    ax.errorbar(x, y, yerr=[lo, hi], marker='o', capsize=3, label=objective)
  if random:
    ax.axhline(out['random']['mean'], color='gray', ls='--',
               label=f'random init ({out["random"]["mean"]:.1f})')
  ax.set_xscale('log')
  ax.set_xlabel('pre-training FLOPs')
  ax.set_ylabel(f'GLUE dev mean of {", ".join(a.tasks)} (x100)')
  ax.set_title('hidden 128, 4 layers; error bars: min-max over seeds')
  ax.legend()
  fig.tight_layout()
  fig.savefig(a.out.with_suffix('.png'), dpi=120)


if __name__ == '__main__':
  main()
