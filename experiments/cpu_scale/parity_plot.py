"""Held-out curves of several seeds per implementation: mean and min-max band, plus a table.

    python experiments/cpu_scale/parity_plot.py --group ours RUN RUN ... --group peer RUN ... \
        --out experiments/cpu_scale/parity

Each RUN is a directory (or an eval.jsonl file) in the run's eval.jsonl format; a group is one
implementation or variant, its runs its seeds. Writes OUT.png (held-out RTD AUC and generator
accuracy against step) and OUT.json (per-seed values at every step, group mean, min and max).
"""

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = (('eval_disc_auc', 'held-out RTD AUC'), ('eval_gen_accuracy', 'held-out generator accuracy'))


def read(run: str) -> dict:
  p = Path(run)
  p = p / 'eval.jsonl' if p.is_dir() else p
  rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
  if not rows:
    raise SystemExit(f'{p}: no evaluation rows')
  return {r['step']: r for r in rows}


def summarize(groups: list) -> dict:
  out = {}
  for name, runs in groups:
    evals = [read(r) for r in runs]
    steps = sorted(set.intersection(*(set(e) for e in evals)))
    g = {'runs': runs, 'steps': steps}
    for key, _ in METRICS:
      per_seed = np.array([[e[s][key] for s in steps] for e in evals])
      g[key] = {'per_seed': per_seed.round(4).tolist(), 'mean': per_seed.mean(0).round(4).tolist(),
                'min': per_seed.min(0).round(4).tolist(), 'max': per_seed.max(0).round(4).tolist()}
    out[name] = g
  return out


def plot(summary: dict, path: Path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4))
  for ax, (key, title) in zip(axes, METRICS):
    for name, g in summary.items():
      m = g[key]
      line, = ax.plot(g['steps'], m['mean'], marker='o', ms=3,
                      label=f'{name} ({len(g["runs"])} seeds)')
      ax.fill_between(g['steps'], m['min'], m['max'], color=line.get_color(), alpha=0.2)
    ax.set_xlabel('step')
    ax.set_title(title + ' (mean, min-max over seeds)')
    ax.grid(alpha=0.3)
  axes[0].axhline(0.5, color='grey', ls=':', lw=1)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--group', nargs='+', action='append', required=True, metavar=('NAME', 'RUN'),
                 help='a name, then its runs')
  p.add_argument('--out', required=True, help='OUT.png and OUT.json are written')
  a = p.parse_args()
  groups = []
  for g in a.group:
    if len(g) < 2:
      raise SystemExit(f'--group {g[0]}: expected a name and at least one run')
    groups.append((g[0], g[1:]))
  summary = summarize(groups)
  out = Path(a.out)
  out.with_suffix('.json').write_text(json.dumps(summary, indent=1) + '\n')
  plot(summary, out.with_suffix('.png'))
  for name, g in summary.items():
    m = g['eval_disc_auc']
    print(f'{name}: AUC at step {g["steps"][-1]}: mean {m["mean"][-1]:.3f} '
          f'({m["min"][-1]:.3f}-{m["max"][-1]:.3f}), seeds {[s[-1] for s in m["per_seed"]]}')


if __name__ == '__main__':
  main()
