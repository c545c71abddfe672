r"""Pre-train ELECTRA: flags -> loop.train_and_evaluate(config, workdir).

  python -m electra_jax.main --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python -m electra_jax.main --config=configs/pretrain.py:small --config.train.num_steps=1000 ...

Run again on the same workdir to resume from its latest checkpoint. Multi-host:
pass --coordinator_address/--num_processes/--process_id, or --multihost to let
jax.distributed.initialize() detect the cluster (TPU pods, SLURM); see README "Scale out".
"""

import os

from absl import flags
from absl import logging

from electra_jax import cli
from electra_jax import configlib

FLAGS = flags.FLAGS


def define_flags():
  cli.define_config('configs/pretrain.py:tiny')
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, export).')
  flags.DEFINE_string('cache_dir', None, 'Where built data shards and the builtin vocab are '
                      'cached (default $ELECTRA_JAX_CACHE or ~/.cache/electra_jax).')
  flags.DEFINE_bool('export_only', False,
                    'Restore the latest checkpoint, write workdir/export/ and exit.')
  flags.DEFINE_bool('progress', True, 'Show the tqdm progress bar.')
  cli.define_distributed()


FINETUNE_HINT = ('python -m electra_jax.finetune --config=configs/finetune.py:task=rte{size} '
                 '--config.train.init_from={export} --config.data.data_dir=PATH/TO/glue '
                 '--workdir=runs/rte')


def finetune_hint(config, export: str) -> str:
  """The fine-tuning command for this run's export.

  size= picks the fine-tuning recipe and must match the checkpoint's shape (fine-tuning
  refuses one that does not), so a reshaped model (`tiny` with --config.model overrides) gets
  no size=: the default recipe's rate, with the flag that changes it.
  """
  shape = configlib.size_table(config.size)
  if all(config.model[k] == shape[k] for k in configlib.SHAPE_KEYS):
    return FINETUNE_HINT.format(export=export, size=f',size={config.size}')
  return (FINETUNE_HINT.format(export=export, size='') +
          '\n  (this model is not a named size: add --config.optimizer.learning_rate=LR to '
          'set the rate; the default is size=small\'s)')


def main(argv):
  cli.no_positional(argv)
  config = cli.get_config(example='configs/pretrain.py:tiny')
  cli.require(workdir=FLAGS.workdir)
  if not FLAGS['verbosity'].present:
    # orbax logs every save at INFO; keep the console for our metrics lines.
    logging.set_verbosity(logging.WARNING)
  cli.init_distributed()
  from electra_jax.pretrain import loop  # pylint: disable=g-import-not-at-top  (after distributed init)
  # Bad inputs raise ValueError / FileNotFoundError / loop.NonFiniteError: cli prints one line.
  summary = loop.train_and_evaluate(config, FLAGS.workdir, cache_dir=FLAGS.cache_dir,
                                    export_only=FLAGS.export_only, progress=FLAGS.progress)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0 or summary.get('preempted'):
    return
  wd = summary.get('workdir', FLAGS.workdir)
  export = summary.get('export_dir')
  if summary.get('eval'):
    from electra_jax.pretrain import evaluation  # pylint: disable=g-import-not-at-top
    print(f'\nHeld-out at step {summary["step"]}: ' + evaluation.describe(summary['eval']))
    print(summary['verdict'])
  print('\nDone. Outputs in', wd)
  if summary.get('skipped_steps'):
    print(f'  note: {summary["skipped_steps"]} step(s) had a non-finite loss or gradient and were '
          'skipped (train.nan_policy=skip); see skipped_steps in metrics.jsonl')
  for name, path in (('metrics', os.path.join(wd, 'metrics.jsonl')),
                     ('eval metrics', os.path.join(wd, 'eval.jsonl')),
                     ('TensorBoard', os.path.join(wd, 'tensorboard')),
                     ('checkpoints', os.path.join(wd, 'checkpoints')),
                     ('learning curves', summary.get('curves')),
                     ('exported params', export)):
    if path:
      print(f'  {name:16s} {path}')
  if export:
    hint = finetune_hint(config, export)
    print('Next: fine-tune the discriminator, e.g. on RTE (GLUE TSVs):\n  ' + hint)
    print(f'Compare runs: python -m electra_jax.plot {wd} [OTHER_WORKDIR ...] --out curves.png')


def run():
  """The console script (see pyproject.toml)."""
  cli.run(main, define_flags, tuned_malloc=True)


if __name__ == '__main__':
  run()
