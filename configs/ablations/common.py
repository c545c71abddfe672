"""Shared pieces of the ablation sweep files (configs/ablations/*.py).

`variant_config` applies what an objective variant needs on top of
configs/pretrain.get_config: BERT runs MLM on one discriminator-sized tower
(sharing='all', generator_fraction=1), the MLM-style discriminator losses use
disc_weight=1 (50 is tuned for the binary loss), two-stage needs equal tower
sizes and a stage length. Data paths are under the public data root (the
enwiki sample in corpus/, the BERT vocab in vocab/, GLUE in glue/): data=/path,
else the ELECTRA_JAX_DATA environment variable.
"""

from pathlib import Path

import os
import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[2]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
from configs import pretrain

# The public data root (corpus/, vocab/, glue/): data=PATH, else this variable's value.
DATA_ENV = 'ELECTRA_JAX_DATA'
CORPUS = 'corpus/enwiki-2015-wikiextractor-sample'
VOCAB = 'vocab/bert-base-uncased-vocab.txt'


def data_root(data: str) -> Path:
  """data, else $ELECTRA_JAX_DATA, else ./data (read only when a run starts)."""
  return Path(data or os.environ.get(DATA_ENV) or 'data')


SPECIAL_TOKENS = {'pad_id': '[PAD]', 'unk_id': '[UNK]', 'cls_id': '[CLS]', 'sep_id': '[SEP]',
                  'mask_id': '[MASK]'}


def vocab_layout(path: Path) -> dict:
  """vocab_size and special-token ids of a vocab.txt (one token per line)."""
  if not path.is_file():
    raise FileNotFoundError(f'vocab file {path} not found')
  tokens = path.read_text(encoding='utf-8').splitlines()
  index = {t: i for i, t in reversed(list(enumerate(tokens)))}  # first occurrence wins
  missing = [t for t in SPECIAL_TOKENS.values() if t not in index]
  if missing:
    raise ValueError(f'vocab {path} lacks the special tokens {missing}')
  return {'vocab_size': len(tokens), **{k: index[t] for k, t in SPECIAL_TOKENS.items()}}


def variant_config(size: str, objective: str, *, data: str = '', corpus_files: str = '*.txt',
                   vocab: str = '', runlocal: bool = False):
  """configs/pretrain.py for `objective` on the enwiki sample.

  vocab: '' = the BERT uncased vocab in the data root; else a vocab.txt path
  (e.g. one trained with `python -m electra_jax.data.tokenizer train`); its size
  and special-token ids are read from the file.
  """
  c = pretrain.get_config(f'size={size},vocab=bert,objective={objective},runlocal={runlocal}')
  root = data_root(data)
  c.data.source = str(root / CORPUS / corpus_files)
  c.data.vocab = vocab or str(root / VOCAB)
  if vocab:
    layout = vocab_layout(Path(vocab))
    c.model.vocab_size = layout.pop('vocab_size')
    c.tokens.update(layout)
  if objective == 'bert_mlm':
    c.model.sharing = 'all'
    c.model.generator_fraction = 1.0
  if objective in ('replace_mlm', 'all_tokens_mlm'):
    c.objective.disc_weight = 1.0
  if objective == 'two_stage':
    c.model.generator_fraction = 1.0
    c.model.sharing = 'none'
    c.objective.stage_steps = c.train.num_steps // 2
  return c


def glue_finetune(data: str = '', tasks=('rte', 'mrpc', 'stsb'), num_seeds: int = 3,
                  size: str = 'tiny', **overrides) -> dict:
  """The sweep's FINETUNE spec: GLUE tasks from the local TSVs."""
  return dict(config='configs/finetune.py', arg=f'size={size}', tasks=tuple(tasks),
              num_seeds=num_seeds,
              overrides={'data.data_dir': str(data_root(data) / 'glue'), **overrides})


def study_config(arg, **defaults):
  """get_config for a study: `objective`, `size`, `steps`, `files`, `data`, `vocab`, `runlocal`.

  Returns the variant's config with train.num_steps = steps, warmup 10% of it
  (at most the size's own), checkpoints every 10% and one held-out
  evaluation at the end. Study-specific settings come as sweep overrides.
  """
  from electra_jax import configlib  # pylint: disable=g-import-not-at-top
  base = dict(objective='electra', size='small', steps=100_000, files='*.txt', data='',
              vocab='', runlocal=False)
  base.update(defaults)
  a = configlib.parse_arg(arg, lazy_field='objective', **base)
  c = variant_config(a.size, a.objective, data=a.data, corpus_files=a.files, vocab=a.vocab,
                     runlocal=a.runlocal)
  if not a.runlocal:
    c.train.num_steps = a.steps
    c.optimizer.warmup_steps = max(1, min(c.optimizer.warmup_steps, a.steps // 10))
    c.train.checkpoint_every = max(1, a.steps // 10)
    c.train.eval_every = a.steps
  if a.objective == 'two_stage':
    c.objective.stage_steps = c.train.num_steps // 2
  return c
