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


def requested_model_keys(config_flag, config) -> dict:
  """{model key: where} asked for on the command line: --config.model.* flags and size=."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from electra_jax.finetune import resolve  # pylint: disable=g-import-not-at-top
  out = {k.split('.', 1)[1]: f'--config.{k}'
         for k in config_flags.get_override_values(config_flag) if k.startswith('model.')}
  arg = config_flags.get_config_filename(config_flag).partition(':')[2]
  if any(part.split('=')[0].strip() == 'size' for part in arg.split(',') if '=' in part):
    for k in resolve.STRUCTURAL_KEYS:
      if k != 'vocab_size':
        out.setdefault(k, f'size={config.size}')
  return out


def main(argv):
  cli.no_positional(argv)
  config = cli.get_config(example='configs/finetune.py:task=rte')
  cli.require(workdir=FLAGS.workdir)
  cli.init_distributed()
  from electra_jax import rundir  # pylint: disable=g-import-not-at-top
  from electra_jax.finetune import loop  # pylint: disable=g-import-not-at-top  (after init)
  from electra_jax.finetune import multiseed  # pylint: disable=g-import-not-at-top
  requested = requested_model_keys(FLAGS['config'], config)
  workdir = rundir.check_workdir(FLAGS.workdir)
  logging.getLogger().setLevel(logging.INFO)
  finetune_fn = functools.partial(loop.finetune_and_evaluate, requested=requested,
                                  progress=FLAGS.progress)
  # The lock spans every seed of a multi-seed run; each seed's start is checked (and a refused
  # one undone) in loop.finetune_and_evaluate, which also opens its log.txt.
  with rundir.RunStart(workdir, 'fine-tuning run'):
    if config.num_seeds > 1:
      multiseed.run_seeds(config, workdir, finetune_fn)
    else:
      finetune_fn(config, workdir)


def run():
  """The console script (see pyproject.toml)."""
  # The system allocator by default: the tuned one triples fine-tuning's peak RSS (hostmem).
  cli.run(main, define_flags, tuned_malloc=False)


if __name__ == '__main__':
  run()
