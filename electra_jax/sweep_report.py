"""A sweep's results: fine-tuning scores per trial, results.csv / results.md and the plots.

`collect` flattens one trial (its settings, pre-training FLOPs and metrics, GLUE scores) into a
dict; `report` gathers every finished trial of a sweep into WORKDIR/results.{csv,md} and the
paper-style plots. Trials are `electra_jax.sweep.Trial`s (only `name`, `init` and
`overrides` are read here).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any


def _read_jsonl(path: Path) -> list[dict]:
  """Records in step order, one per step (the last written): a resumed run's redone steps once."""
  from electra_jax import runlog  # pylint: disable=g-import-not-at-top
  return runlog.read_jsonl(path)


def finetune_finished(task_dir: Path, num_seeds: int) -> bool:
  """Every seed wrote its results.json (written last; a preempted seed saves and exits 0)."""
  return (len(list(task_dir.glob('seed_*/results.json'))) >= num_seeds
          or num_seeds == 1 and (task_dir / 'results.json').is_file())


def finetune_scores(task_dir: Path) -> dict:
  """{'median', 'values', 'metric'} of a task's main dev metric over its seeds."""
  files = sorted(task_dir.glob('seed_*/results.json')) or sorted(task_dir.glob('results.json'))
  if not files:
    raise FileNotFoundError(f'no results.json under {task_dir}')
  values, metric = [], None
  for f in files:
    r = json.loads(f.read_text())
    metric = r['main_metric']
    split = next(iter(r['dev']))  # the task's first dev split (MNLI: matched)
    values.append(float(r['dev'][split][metric]))
  return {'median': statistics.median(values), 'values': values, 'metric': metric}


def collect(config, trial, tdir: Path, ft_scores: dict) -> dict:
  """One flat dict: the trial's settings, pre-training FLOPs and metrics, GLUE scores.

  `config` None = a fine-tuning-only trial (`init`): no pre-training columns.
  """
  from electra_jax.pretrain import flops  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {'trial': trial.name}
  if config is None:
    out['init'] = trial.init
  else:
    train_rows = [r for r in _read_jsonl(tdir / 'pretrain' / 'metrics.jsonl')]
    eval_rows = _read_jsonl(tdir / 'pretrain' / 'eval.jsonl')
    last = train_rows[-1] if train_rows else {}
    last_eval = eval_rows[-1] if eval_rows else {}
    steps = int(last.get('step', config.train.num_steps))
    flops_step = flops.train_flops_per_step(config)
    out.update({
        'objective': config.objective.name, 'size': config.size,
        'generator_fraction': config.model.generator_fraction, 'sharing': config.model.sharing,
        'steps': steps, 'pretrain_flops': flops_step * steps,
        **{f'pretrain_{k}': v for k, v in last.items()
           if k in ('loss', 'gen_loss', 'gen_accuracy', 'disc_loss', 'disc_accuracy')},
        **{k: v for k, v in last_eval.items() if k.startswith('eval_') and
           isinstance(v, (int, float))},
        **{f'override.{k}': v for k, v in trial.overrides.items()},
    })
  timings_path = tdir / 'logs' / 'timings.json'
  if timings_path.is_file():
    t = json.loads(timings_path.read_text())
    out['pretrain_wall_s'] = t.get('pretrain')
    out['finetune_wall_s'] = round(sum(v for k, v in t.items() if k.startswith('finetune')), 3)
  for task, s in ft_scores.items():
    out[f'{task}_{s["metric"]}'] = 100.0 * s['median']
    out[f'{task}_seeds'] = ' '.join(f'{100 * v:.1f}' for v in s['values'])
  if ft_scores:
    out['glue'] = statistics.mean(100.0 * s['median'] for s in ft_scores.values())
  return out


# ------------------------------------------------------------------------ reporting


def write_tables(results: list[dict], root: Path) -> tuple[Path, Path]:
  """results.csv (every key) and results.md (the main columns)."""
  keys: list[str] = []
  for r in results:
    keys += [k for k in r if k not in keys]
  csv_path = root / 'results.csv'
  with open(csv_path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in results:
      w.writerow(r)
  main = [k for k in ('trial', 'objective', 'generator_fraction', 'sharing', 'steps',
                      'pretrain_flops') if k in keys]
  scores = [k for k in keys if k.split('_')[0] in _task_names(results)
            and not k.endswith('_seeds')]
  main += scores + [k for k in ('glue', 'eval_disc_accuracy', 'eval_gen_accuracy') if k in keys]

  def cell(v):
    if isinstance(v, float):
      return f'{v:.3g}' if abs(v) >= 1e5 else f'{v:.2f}' if abs(v) >= 1 else f'{v:.3f}'
    return '' if v is None else str(v)

  lines = ['| ' + ' | '.join(main) + ' |', '|' + '---|' * len(main)]
  lines += ['| ' + ' | '.join(cell(r.get(k)) for k in main) + ' |' for r in results]
  md_path = root / 'results.md'
  md_path.write_text('\n'.join(lines) + '\n')
  return csv_path, md_path


def _task_names(results) -> set:
  return {k.rsplit('_', 1)[0] for r in results for k in r if k.endswith('_seeds')}


def plot(results: list[dict], root: Path) -> list[Path]:
  """Paper-style PNGs: GLUE vs pre-training FLOPs per objective; GLUE vs generator size."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  scored = [r for r in results if r.get('glue') is not None and 'pretrain_flops' in r]
  if not scored:  # (fine-tuning-only sweeps have no pre-training axis to plot against)
    return []
  out = []
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for obj in sorted({r['objective'] for r in scored}):
    pts = sorted((r['pretrain_flops'], r['glue']) for r in scored if r['objective'] == obj)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=obj)
  ax.set_xscale('log')
  flops = [r['pretrain_flops'] for r in scored]
  lo, hi = min(flops) / 2, max(flops) * 2  # readable even when all budgets are equal
  ax.set_xlim(lo, hi)
  ax.minorticks_off()
  ticks = [lo * (hi / lo) ** (i / 4) for i in range(5)]
  ax.set_xticks(ticks, [f'{t:.2g}' for t in ticks])
  out.append(_finish(fig, ax, 'pre-training FLOPs', 'GLUE dev score (mean of task medians)',
                     root / 'glue_vs_flops.png'))
  groups = sorted({(r['objective'], r['sharing']) for r in scored})
  fractions = lambda g: {r['generator_fraction'] for r in scored
                         if (r['objective'], r['sharing']) == g}
  if any(len(fractions(g)) > 1 for g in groups):  # some objective was run at several sizes
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for obj, sharing in groups:
      pts = sorted((r['generator_fraction'], r['glue']) for r in scored
                   if (r['objective'], r['sharing']) == (obj, sharing))
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=f'{obj} ({sharing})')
    out.append(_finish(fig, ax, 'generator size (fraction of the discriminator hidden size)',
                       'GLUE dev score', root / 'glue_vs_generator_size.png'))
  return out


def _finish(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
  """Labels, grid and legend on `ax`; saves `fig` to `path` and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def report(root: Path, trials) -> list[dict]:
  results = [json.loads((root / t.name / 'result.json').read_text()) for t in trials
             if (root / t.name / 'result.json').is_file()]
  if not results:
    print('no finished trials yet', flush=True)
    return []
  csv_path, md_path = write_tables(results, root)
  pngs = plot(results, root)
  print(f'{len(results)}/{len(trials)} trials finished: {csv_path}, {md_path}'
        + ''.join(f', {p}' for p in pngs), flush=True)
  return results
