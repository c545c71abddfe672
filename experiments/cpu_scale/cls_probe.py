"""Does replaced-token detection make the [CLS] vector independent of the input?

    python experiments/cpu_scale/cls_probe.py EXPORT_DIR [EXPORT_DIR ...] \
        --tsv $DATA/glue/SST-2/dev.tsv --column 0 [--n 512] [--out probe.json]

[CLS] is never a masking candidate, so its RTD label is always "original": the
objective gives the discriminator no reason to carry information about the
input in the [CLS] position. For each export (and for a random initialisation of
the same shape) this encodes --n sentences (length 64) and reports, for the last
layer's [CLS] vector and for the other real tokens:
  rel_var      variance across inputs / mean squared norm (0 = the same vector for every input)
  probe_acc    5-fold logistic-regression accuracy of the task label from that vector
               (only when --label_column is given): how much the label is linearly
               readable before any fine-tuning
"""

import argparse
import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from electra_jax.data import tokenizer as tok_lib
from electra_jax.io import checkpoint
from electra_jax.models import electra


def _rows(path, column, label_column, n):
  with open(path, encoding='utf-8-sig') as f:
    rows = list(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
  rows = rows[1:] if rows and not rows[0][column].strip().isdigit() and rows[0][column] in (
      'sentence', 'sentence1', 'question', '#1 String') else rows
  texts = [r[column] for r in rows[:n]]
  labels = [r[label_column] for r in rows[:n]] if label_column is not None else None
  return texts, labels


def encode(tokenizer, texts, length=64):
  ids = np.zeros((len(texts), length), np.int32)
  for i, t in enumerate(texts):
    toks = [tokenizer.cls_id] + tokenizer.encode(t)[:length - 2] + [tokenizer.sep_id]
    ids[i, :len(toks)] = toks
  return ids, (ids > 0).astype(np.int32)


def stats(hidden, mask, labels):
  cls = hidden[:, 0]
  tok = hidden[mask.astype(bool)]
  tok = tok[np.random.RandomState(0).permutation(len(tok))[:4096]]
  rel = lambda x: float(x.var(0).sum() / (x ** 2).sum(-1).mean())
  out = {'cls_rel_var': rel(cls), 'token_rel_var': rel(tok),
         'cls_norm': float(np.linalg.norm(cls, axis=-1).mean())}
  if labels is not None:
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import cross_val_score  # pylint: disable=g-import-not-at-top
    y = np.asarray(labels)
    x = (cls - cls.mean(0)) / (cls.std(0) + 1e-6)
    out['cls_probe_acc'] = float(cross_val_score(LogisticRegression(max_iter=2000), x, y,
                                                 cv=5).mean())
    out['majority'] = float(max(np.mean(y == v) for v in set(y)))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('exports', nargs='+')
  p.add_argument('--tsv', required=True)
  p.add_argument('--column', type=int, default=0)
  p.add_argument('--label_column', type=int, default=None)
  p.add_argument('--n', type=int, default=512)
  p.add_argument('--out', default=None)
  args = p.parse_args()
  results = {}
  texts, labels = _rows(args.tsv, args.column, args.label_column, args.n)
  for exp in args.exports:
    model_cfg, params = checkpoint.load_exported(exp)
    tokenizer = tok_lib.WordPieceTokenizer.from_vocab(Path(exp) / 'vocab.txt')
    cfg = electra.ModelConfig.from_config(model_cfg['model'])
    model = electra.ElectraModel(cfg)
    ids, mask = encode(tokenizer, texts)
    seg = np.zeros_like(ids)
    fwd = jax.jit(lambda p, i, m, s: model.apply({'params': p}, i, m, s))
    pre = np.asarray(fwd(params, ids, mask, seg))
    rand = jax.tree.map(np.asarray, model.init(jax.random.key(0), ids[:1], mask[:1], seg[:1]))
    rand = rand['params'] if 'params' in rand else rand
    rand = jax.tree.map(lambda x: getattr(x, 'value', x), rand,
                        is_leaf=lambda x: hasattr(x, 'value'))
    rnd = np.asarray(fwd(rand, ids, mask, seg))
    results[exp] = {'pretrained': stats(pre, mask, labels), 'random_init': stats(rnd, mask, labels),
                    'step': model_cfg.get('step')}
    print(exp, json.dumps(results[exp]))
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  main()
