"""Before/after of the held-out evaluation fix on one trained model.

    python experiments/quickstart_recipe/eval_fix.py RUN_DIR [--keys 20]

Before the fix every held-out batch was masked and sampled with the same key;
now batch i uses fold_in(key, i). This evaluates RUN_DIR's latest checkpoint on
its own held-out batches three ways and prints JSON:
  one_key_for_all   the old behaviour (the run's eval key for every batch)
  fold_in           the new behaviour
  independent_keys  mean / min / max of `fold_in` evaluations under --keys other base keys
"""

import argparse
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from electra_jax import state as state_lib
from electra_jax.io import checkpoint
from electra_jax.io import weights
from electra_jax.pretrain import objectives
from electra_jax.pretrain import evaluation as pretrain_eval
from electra_jax import sharding
from electra_jax.pretrain import loop as train

KEYS = ('eval_gen_accuracy', 'eval_disc_accuracy', 'eval_disc_auc', 'eval_loss')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('run_dir')
  p.add_argument('--keys', type=int, default=20)
  p.add_argument('--cache_dir', default=None)
  args = p.parse_args()
  run = Path(args.run_dir)
  config = ml_collections.ConfigDict(json.loads((run / 'config.json').read_text()))
  _, params = weights.load_pretraining_checkpoint(run, which='pretrainer')
  model = train.build_model(config)
  tx, _ = train.build_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  abstract = train.abstract_train_state(config, model, tx, mesh)
  eval_fn = train.make_eval_step(config, model, mesh, state_lib.shardings_of(abstract))
  params = jax.device_put(params, state_lib.shardings_of(abstract).params)
  data = train.load_data(config, args.cache_dir)
  batches = train._take(data.eval, config.train.eval_batches)  # pylint: disable=protected-access
  obj = objectives.ObjectiveConfig.from_config(config)
  key = jax.random.fold_in(jax.random.key(config.seed), train.EVAL_RNG_SALT)
  step = int(checkpoint.Checkpointer(run, 10**9, abstract, async_save=False).all_steps()[-1])

  def one_key(params, batch, rng, step):  # ignores the per-batch key: the old behaviour
    del rng
    return eval_fn(params, batch, key, step)

  pick = lambda m: {k: round(float(m[k]), 4) for k in KEYS}
  old = pretrain_eval.evaluate(one_key, params, batches, key, step, mesh, obj)
  new = pretrain_eval.evaluate(eval_fn, params, batches, key, step, mesh, obj)
  many = [pick(pretrain_eval.evaluate(eval_fn, params, batches, jax.random.key(1000 + i), step,
                                      mesh, obj)) for i in range(args.keys)]
  out = {'run': str(run), 'step': step, 'examples': new['eval_examples'],
         'one_key_for_all': pick(old), 'fold_in': pick(new),
         'independent_keys': {k: {'mean': round(float(np.mean([m[k] for m in many])), 4),
                                  'min': min(m[k] for m in many), 'max': max(m[k] for m in many)}
                              for k in KEYS}}
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
