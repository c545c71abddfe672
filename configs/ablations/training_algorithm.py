r"""Training algorithms (paper Figure 3, right): joint MLE, two-stage, adversarial, BERT.

  joint        ELECTRA: generator by MLE, trained jointly with the discriminator
  two_stage    generator alone for half the steps, then the discriminator,
               initialised from it (equal sizes, no sharing), with it frozen
  adversarial  generator by REINFORCE with a learned baseline (Appendix F)
  bert         the MLM baseline
Paper (Base): joint > two-stage and adversarial > BERT; the adversarial
generator reaches 58% MLM accuracy vs 65% for MLE.

  python -m electra_jax.sweep --config=configs/ablations/training_algorithm.py --workdir=runs/algo

Arguments: objective, size (small), steps (100k), files, data, runlocal (see common.py).
"""

import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[2]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
from configs.ablations import common

FINETUNE = common.glue_finetune(tasks=('cola', 'sst2', 'mrpc', 'stsb', 'rte'),
                                num_seeds=3, size='small')


def get_config(arg=None):
  return common.study_config(arg)


def sweep(add):
  add(name='joint', arg='objective=electra')
  add(name='two_stage', arg='objective=two_stage')
  add(name='adversarial', arg='objective=adversarial')
  add(name='bert', arg='objective=bert_mlm')
