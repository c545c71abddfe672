"""Held-out evaluation of a pre-training run.

Runs the jitted eval step (no dropout, a fixed RNG so every evaluation masks and
samples the same way) over a fixed list of held-out batches and reports:

  eval_gen_loss, eval_gen_accuracy   generator MLM loss / accuracy at the masked slots
  eval_disc_loss, eval_disc_accuracy replaced-token detection loss / accuracy, all real tokens
  eval_disc_precision / _recall / _f1 for the "replaced" class (probability > 0.5)
  eval_disc_auc                      ROC AUC of the discriminator's probabilities
  eval_replaced_fraction             share of real tokens the generator replaced
  eval_loss                          gen_weight * gen_loss + disc_weight * disc_loss

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
  cand = (input_mask_BxL.astype(bool) & (input_ids_BxL != cfg.cls_id) & (input_ids_BxL != cfg.sep_id)
          & (input_ids_BxL != cfg.mask_id) & (input_ids_BxL != cfg.pad_id))
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


def evaluate(eval_fn: Callable, params, batches: Iterable[dict], rng, step: int, mesh,
             obj_cfg: objectives.ObjectiveConfig, prefix: str = 'eval_') -> dict:
  """Metrics (see module docstring) over host-local `batches`; keys carry `prefix`.

  eval_fn: `train.make_eval_step(...)`, (params, batch, rng, step) -> (metrics, aux).
  """
  gen_loss = gen_acc = disc_loss = 0.0
  n_pred = n_tok = n_rows = 0
  probs, labels = [], []
  for host_batch in batches:
    host_batch = dict(host_batch)
    weights = host_batch.pop('weights', None)
    if weights is not None:
      keep = (np.asarray(weights) > 0).astype(np.int32)[:, None]
      host_batch['input_mask'] = np.asarray(host_batch['input_mask']) * keep
    batch = sharding.global_batch(host_batch, mesh)
    metrics, aux = eval_fn(params, batch, rng, step)
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
    probs.append(p[sel].astype(np.float64))
    labels.append(y[sel].astype(bool))
  if n_tok == 0:
    raise ValueError('evaluation saw no real token; expected held-out batches with input_mask 1s')
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  pred = probs > 0.5
  tp = int((pred & labels).sum())
  precision = tp / max(int(pred.sum()), 1)
  recall = tp / max(int(labels.sum()), 1)
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
  }
  out['loss'] = obj_cfg.gen_weight * out['gen_loss'] + obj_cfg.disc_weight * out['disc_loss']
  return {prefix + k: v for k, v in out.items()}
