"""Multi-seed fine-tuning: the paper reports the median over 10 fine-tuning seeds.

    python -m electra_jax.finetune --config=configs/finetune.py:task=rte,num_seeds=10 ...

runs seeds seed, seed+1, ..., seed+N-1 into workdir/seed_<s>/ (each a full
`finetune_and_evaluate`) and writes workdir/multiseed.json: for every dev split
and metric the per-seed values, median, mean, std (population), min and max, and
workdir/seeds.png: the main metric of every seed with the median.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from electra_jax.finetune import loop
from electra_jax.finetune import plots

log = logging.getLogger(__name__)


def summarize(values) -> dict:
  """Median and spread of one metric over seeds."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError('summarize: no values (zero seeds?)')
  return {'median': float(np.median(v)), 'mean': float(v.mean()), 'std': float(v.std()),
          'min': float(v.min()), 'max': float(v.max()), 'values': [float(x) for x in v],
          'num_seeds': int(v.size)}


def summarize_runs(results: list[dict]) -> dict:
  """{split: {metric: summarize(...)}} over the `dev` entries of per-seed results."""
  out: dict = {}
  for split in results[0]['dev']:
    out[split] = {}
    for metric, value in results[0]['dev'][split].items():
      if not isinstance(value, (int, float)):
        continue
      out[split][metric] = summarize([r['dev'][split][metric] for r in results])
  return out


def run_seeds(config, workdir: str, finetune_fn=None) -> dict:
  """Runs config.num_seeds seeds; returns (and writes) the multiseed summary."""
  if finetune_fn is None:
    finetune_fn = loop.finetune_and_evaluate
  if config.num_seeds < 1:
    raise ValueError(f'num_seeds={config.num_seeds}; expected >= 1')
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)  # the seeds' parent (the CLI has locked it)
  results = []
  for k in range(config.num_seeds):
    cfg = config.copy_and_resolve_references()
    cfg.seed = config.seed + k
    cfg.num_seeds = 1
    log.info('seed %d (%d of %d)', cfg.seed, k + 1, config.num_seeds)
    result = finetune_fn(cfg, str(workdir / f'seed_{cfg.seed}'))
    if result.get('preempted'):  # saved; the same command resumes this seed
      return result
    results.append(result)
  summary = {'task': results[0]['task'], 'main_metric': results[0]['main_metric'],
             'seeds': [r['seed'] for r in results], 'dev': summarize_runs(results),
             'wall_time_s': round(sum(r['wall_time_s'] for r in results), 1)}
  workdir.mkdir(parents=True, exist_ok=True)
  if loop.is_writer():
    (workdir / 'multiseed.json').write_text(json.dumps(summary, indent=2, sort_keys=True))
    summary['plot'] = str(plots.plot_seeds(summary, workdir / 'seeds.png'))
  main = summary['main_metric']
  for split, m in summary['dev'].items():
    if main in m:
      log.info('%s/%s %s over %d seeds: median %.4f (min %.4f, max %.4f, std %.4f)',
               summary['task'], split, main, m[main]['num_seeds'], m[main]['median'],
               m[main]['min'], m[main]['max'], m[main]['std'])
  return summary
