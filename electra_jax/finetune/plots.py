"""Pictures of fine-tuning: a run's curves.png and the multi-seed score plot.

    plot_run(workdir)                    # workdir/curves.png from workdir/metrics.jsonl
    plot_seeds(summary, 'seeds.png')     # per-seed scores of multiseed.json, median marked

curves.png has the train loss per logged step (with the epoch boundaries) and one
panel per dev metric per epoch, every dev split a line. Reads only files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_log(workdir) -> tuple[dict, dict]:
  """(train metrics by step, dev records by epoch) of a fine-tuning metrics.jsonl, the last
  line written for each (a resumed run logs the steps after its checkpoint again)."""
  train, dev = {}, {}
  path = Path(workdir) / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found; expected a fine-tuning workdir')
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    if 'train' in r:
      train[r['step']] = r
    elif 'epoch' in r:
      dev[r['epoch']] = r
  return dict(sorted(train.items())), dict(sorted(dev.items()))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_run(workdir, out=None) -> Path:
  """Draws workdir's train loss and dev metrics into `out` (default workdir/curves.png)."""
  train, dev = read_log(workdir)
  metrics = sorted({(split, k) for r in dev.values() for split, m in r.items()
                    if isinstance(m, dict) for k, v in m.items()
                    if isinstance(v, (int, float)) and math.isfinite(v)},
                   key=lambda sk: sk[1])
  names = list(dict.fromkeys(k for _, k in metrics))
  plt = _pyplot()
  cols = min(4, 1 + len(names))
  rows = -(-(1 + len(names)) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  ax = axes.flat[0]
  ax.plot(list(train), [r['train']['loss'] for r in train.values()])
  for r in dev.values():
    ax.axvline(r['step'], color='grey', alpha=0.3, lw=0.8)
  ax.set(title='train loss', xlabel='step')
  for ax, name in zip(list(axes.flat)[1:], names):
    for split in dict.fromkeys(s for s, k in metrics if k == name):
      epochs = [e for e, r in dev.items() if name in r.get(split, {})]
      ax.plot(epochs, [dev[e][split][name] for e in epochs], marker='o', label=split)
    ax.set(title=f'dev {name}', xlabel='epoch')
    ax.legend(fontsize=7)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[1 + len(names):]:
    ax.axis('off')
  fig.tight_layout()
  out = Path(out or Path(workdir) / 'curves.png')
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def plot_seeds(summary: dict, out) -> Path:
  """The main metric of every seed on every dev split (multiseed.json), the median a bar."""
  main = summary['main_metric']
  splits = [s for s, m in summary['dev'].items() if main in m]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.2))
  for i, split in enumerate(splits):
    m = summary['dev'][split][main]
    ax.scatter([i] * len(m['values']), m['values'], alpha=0.7, label='seeds' if i == 0 else None)
    for seed, v in zip(summary['seeds'], m['values']):
      ax.annotate(str(seed), (i, v), xytext=(5, 0), textcoords='offset points', fontsize=6)
    ax.hlines(m['median'], i - 0.3, i + 0.3, color='k',
              label='median' if i == 0 else None)
  ax.set_xticks(range(len(splits)), splits)
  ax.set_xlim(-0.6, len(splits) - 0.4)
  ax.set(title=f'{summary["task"]}: {main} over {len(summary["seeds"])} seeds', ylabel=main)
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=7)
  fig.tight_layout()
  out = Path(out)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
