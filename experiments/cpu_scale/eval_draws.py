"""How much does a held-out number move with the evaluation's random draws alone?

    python experiments/cpu_scale/eval_draws.py RUN_DIR [--draws 20] [--eval_batches N] [--out F]

RUN_DIR is an `electra_jax.main` workdir (its latest checkpoint is read). The
model and the held-out sequences stay fixed; only the evaluation key changes:
draw 0 is the run's own key (what its eval.jsonl reports), draw k > 0 folds k
into it, so each draw masks, samples and scores the same sequences anew. The
spread of the held-out AUC and generator accuracy across draws is set against
the standard errors each evaluation reports (which treat tokens as independent).
Two runs compared on different draws differ by at least this spread.
"""

import argparse
import functools
import json
from pathlib import Path

import jax
import numpy as np

import cross_eval
from electra_jax import state as state_lib
from electra_jax.pretrain import evaluation
from electra_jax.pretrain import loop
from electra_jax.pretrain import objectives
from electra_jax.pretrain import registry

KEYS = ('disc_auc', 'disc_auc_stderr', 'gen_accuracy', 'gen_accuracy_stderr', 'disc_loss',
        'replaced_fraction')


def eval_draws(run_dir: Path, draws: int, eval_batches: int = 0, cache_dir=None) -> dict:
  config, mesh, model, abstract, restored = cross_eval.restore_latest(run_dir)
  data = loop.load_data(config, cache_dir)
  batches = loop._take(data.eval, eval_batches or config.train.eval_batches)  # pylint: disable=protected-access
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  fn = functools.partial(loop.eval_step, model=model, obj_cfg=obj_cfg,
                         objective=registry.get_objective(obj_cfg.name))
  shardings = state_lib.shardings_of(abstract)
  step_fn = state_lib.jit(fn, mesh, (shardings.params, 'batch', 'replicated', 'replicated'),
                          ('replicated', 'batch'))
  base = jax.random.fold_in(jax.random.key(config.seed), loop.EVAL_RNG_SALT)  # the run's key
  rows = []
  for k in range(draws):
    rng = base if k == 0 else jax.random.fold_in(base, k)
    m = evaluation.evaluate(step_fn, restored.state.params, batches, rng, restored.step, mesh,
                            obj_cfg, prefix='')
    rows.append({key: float(m[key]) for key in KEYS} | {'examples': int(m['examples'])})
    print(f'{run_dir.name} step {restored.step} draw {k:2d}: AUC {m["disc_auc"]:.3f} '
          f'+- {m["disc_auc_stderr"]:.3f}  gen_acc {m["gen_accuracy"]:.3f} '
          f'+- {m["gen_accuracy_stderr"]:.3f}', flush=True)
  summary = {}
  for key in ('disc_auc', 'gen_accuracy'):
    v = np.array([r[key] for r in rows])
    se = float(np.mean([r[key + '_stderr'] for r in rows]))
    summary[key] = {'mean': float(v.mean()), 'std_across_draws': float(v.std(ddof=1)),
                    'min': float(v.min()), 'max': float(v.max()), 'mean_reported_stderr': se,
                    'std_over_stderr': float(v.std(ddof=1) / se) if se else None}
    print(f'{key}: mean {v.mean():.3f}, std across {draws} draws {v.std(ddof=1):.4f} '
          f'(range {v.min():.3f}-{v.max():.3f}); reported s.e. {se:.4f}', flush=True)
  return {'step': restored.step, 'examples': rows[0]['examples'], 'draws': rows,
          'summary': summary}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('run_dirs', nargs='+')
  p.add_argument('--draws', type=int, default=20)
  p.add_argument('--eval_batches', type=int, default=0, help='0: the run\'s train.eval_batches')
  p.add_argument('--cache_dir', default=None)
  p.add_argument('--out', default=None)
  args = p.parse_args()
  if args.draws < 2:
    raise SystemExit(f'--draws {args.draws}: expected at least 2')
  results = {Path(d).name: eval_draws(Path(d), args.draws, args.eval_batches, args.cache_dir)
             for d in args.run_dirs}
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1) + '\n')


if __name__ == '__main__':
  main()
