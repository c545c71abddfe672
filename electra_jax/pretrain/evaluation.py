"""Held-out evaluation of a pre-training run.

Runs the jitted eval step (no dropout) over a fixed list of held-out batches.
Batch i is masked and sampled with `fold_in(rng, i)`: every batch gets its own
draws (so two equal rows in two batches are masked differently), and every
evaluation of a run, and a rerun, uses the same draws, so evaluations compare.
It reports:

  eval_gen_loss, eval_gen_accuracy   generator MLM loss / accuracy at the masked slots
  eval_disc_loss, eval_disc_accuracy replaced-token detection loss / accuracy, all real tokens
  eval_disc_precision / _recall / _f1 for the "replaced" class (probability > 0.5)
  eval_disc_auc                      ROC AUC of the discriminator's probabilities
  eval_replaced_fraction             share of real tokens the generator replaced
  eval_loss                          gen_weight * gen_loss + disc_weight * disc_loss
  eval_examples, eval_tokens, eval_predictions   how many sequences / real tokens / masked slots
  eval_*_stderr                      standard errors: binomial for the accuracies, Hanley-McNeil
                                     for the AUC
  eval_baseline_gen_accuracy         always predicting the held-out text's most frequent
                                     maskable token (a unigram model)
  eval_baseline_disc_accuracy        always answering "original" (1 - replaced_fraction); its
                                     AUC is 0.5

Batch means are combined with the right weights (masked slots for the generator,
real tokens for the discriminator), so a short last batch counts for what it holds.
Rows with `weights == 0` (the loader's padding rows) are blanked (input_mask 0), so
they contribute nothing.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from electra_jax.pretrain import objectives
from electra_jax import sharding


def num_predictions(input_ids_BxL: np.ndarray, input_mask_BxL: np.ndarray,
                    cfg: objectives.ObjectiveConfig) -> np.ndarray:
  """[B] number of masked slots `objectives.mask_inputs` draws for each row (host numpy)."""
  L = input_ids_BxL.shape[1]
  M = min(cfg.max_predictions_per_seq, L)
  cand = candidate_mask(input_ids_BxL, input_mask_BxL, cfg)
  n_tokens = input_mask_BxL.sum(-1).astype(np.float32)
  n = np.maximum(1, np.minimum(M, np.round(n_tokens * cfg.mask_prob)))
  return np.minimum(n, cand.sum(-1)).astype(np.int64)


def _host(x) -> np.ndarray:
  """A global array as numpy on every host (gathers shards across processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (ties count half); NaN when only one class is present."""
  labels = labels.astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  from scipy.stats import rankdata  # pylint: disable=g-import-not-at-top
  ranks = rankdata(scores)  # average ranks: the Mann-Whitney form handles ties
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def candidate_mask(input_ids_BxL: np.ndarray, input_mask_BxL: np.ndarray,
                   cfg: objectives.ObjectiveConfig) -> np.ndarray:
  """[B, L] bool: the positions masking may choose (real, non-special tokens)."""
  return (input_mask_BxL.astype(bool) & (input_ids_BxL != cfg.cls_id)
          & (input_ids_BxL != cfg.sep_id) & (input_ids_BxL != cfg.mask_id)
          & (input_ids_BxL != cfg.pad_id))


def unigram_accuracy(candidate_tokens: np.ndarray) -> float:
  """MLM accuracy of always predicting the commonest of `candidate_tokens` (1-D ids).

  Masking picks uniformly among candidate positions, so a unigram model's accuracy
  is the share of the commonest candidate token. Counted on the held-out text
  itself, it slightly favours the baseline.
  """
  if candidate_tokens.size == 0:
    return float('nan')
  return float(np.unique(candidate_tokens, return_counts=True)[1].max() / candidate_tokens.size)


def binomial_stderr(p: float, n: int) -> float:
  return float(np.sqrt(p * (1 - p) / n)) if n > 0 else float('nan')


def auc_stderr(auc: float, n_pos: int, n_neg: int) -> float:
  """Hanley & McNeil (1982) standard error of a ROC AUC."""
  if not (n_pos and n_neg) or not np.isfinite(auc):
    return float('nan')
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc))
  return float(np.sqrt(max(var, 0.0) / (n_pos * n_neg)))


def evaluate(eval_fn: Callable, params, batches: Iterable[dict], rng, step: int, mesh,
             obj_cfg: objectives.ObjectiveConfig, prefix: str = 'eval_') -> dict:
  """Metrics (see module docstring) over host-local `batches`; keys carry `prefix`.

  eval_fn: `train.make_eval_step(...)`, (params, batch, rng, step) -> (metrics, aux).
  rng: the evaluation's base key; batch i uses fold_in(rng, i).
  """
  gen_loss = gen_acc = disc_loss = 0.0
  n_pred = n_tok = n_rows = 0
  probs, labels, cand_tokens = [], [], []
  for i, host_batch in enumerate(batches):
    host_batch = dict(host_batch)
    weights = host_batch.pop('weights', None)
    if weights is not None:
      keep = (np.asarray(weights) > 0).astype(np.int32)[:, None]
      host_batch['input_mask'] = np.asarray(host_batch['input_mask']) * keep
    batch = sharding.global_batch(host_batch, mesh)
    metrics, aux = eval_fn(params, batch, jax.random.fold_in(rng, i), step)
    metrics = jax.device_get(metrics)
    ids, mask = _host(batch['input_ids']), _host(batch['input_mask'])
    b_pred = int(num_predictions(ids, mask, obj_cfg).sum())
    p, y, w = (_host(aux['disc_probs']), _host(aux['disc_labels']), _host(aux['disc_weights']))
    sel = w > 0
    b_tok = int(sel.sum())
    gen_loss += float(metrics['gen_loss']) * b_pred
    gen_acc += float(metrics['gen_accuracy']) * b_pred
    disc_loss += float(metrics['disc_loss']) * b_tok
    n_pred, n_tok = n_pred + b_pred, n_tok + b_tok
    n_rows += int((mask.sum(-1) > 0).sum())
    cand_tokens.append(ids[candidate_mask(ids, mask, obj_cfg)])
    probs.append(p[sel].astype(np.float64))
    labels.append(y[sel].astype(bool))
  if n_tok == 0:
    raise ValueError('evaluation saw no real token; expected held-out batches with input_mask 1s')
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  pred = probs > 0.5
  tp = int((pred & labels).sum())
  precision = tp / max(int(pred.sum()), 1)
  recall = tp / max(int(labels.sum()), 1)
  n_pos = int(labels.sum())
  out = {
      'gen_loss': gen_loss / max(n_pred, 1),
      'gen_accuracy': gen_acc / max(n_pred, 1),
      'disc_loss': disc_loss / n_tok,
      'disc_accuracy': float((pred == labels).mean()),
      'disc_precision': precision,
      'disc_recall': recall,
      'disc_f1': 2 * precision * recall / max(precision + recall, 1e-12),
      'disc_auc': roc_auc(labels, probs),
      'replaced_fraction': float(labels.mean()),
      'examples': n_rows,
      'tokens': n_tok,
      'predictions': n_pred,
  }
  out['gen_accuracy_stderr'] = binomial_stderr(out['gen_accuracy'], n_pred)
  out['disc_accuracy_stderr'] = binomial_stderr(out['disc_accuracy'], n_tok)
  out['disc_auc_stderr'] = auc_stderr(out['disc_auc'], n_pos, n_tok - n_pos)
  out['baseline_disc_accuracy'] = 1.0 - out['replaced_fraction']
  out['baseline_gen_accuracy'] = unigram_accuracy(np.concatenate(cand_tokens))
  out['loss'] = obj_cfg.gen_weight * out['gen_loss'] + obj_cfg.disc_weight * out['disc_loss']
  return {prefix + k: v for k, v in out.items()}


def describe(m: dict, prefix: str = 'eval_') -> str:
  """One line: the held-out metrics beside their trivial baselines, with standard errors."""
  g = lambda k: m.get(prefix + k, float('nan'))
  return (f'{int(g("examples"))} seqs  loss={g("loss"):.4g}  '
          f'gen_acc={g("gen_accuracy"):.3f}±{g("gen_accuracy_stderr"):.3f} '
          f'(unigram {g("baseline_gen_accuracy"):.3f})  '
          f'disc_acc={g("disc_accuracy"):.3f}±{g("disc_accuracy_stderr"):.3f} '
          f'(all-original {g("baseline_disc_accuracy"):.3f})  '
          f'auc={g("disc_auc"):.3f}±{g("disc_auc_stderr"):.3f} (chance 0.5)  '
          f'P/R={g("disc_precision"):.2f}/{g("disc_recall"):.2f}')


def verdict(m: dict, prefix: str = 'eval_') -> str:
  """A plain sentence on whether the discriminator and the generator beat their baselines.

  "Learned" needs the AUC at least 3 standard errors above chance; "clearly" needs
  0.8 or more. The generator is compared with the unigram model the same way.
  """
  auc, se = m.get(prefix + 'disc_auc', float('nan')), m.get(prefix + 'disc_auc_stderr', 0.0)
  if not np.isfinite(auc):
    disc = 'The discriminator could not be scored (no replaced token in the held-out set).'
  elif auc >= 0.8:
    disc = (f'The discriminator has learned replaced-token detection: held-out AUC {auc:.2f} '
            f'vs 0.50 chance.')
  elif auc - 3 * se > 0.5:
    disc = (f'The discriminator is only starting to detect replaced tokens: held-out AUC '
            f'{auc:.2f} ± {se:.2f} vs 0.50 chance (0.8+ is clear learning; train longer).')
  else:
    disc = (f'The discriminator has not learned: held-out AUC {auc:.2f} ± {se:.2f} is at '
            f'chance (0.50); it only predicts the prior.')
  acc, gse = m.get(prefix + 'gen_accuracy', float('nan')), m.get(prefix + 'gen_accuracy_stderr', 0.0)
  base = m.get(prefix + 'baseline_gen_accuracy', float('nan'))
  if acc - 3 * gse > base:
    gen = f'The generator predicts {acc:.1%} of masked tokens vs {base:.1%} for a unigram model.'
  else:
    gen = (f'The generator ({acc:.1%} of masked tokens) does not beat a unigram model '
           f'({base:.1%}).')
  return disc + ' ' + gen
