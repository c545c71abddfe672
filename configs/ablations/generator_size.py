r"""Generator size (paper Figure 3, left): GLUE against the generator's hidden size.

The generator's width is a fraction of the discriminator's (its FFN and heads
follow, as in the official code); a unigram generator (no network) is the
zero-size point. Paper (Base): best at 1/4 to 1/2 of the discriminator; a
generator as large as the discriminator hurts.

  python -m electra_jax.sweep --config=configs/ablations/generator_size.py --workdir=runs/gen_size
  python -m electra_jax.sweep --config=configs/ablations/generator_size.py:size=tiny,steps=2000 \
      --workdir=runs/gen_size_tiny      # a CPU-sized version (the :arg reaches every trial)

Arguments: objective, size (small), steps (100k), files, data, runlocal (see common.py).
Hardware: size=small at 100k steps is ~1/10 of ELECTRA-Small, about 10 GPU-hours per trial
on one V100-class GPU.
"""

import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[2]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
from configs.ablations import common

FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
FINETUNE = common.glue_finetune(tasks=('cola', 'sst2', 'mrpc', 'stsb', 'rte'),
                                num_seeds=3, size='small')


def get_config(arg=None):
  return common.study_config(arg)


def sweep(add):
  for frac in FRACTIONS:
    add(name=f'generator_{frac:.3g}', **{'model.generator_fraction': frac})
  add(name='unigram_generator', arg='objective=unigram_generator',
      **{'model.generator_fraction': 0.0625})  # no generator network; plotted at the left edge
