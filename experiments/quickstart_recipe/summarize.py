"""Table and plot of the quickstart recipe search: one row per run directory.

    python experiments/quickstart_recipe/summarize.py RUN_DIR [RUN_DIR ...] \
        --out experiments/quickstart_recipe

Reads each run's config.json, eval.jsonl and metrics.jsonl; writes runs.csv (the
last held-out evaluation of every run, its baselines and the steps/s it trained
at) and auc.png (held-out RTD AUC and generator accuracy against step).
"""

import argparse
import csv
import json
from pathlib import Path

COLUMNS = ('run', 'steps', 'examples', 'eval_disc_auc', 'eval_disc_auc_stderr',
           'eval_gen_accuracy', 'eval_gen_accuracy_stderr', 'eval_baseline_gen_accuracy',
           'eval_disc_accuracy', 'eval_baseline_disc_accuracy', 'eval_disc_precision',
           'eval_disc_recall', 'hidden', 'layers', 'heads', 'embedding', 'generator_fraction',
           'lr', 'warmup', 'batch', 'seq_len', 'objective', 'steps_per_s')


def _jsonl(path: Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def row(run: Path) -> dict:
  c = json.loads((run / 'config.json').read_text())
  evals = _jsonl(run / 'eval.jsonl')
  train = _jsonl(run / 'metrics.jsonl')
  last = evals[-1] if evals else {}
  rates = [r['steps_per_s'] for r in train if 'steps_per_s' in r]
  out = {'run': run.name, 'steps': last.get('step'), 'examples': last.get('eval_examples')}
  out.update({k: last.get(k) for k in COLUMNS if k.startswith('eval_')})
  m, o, t = c['model'], c['optimizer'], c['train']
  out.update(hidden=m['hidden_size'], layers=m['num_layers'], heads=m['num_heads'],
             embedding=m['embedding_size'], generator_fraction=m['generator_fraction'],
             lr=o['learning_rate'], warmup=o['warmup_steps'], batch=t['batch_size'],
             seq_len=t['seq_len'], objective=c['objective']['name'],
             steps_per_s=sorted(rates)[len(rates) // 2] if rates else None)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('runs', nargs='+')
  p.add_argument('--out', default='.')
  args = p.parse_args()
  runs = [Path(r) for r in args.runs if (Path(r) / 'eval.jsonl').exists()]
  out = Path(args.out)
  with open(out / 'runs.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    for r in runs:
      w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row(r).items()})
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
  for r in runs:
    ev = _jsonl(r / 'eval.jsonl')
    xs = [e['step'] for e in ev]
    a1.plot(xs, [e['eval_disc_auc'] for e in ev], marker='o', markersize=3, label=r.name)
    a2.plot(xs, [e['eval_gen_accuracy'] for e in ev], marker='o', markersize=3, label=r.name)
  a1.axhline(0.5, color='gray', ls='--', label='chance')
  a1.axhline(0.8, color='k', ls=':', label='goal 0.80')
  a1.set(title='held-out replaced-token AUC', xlabel='step')
  a2.set(title='held-out generator accuracy', xlabel='step')
  for a in (a1, a2):
    a.grid(alpha=0.3)
    a.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(out / 'auc.png', dpi=100)
  print(f'wrote {out / "runs.csv"} and {out / "auc.png"} ({len(runs)} runs)')


if __name__ == '__main__':
  main()
