r"""How much can local context tell a replaced token from an original? A counting oracle.

The discriminator's job is harder than it looks: a replacement drawn from a generator that
knows the corpus's word frequencies is an ordinary, frequent token, and only its neighbours
give it away. This script measures how much the neighbours give away on a built corpus,
with no neural network: it counts unigrams and bigrams on the training split, then on the
held-out split replaces 15% of the non-special tokens by a draw from the training unigram
distribution (what the `unigram_generator` diagnostic does) and scores every token by the
log-likelihood ratio

    log q(x_i) - log p(x_i | x_{i-1}, x_{i+1}),   p(x | l, r) ∝ p(x | l) p(r | x),

with bigrams interpolated with the unigram (Witten-Bell weights). The held-out RTD AUC of
that score is what a detector that knows the bigram statistics of the training split
reaches; the left-only and right-only scores are printed too. Real ELECTRA generators
condition on the whole sequence and are harder to catch than unigram draws, so these AUCs
are upper references for what bigram knowledge buys, not targets.

  python experiments/quickstart_recipe/ngram_oracle.py ~/.cache/electra_jax/pretrain-<hash> \
      --out experiments/quickstart_recipe/ngram_oracle.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from electra_jax.data import loader  # noqa: E402


def auc(score, label):
  """Area under the ROC curve (ties count one half), via ranks."""
  from scipy.stats import rankdata
  ranks = rankdata(score)
  pos = label.astype(bool)
  n_pos, n_neg = pos.sum(), (~pos).sum()
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def generator_sweep(eval_ids, chosen, special, q, cond, rng, lambdas=(0.0, 0.25, 0.5, 0.75, 1.0)):
  """Bayes-optimal detection in a bigram world, against generators of growing accuracy.

  Generator lambda samples position i from g(y) = lambda p(y | l, r) + (1 - lambda) q(y) (l, r
  the original neighbours); the detector knows g and the bigram model p and scores
  log g(x) - log p(x | l, r). lambda = 1 is a generator exactly as good as the detector: its
  replacements are indistinguishable from originals (AUC 0.5). Returns one row per lambda.
  """
  x = eval_ids[:, 1:-1]
  l, r = eval_ids[:, :-2], eval_ids[:, 2:]
  valid = (x > special) & (l > 0) & (r > 0)
  x, l, r, at = x[valid], l[valid], r[valid], chosen[:, 1:-1][valid]
  rows = []
  for lam in lambdas:
    corrupt = x.copy()
    argmax = np.zeros_like(x)
    score = np.zeros(len(x))
    for i in range(0, len(x), 1024):
      sl = slice(i, i + 1024)
      post = cond[l[sl]] * cond[:, r[sl]].T  # p(y | l) p(r | y), unnormalised
      post /= post.sum(1, keepdims=True)
      gen = lam * post + (1 - lam) * q[None, :]
      argmax[sl] = gen.argmax(1)
      # Sample where the position was chosen; everything else keeps the original token.
      u01 = rng.random(len(post))[:, None]
      draw = (np.cumsum(gen, 1) < u01).sum(1).clip(0, gen.shape[1] - 1)
      corrupt[sl] = np.where(at[sl], draw, x[sl])
      rows_ = np.arange(len(post))
      score[sl] = (np.log(np.maximum(gen[rows_, corrupt[sl]], 1e-30)) -
                   np.log(np.maximum(post[rows_, corrupt[sl]], 1e-30)))
    y = corrupt != x
    rows.append({'lambda': lam, 'generator_accuracy': float((corrupt[at] == x[at]).mean()),
                 'generator_argmax_accuracy': float((argmax[at] == x[at]).mean()),
                 'replaced_fraction': float(y.mean()), 'auc': auc(score, y)})
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('data_dir', help='a pre-training cache directory (train shards + eval/)')
  p.add_argument('--mask_prob', type=float, default=0.15)
  p.add_argument('--special_max_id', type=int, default=-1,
                 help='ids <= this are special tokens (default: 4 for an 8192 vocab, 103 for BERT)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--max_eval_examples', type=int, default=1000)
  p.add_argument('--out', default='')
  args = p.parse_args()

  data_dir = Path(args.data_dir).expanduser()
  meta = loader.read_metadata(data_dir)
  vocab = int(meta['vocab_size'])
  special = args.special_max_id if args.special_max_id >= 0 else (103 if vocab == 30522 else 4)
  train_ids, _, _ = loader.load_examples(data_dir, meta)
  eval_ids, _, _ = loader.load_examples(data_dir / 'eval', loader.read_metadata(data_dir / 'eval'))
  eval_ids = eval_ids[:args.max_eval_examples]

  # Counts over the training split (pad = 0 is never counted).
  left, right = train_ids[:, :-1].ravel(), train_ids[:, 1:].ravel()
  keep = (left > 0) & (right > 0)
  bigram = np.zeros((vocab, vocab), np.float32)
  np.add.at(bigram, (left[keep], right[keep]), 1.0)
  unigram = np.bincount(train_ids[train_ids > 0], minlength=vocab).astype(np.float64)
  q = unigram.copy()
  q[:special + 1] = 0.0  # replacements are never special tokens
  q /= q.sum()
  # Witten-Bell interpolation: p(y | x) = (c(x, y) + T(x) u(y)) / (c(x) + T(x)), with T(x) the
  # number of distinct followers of x and u the add-one unigram.
  u = (unigram + 1.0) / (unigram.sum() + vocab)
  row_total = bigram.sum(1, keepdims=True)
  types = (bigram > 0).sum(1, keepdims=True).astype(np.float32)
  cond = bigram  # in place: [prev, next] (a BERT-vocab table is 3.7 GB)
  for i in range(0, vocab, 1024):
    sl = slice(i, i + 1024)
    cond[sl] = (cond[sl] + types[sl] * u[None, :].astype(np.float32)) / np.maximum(row_total[sl] + types[sl], 1e-9)
  cond[row_total[:, 0] == 0] = u.astype(np.float32)
  del bigram

  # Held-out corruption: mask_prob of the non-special tokens, replaced by unigram draws.
  rng = np.random.default_rng(args.seed)
  corrupt = eval_ids.copy()
  cand = eval_ids > special
  chosen = cand & (rng.random(eval_ids.shape) < args.mask_prob)
  corrupt[chosen] = rng.choice(vocab, size=int(chosen.sum()), p=q)
  replaced = corrupt != eval_ids

  # Score interior, non-special positions whose two neighbours are real tokens.
  x = corrupt[:, 1:-1]
  l, r = corrupt[:, :-2], corrupt[:, 2:]
  valid = (x > special) & (l > 0) & (r > 0)
  x, l, r, y = x[valid], l[valid], r[valid], replaced[:, 1:-1][valid]
  log_q = np.log(np.maximum(q[x], 1e-12))
  log_left = np.log(cond[l, x])  # p(x | l)
  log_right = np.log(cond[x, r]) - np.log(np.maximum(u[r], 1e-12))  # p(r | x) / u(r)
  norm = np.concatenate([np.einsum('nv,vn->n', cond[l[i:i + 1024]], cond[:, r[i:i + 1024]])
                         for i in range(0, len(l), 1024)])  # sum_y p(y | l) p(r | y)
  log_both = np.log(cond[l, x]) + np.log(cond[x, r]) - np.log(norm)
  # The same bigram model as a masked-LM: argmax_y p(y | l) p(r | y) at the chosen positions,
  # to compare with the generator's held-out accuracy (what a bigram-level generator gets).
  cx = eval_ids[:, 1:-1][valid]
  at = chosen[:, 1:-1][valid]
  lm_l, lm_r, lm_x = l[at], r[at], cx[at]
  guess = np.concatenate([(cond[lm_l[i:i + 1024]] * cond[:, lm_r[i:i + 1024]].T).argmax(1)
                          for i in range(0, len(lm_l), 1024)])
  result = {
      'data_dir': str(data_dir), 'vocab_size': vocab, 'train_tokens': int((train_ids > 0).sum()),
      'eval_positions': int(valid.sum()), 'replaced_fraction': float(y.mean()),
      'bigram_mlm_accuracy': float((guess == lm_x).mean()),
      'unigram_mlm_accuracy': float((lm_x == np.argmax(q)).mean()),
      'auc_unigram_only': auc(log_q, y),  # rarity alone: replacements are frequent here
      'auc_left_bigram': auc(log_q - log_left, y),
      'auc_right_bigram': auc(-log_right, y),
      'auc_both_bigrams': auc(log_q - log_both, y),
  }
  result['generators'] = generator_sweep(eval_ids, chosen, special, q, cond, rng)
  print(json.dumps(result, indent=1))
  if args.out:
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.is_file() else {}
    runs[data_dir.name] = result
    out.write_text(json.dumps(runs, indent=1) + '\n')


if __name__ == '__main__':
  main()
