"""Is the task too hard, or has the discriminator learned nothing? One checkpoint, three replacement laws.

    python experiments/cpu_scale/cross_eval.py RUN_DIR [RUN_DIR ...] [--out cross_eval.json]

RUN_DIR is an `electra_jax.main` workdir (its latest checkpoint is read; a copy
holding config.json and one checkpoints/<step> works too). Its discriminator is
evaluated on the run's own held-out batches (the same key per batch as the run's
evaluation) three times, each with replacements drawn another way:
  electra            the run's own generator (what the run's eval reports)
  unigram_generator  tokens drawn from the data's unigram distribution
  uniform_generator  tokens drawn uniformly from the vocab
The discriminator is the same in all three; only the replaced tokens change. If it
separates uniform and unigram replacements well while its own generator's stay near
chance, it has learned what the easier tasks need (rarity, then context), and the
plateau is its generator being too good for it, not a discriminator that cannot learn.
"""

import argparse
import functools
import json
from pathlib import Path

import jax
import ml_collections

from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.io import checkpoint
from electra_jax.pretrain import build
from electra_jax.pretrain import evaluation
from electra_jax.pretrain import loop
from electra_jax.pretrain import objectives
from electra_jax.pretrain import registry

LAWS = ('electra', 'unigram_generator', 'uniform_generator')


def restore_latest(run_dir: Path):
  """(config, mesh, model, abstract state, restored checkpoint) of a workdir's latest checkpoint."""
  config = ml_collections.ConfigDict(json.loads((run_dir / 'config.json').read_text()))
  mesh = sharding.make_mesh(config.mesh)
  model = build.build_model(config)
  tx, _ = build.build_optimizer(config)
  abstract = build.abstract_train_state(config, model, tx, mesh)
  ckpt = checkpoint.Checkpointer(run_dir, config.train.keep_checkpoints, abstract)
  try:
    restored = ckpt.restore_latest()
  finally:
    ckpt.close()
  if restored is None:
    raise SystemExit(f'{run_dir}: no checkpoint to evaluate')
  return config, mesh, model, abstract, restored


def cross_eval(run_dir: Path, cache_dir=None) -> dict:
  config, mesh, model, abstract, restored = restore_latest(run_dir)
  data = loop.load_data(config, cache_dir)
  batches = loop._take(data.eval, config.train.eval_batches)  # pylint: disable=protected-access
  rng = jax.random.fold_in(jax.random.key(config.seed), loop.EVAL_RNG_SALT)
  shardings = state_lib.shardings_of(abstract)
  out = {'step': restored.step}
  for law in LAWS:
    law_config = ml_collections.ConfigDict(config.to_dict())
    law_config.objective.name = law
    obj_cfg = objectives.ObjectiveConfig.from_config(law_config)
    fn = functools.partial(loop.eval_step, model=model, obj_cfg=obj_cfg,
                           objective=registry.get_objective(law))
    step_fn = state_lib.jit(fn, mesh, (shardings.params, 'batch', 'replicated', 'replicated'),
                            ('replicated', 'batch'))
    m = evaluation.evaluate(step_fn, restored.state.params, batches, rng, restored.step, mesh,
                            obj_cfg, prefix='')
    out[law] = {k: m[k] for k in ('disc_auc', 'disc_auc_stderr', 'replaced_fraction',
                                  'disc_loss', 'examples')}
    print(f'{run_dir.name} step {restored.step} {law:>18}: AUC {m["disc_auc"]:.3f} '
          f'+- {m["disc_auc_stderr"]:.3f} (replaced {m["replaced_fraction"]:.3f})', flush=True)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('run_dirs', nargs='+')
  p.add_argument('--cache_dir', default=None)
  p.add_argument('--out', default=None)
  args = p.parse_args()
  results = {str(d): cross_eval(Path(d), args.cache_dir) for d in args.run_dirs}
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1) + '\n')


if __name__ == '__main__':
  main()
