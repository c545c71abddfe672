r"""Where ELECTRA's gain comes from (paper Table 5), at equal pre-training compute.

Objectives: ELECTRA, All-Tokens MLM, Replace MLM, ELECTRA 15%, BERT. Every
trial spends the same pre-training FLOPs, those of ELECTRA at `steps` steps
(electra_jax/pretrain/flops.py), so cheaper objectives train more steps.
Then each pre-trained discriminator (BERT: its MLM encoder) is fine-tuned on
GLUE RTE, MRPC, STS-B and SST-2 with 3 seeds; the score is the mean over tasks of the
median over seeds.

  python -m electra_jax.sweep --config=configs/ablations/efficiency.py --workdir=runs/efficiency

One trial by hand (what the launcher runs):
  python -m electra_jax.main --config=configs/ablations/efficiency.py:objective=replace_mlm \
    --workdir=runs/efficiency/replace_mlm/pretrain

Arguments (`efficiency.py:k=v,...`): objective, size (tiny), steps (ELECTRA's
steps; sets the budget), files (corpus glob inside the enwiki sample), data
(the public data root; default $ELECTRA_JAX_DATA, else ./data), vocab
('' = BERT uncased; or a vocab.txt path), runlocal. Sized for a 2-core CPU with `size=tiny`; experiments/efficiency/
README.md has the measured run. Paper (Base, GLUE dev): ELECTRA 85.0,
All-Tokens MLM 84.3, Replace MLM 82.4, ELECTRA 15% 82.4, BERT 82.2.
"""

import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[2]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
from configs.ablations import common
from electra_jax import configlib
from electra_jax.pretrain import flops

OBJECTIVES = ('electra', 'all_tokens_mlm', 'replace_mlm', 'electra_15', 'bert_mlm')
# Fine-tuning spec read by electra_jax.sweep. Sized for a 2-core CPU: the first
# 1500 training examples, 3 epochs, length 64, no test-set predictions. Drop
# these overrides (and use size=small) for the paper's recipe.
FINETUNE = common.glue_finetune(
    tasks=('rte', 'mrpc', 'stsb', 'sst2'), num_seeds=3, size='tiny',
    **{'data.max_train_examples': 1500, 'train.epochs': 3.0, 'train.seq_len': 64,
       'data.test_splits': ''})


def get_config(arg=None):
  arg = configlib.parse_arg(arg, lazy_field='objective', objective='electra', size='tiny',
                            steps=1000, files='wiki_en_00.txt', data='', vocab='',
                            runlocal=False)
  if arg.objective not in OBJECTIVES:
    raise ValueError(f'objective={arg.objective!r}; expected one of {OBJECTIVES}')
  kw = dict(data=arg.data, corpus_files=arg.files, vocab=arg.vocab, runlocal=arg.runlocal)
  reference = common.variant_config(arg.size, 'electra', **kw)
  budget = flops.train_flops_per_step(reference) * arg.steps
  c = common.variant_config(arg.size, arg.objective, **kw)
  c.train.num_steps = flops.steps_for_budget(c, budget)
  c.optimizer.warmup_steps = max(1, c.train.num_steps // 10)
  c.train.log_every = max(1, min(c.train.log_every, c.train.num_steps // 20))
  c.train.checkpoint_every = max(1, c.train.num_steps // 5)
  c.train.eval_every = c.train.num_steps  # held-out metrics once, at the end
  return c


def sweep(add):
  for objective in OBJECTIVES:
    add(name=objective, arg=f'objective={objective}')
