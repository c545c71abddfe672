"""Learning curves of one or several pre-training workdirs, side by side, as a PNG.

    python -m electra_jax.plot runs/tiny [runs/other ...] --out curves.png

One panel per metric (rows of train loss terms, accuracies, learning rate,
throughput and the held-out eval metrics); one line per workdir, labelled by its
directory name. Reads workdir/metrics.jsonl and workdir/eval.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from absl import flags

from electra_jax import cli
from electra_jax import runlog

# (title, split, key): train keys from metrics.jsonl, eval keys from eval.jsonl.
PANELS = (
    ('loss', 'train', 'loss'),
    ('generator MLM loss', 'train', 'gen_loss'),
    ('discriminator loss', 'train', 'disc_loss'),
    ('generator accuracy', 'train', 'gen_accuracy'),
    ('discriminator accuracy', 'train', 'disc_accuracy'),
    ('learning rate', 'train', 'learning_rate'),
    ('sequences / s', 'train', 'seq_per_s'),
    ('eval loss', 'eval', 'eval_loss'),
    ('eval generator accuracy', 'eval', 'eval_gen_accuracy'),
    ('eval discriminator accuracy', 'eval', 'eval_disc_accuracy'),
    ('eval replaced-token AUC', 'eval', 'eval_disc_auc'),
    ('eval precision / recall', 'eval', ('eval_disc_precision', 'eval_disc_recall')),
)

# Trivial baselines drawn as dashed lines on the eval panels: a key of eval.jsonl
# (written by pretrain_eval.evaluate) or a constant.
BASELINES = {
    'eval_gen_accuracy': ('unigram', 'eval_baseline_gen_accuracy'),
    'eval_disc_accuracy': ('all original', 'eval_baseline_disc_accuracy'),
    'eval_disc_auc': ('chance', 0.5),
}


def _series(records: list[dict], key: str):
  xs, ys = [], []
  for r in records:
    v = r.get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
      xs.append(r['step'])
      ys.append(v)
  return xs, ys


def plot_workdirs(workdirs: Sequence, out, smooth: int = 1) -> Path:
  """Draws the curves of `workdirs` into the PNG `out`; returns its path.

  smooth: moving-average window (in logged points) for the train curves.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = []
  for wd in workdirs:
    wd = Path(wd)
    if not (wd / runlog.FILES['train']).exists():
      raise FileNotFoundError(f'{wd / runlog.FILES["train"]} not found; expected a '
                              'pre-training workdir')
    runs.append((wd.name or str(wd),
                 {s: runlog.read_jsonl(wd / f) for s, f in runlog.FILES.items()}))
  panels = [p for p in PANELS if any(
      _series(recs[p[1]], k)[0] for _, recs in runs
      for k in (p[2] if isinstance(p[2], tuple) else (p[2],)))]
  cols = 4
  rows = max(1, -(-len(panels) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  for ax, (title, split, keys) in zip(axes.flat, panels):
    keys = keys if isinstance(keys, tuple) else (keys,)
    for name, recs in runs:
      for key in keys:
        xs, ys = _series(recs[split], key)
        if not xs:
          continue
        if split == 'train' and smooth > 1 and len(ys) >= smooth:
          k = smooth
          ys = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
                for i in range(len(ys))]
        label = name if len(keys) == 1 else f'{name} {key.rsplit("_", 1)[-1]}'
        line, = ax.plot(xs, ys, label=label, marker='o' if split == 'eval' else None,
                        markersize=3)
        if key in BASELINES:
          base_name, base = BASELINES[key]
          bx, by = (xs, [base] * len(xs)) if isinstance(base, float) else _series(recs[split], base)
          if bx:
            ax.plot(bx, by, linestyle='--', color=line.get_color(), alpha=0.6,
                    label=f'{name} {base_name}' if len(runs) > 1 else base_name)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if len(runs) > 1 or len(keys) > 1 or any(k in BASELINES for k in keys):
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def define_flags():
  flags.DEFINE_string('out', 'curves.png', 'Output PNG path.')
  flags.DEFINE_integer('smooth', 1, 'Moving average over N logged points.')


def main(argv):
  """python -m electra_jax.plot WORKDIR [WORKDIR ...] [--out=curves.png] [--smooth=N]."""
  if len(argv) < 2:
    raise cli.UsageError('expected one or more pre-training workdirs after the flags')
  out = plot_workdirs(argv[1:], flags.FLAGS.out, flags.FLAGS.smooth)
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main, define_flags)
