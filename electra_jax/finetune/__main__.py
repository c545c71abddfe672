"""Fine-tune: python -m electra_jax.finetune --config=configs/finetune.py:task=rte --workdir=DIR.

One seed runs electra_jax.finetune.loop.finetune_and_evaluate; config.num_seeds > 1
runs electra_jax.finetune.multiseed.
"""

import logging
from pathlib import Path

from electra_jax import hostmem


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from electra_jax.finetune import loop  # pylint: disable=g-import-not-at-top
  from electra_jax.finetune import multiseed  # pylint: disable=g-import-not-at-top
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  Path(workdir).mkdir(parents=True, exist_ok=True)
  handler = logging.FileHandler(Path(workdir) / 'log.txt')
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  logging.getLogger().addHandler(handler)
  logging.getLogger().setLevel(logging.INFO)
  if config.num_seeds > 1:
    multiseed.run_seeds(config, workdir)
  else:
    loop.finetune_and_evaluate(config, workdir)


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  from absl import app
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/finetune.py:task=...', lock_config=True)
  flags.DEFINE_string('workdir', None, 'output directory')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
