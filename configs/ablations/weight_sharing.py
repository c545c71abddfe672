r"""Weight sharing between generator and discriminator (paper Section 3.1).

Equal-size generator and discriminator (generator_fraction=1): no sharing,
shared embeddings (the default), all weights tied; plus DeBERTa-v3's
gradient-disentangled embedding sharing (GDES). Paper (Base, 500k steps, GLUE):
none 83.6, embeddings 84.3, all 84.4.

  python -m electra_jax.sweep --config=configs/ablations/weight_sharing.py --workdir=runs/sharing

Arguments: objective, size (small), steps (100k), files, data, runlocal (see common.py).
"""

import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[2]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
from configs.ablations import common

SHARING = ('none', 'embeddings', 'all', 'gdes')
FINETUNE = common.glue_finetune(tasks=('cola', 'sst2', 'mrpc', 'stsb', 'rte'),
                                num_seeds=3, size='small')


def get_config(arg=None):
  return common.study_config(arg)


def sweep(add):
  for sharing in SHARING:
    add(name=f'sharing_{sharing}',
        **{'model.sharing': sharing, 'model.generator_fraction': 1.0})
