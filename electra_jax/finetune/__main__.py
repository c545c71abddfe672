r"""Fine-tune on a downstream task (GLUE, SQuAD, chunking).

  python -m electra_jax.finetune --config=configs/finetune.py:task=rte,size=small \
      --config.train.init_from=runs/small/export --config.data.data_dir=PATH/TO/glue \
      --workdir=runs/rte

One seed runs electra_jax.finetune.loop.finetune_and_evaluate; config.num_seeds > 1
runs electra_jax.finetune.multiseed (the median over seeds). Multi-host: pass
--coordinator_address/--num_processes/--process_id, or --multihost to let
jax.distributed.initialize() detect the cluster, as for pre-training.
"""

import functools
import logging

from absl import flags

from electra_jax import cli

FLAGS = flags.FLAGS


def define_flags():
  cli.define_config('configs/finetune.py:task=rte')
  flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, metrics, results.json, '
                      'model/); run the same command again to resume.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar (--noprogress: log lines only).')
  cli.define_distributed()


def main(argv):
  cli.no_positional(argv)
  config = cli.get_config(example='configs/finetune.py:task=rte')
  cli.require(workdir=FLAGS.workdir)
  cli.init_distributed()
  from electra_jax.finetune import loop  # pylint: disable=g-import-not-at-top  (after init)
  from electra_jax.finetune import multiseed  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir  # created (with its log.txt) once the inputs are checked
  logging.getLogger().setLevel(logging.INFO)
  finetune_fn = functools.partial(loop.finetune_and_evaluate, progress=FLAGS.progress)
  if config.num_seeds > 1:
    multiseed.run_seeds(config, workdir, finetune_fn)
  else:
    finetune_fn(config, workdir)


def run():
  """The console script (see pyproject.toml)."""
  cli.run(main, define_flags, tuned_malloc=True)


if __name__ == '__main__':
  run()
