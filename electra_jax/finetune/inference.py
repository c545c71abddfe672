"""Batched, sharded prediction over a task's features (fine-tuning's evaluation and
`electra_jax.predict`): every feature once, in order, with optional length buckets."""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from electra_jax import sharding
from electra_jax.finetune.tasks import base as task_base
from electra_jax.models import heads


INPUT_KEYS = ('input_ids', 'input_mask', 'segment_ids')
# Per-token outputs [N, L, ...], padded back to the full length after a bucketed batch:
# span logits with heads.MASK_LOGIT, tagging logits with 0. (The joint span head's beam
# outputs [N, K], [N, K, K] are not per-token.)
_SPAN_OUTPUTS = ('start_logits', 'end_logits')
_TOKEN_OUTPUTS = {'start_logits': heads.MASK_LOGIT, 'end_logits': heads.MASK_LOGIT,
                  'logits': 0.0}

def host_rows(batch: dict) -> dict:
  """This host's contiguous slice of a global batch (all of it on one host)."""
  n, p = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  size = len(next(iter(batch.values()))) // n
  return {k: v[p * size:(p + 1) * size] for k, v in batch.items()}


def to_host(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def predict(predict_fn, params, features: task_base.Features, batch_size: int, mesh,
            progress: bool = False, buckets=None) -> dict:
  """Head outputs for every feature, in order: name -> np.ndarray [N, ...].

  The last batch is zero-padded (weights 0) and the padding rows are dropped,
  so no example is lost and none is counted twice. progress: a tqdm bar over batches.
  buckets (task_base.bucket_lengths): rows run sorted by length in batches cut to their
  bucket's length; per-token outputs come back padded to the full length (start / end
  logits with the model's padding logit, tagging logits with 0), in the original order.
  """
  arrays = {k: features.arrays[k] for k in INPUT_KEYS}
  seq_len = arrays['input_ids'].shape[1]
  order = None
  if buckets is not None and len(buckets) > 1:
    order, batches = task_base.bucketed_eval_batches(arrays, batch_size, buckets)
  else:
    batches = task_base.eval_batches(arrays, batch_size)
  if progress and jax.process_index() == 0:
    batches = tqdm(batches, total=-(-len(features) // batch_size), unit='batch',
                   dynamic_ncols=True, mininterval=1.0)
  chunks: dict[str, list] = {}
  for batch in batches:
    row_weights = batch.pop('weights')
    out = to_host(predict_fn(params, sharding.global_batch(host_rows(batch), mesh)))
    real = row_weights > 0
    for k, v in out.items():
      v = np.asarray(v)[real]
      per_token = k in _SPAN_OUTPUTS or (k == 'logits' and v.ndim == 3)  # tagging: [N, L, T]
      if per_token and v.shape[1] < seq_len:
        pad = [(0, 0), (0, seq_len - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
        v = np.pad(v, pad, constant_values=_TOKEN_OUTPUTS[k])
      chunks.setdefault(k, []).append(v)
  out = {k: np.concatenate(v) for k, v in chunks.items()}
  if order is not None:
    unsorted = {}
    for k, v in out.items():
      unsorted[k] = np.empty_like(v)
      unsorted[k][order] = v
    out = unsorted
  return out


def task_predictions(task, outputs: dict):
  """Model outputs -> the `predictions` argument of task.compute_metrics."""
  if task.kind == 'classification':
    return outputs['logits']
  if task.kind == 'regression':
    return outputs['predictions']
  if task.kind == 'span':
    return outputs
  return outputs['logits']
