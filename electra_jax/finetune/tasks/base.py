"""Shared pieces of the fine-tuning tasks: the tokenizer protocol, the featurized-data
container, BERT-style pair truncation/packing and the train/eval batch iterators.

Everything here is pure Python/NumPy and emits fixed-shape int32/float32 arrays.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
  """What the tasks need from a tokenizer (electra_jax.data.tokenizer.WordPieceTokenizer).

  `encode(text)` returns sub-token ids without special tokens; an optional
  `encode_batch(texts)` is used for speed. SQuAD post-processing can also use sub-token
  strings (`tokens` list indexed by id, or `id_to_token(i)`, or `convert_ids_to_tokens`)
  to cut answers inside a whitespace word; without them answers snap to whole words.
  An optional `lowercase` attribute (default True) guides that answer projection.
  """
  cls_id: int
  sep_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]:
    ...


@dataclasses.dataclass
class Features:
  """Featurized data of one split.

  arrays: name -> np.ndarray with leading dim N (number of features = model inputs), e.g.
    input_ids/input_mask/segment_ids [N, max_seq_length] int32, label [N] int32|float32,
    example_index [N] int32 (index into `examples`).
  examples: the examples that were featurized (SQuAD: one example may give several features).
  num_truncated: how many examples (or SQuAD questions) lost tokens to max_seq_length.
  meta: optional per-feature Python metadata needed by post-processing (SQuAD, chunking).
  """
  arrays: dict[str, np.ndarray]
  examples: list
  num_truncated: int = 0
  meta: list | None = None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))


def encode_many(tokenizer: Tokenizer, texts) -> dict[str, list[int]]:
  """text -> ids for the distinct `texts`, with the tokenizer's `encode_batch` when it has
  one (multi-threaded), else `encode` one by one."""
  unique = list(dict.fromkeys(texts))
  if hasattr(tokenizer, 'encode_batch'):
    return dict(zip(unique, tokenizer.encode_batch(unique)))
  return {t: tokenizer.encode(t) for t in unique}


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> bool:
  """Truncates in place, one token at a time from the longer list (ties: from b), as BERT's
  and ELECTRA's `_truncate_seq_pair`. Returns whether anything was removed."""
  truncated = False
  while len(tokens_a) + len(tokens_b) > max_length:
    truncated = True
    if len(tokens_a) > len(tokens_b):
      tokens_a.pop()
    else:
      tokens_b.pop()
  return truncated


def pack_pair(ids_a: Sequence[int], ids_b: Sequence[int] | None, tokenizer: Tokenizer,
              max_seq_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
  """[CLS] a [SEP] (b [SEP]) padded to max_seq_length with pad_id.

  Returns (input_ids, input_mask, segment_ids), each [max_seq_length] int32, and whether the
  pair was truncated (single: a keeps max_seq_length-2 tokens; pair: truncate_seq_pair to -3).
  """
  a = list(ids_a)
  b = list(ids_b) if ids_b is not None else None
  if b is None:
    truncated = len(a) > max_seq_length - 2
    a = a[:max_seq_length - 2]
    ids = [tokenizer.cls_id] + a + [tokenizer.sep_id]
    seg = [0] * len(ids)
  else:
    truncated = truncate_seq_pair(a, b, max_seq_length - 3)
    ids = [tokenizer.cls_id] + a + [tokenizer.sep_id] + b + [tokenizer.sep_id]
    seg = [0] * (len(a) + 2) + [1] * (len(b) + 1)
  return (*pad_row(ids, seg, tokenizer.pad_id, max_seq_length), truncated)


def pad_row(ids: Sequence[int], segment_ids: Sequence[int], pad_id: int, max_seq_length: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads one packed sequence: (input_ids, input_mask, segment_ids), each [max_seq_length]."""
  n = len(ids)
  if n > max_seq_length:
    raise ValueError(f'packed sequence has {n} tokens, expected at most {max_seq_length}')
  input_ids = np.full(max_seq_length, pad_id, np.int32)
  input_ids[:n] = ids
  input_mask = np.zeros(max_seq_length, np.int32)
  input_mask[:n] = 1
  seg = np.zeros(max_seq_length, np.int32)
  seg[:n] = segment_ids
  return input_ids, input_mask, seg


def stack_rows(rows: Sequence[Mapping[str, Any]], dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """List of per-feature dicts -> dict of stacked arrays with the given dtypes."""
  if not rows:
    raise ValueError('no features to stack (empty split?)')
  return {k: np.asarray([r[k] for r in rows], dtype=dtypes[k]) for k in dtypes}


def log_truncation(task_name: str, num_truncated: int, total: int, max_seq_length: int) -> None:
  log.info('%s: %d of %d examples truncated to max_seq_length=%d', task_name, num_truncated,
           total, max_seq_length)


# --------------------------------------------------------------------------- batching


def eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields every row in order in batches of exactly `batch_size`.

  The last batch is padded with zero rows; each batch has `weights` [batch_size] float32,
  1.0 for real rows and 0.0 for padding, so no example is ever dropped and padding never
  counts. Concatenate the outputs and keep the first N rows (or rows with weight 1).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  n = _num_rows(arrays)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    batch = {}
    for k, v in arrays.items():
      chunk = v[start:stop]
      if stop - start < batch_size:
        pad = np.zeros((batch_size - (stop - start),) + v.shape[1:], v.dtype)
        chunk = np.concatenate([chunk, pad])
      batch[k] = chunk
    w = np.zeros(batch_size, np.float32)
    w[:stop - start] = 1.0
    batch['weights'] = w
    yield batch


def bucket_lengths(seq_len: int, num_buckets: int) -> tuple[int, ...]:
  """`num_buckets` evenly spaced sequence lengths up to seq_len, multiples of 8 (but the
  last, seq_len itself); (seq_len,) when num_buckets <= 1 (no bucketing)."""
  if num_buckets <= 1:
    return (seq_len,)
  up8 = lambda x: -(-x // 8) * 8  # noqa: E731
  return tuple(sorted({min(seq_len, up8(-(-seq_len * k // num_buckets)))
                       for k in range(1, num_buckets + 1)}))


def _bucket_index(arrays: Mapping[str, np.ndarray], buckets: Sequence[int]) -> np.ndarray:
  """Per row: the index of the shortest bucket length holding its tokens (input_mask)."""
  lengths = np.asarray(arrays['input_mask']).sum(1)
  return np.searchsorted(np.asarray(buckets), lengths, side='left')


def _cut(batch: Mapping[str, np.ndarray], seq_len: int, length: int) -> dict[str, np.ndarray]:
  """Per-token arrays ([B, seq_len, ...]) cut to `length` columns; others unchanged."""
  return {k: v[:, :length] if v.ndim >= 2 and v.shape[1] == seq_len else v
          for k, v in batch.items()}


def _bucketed_train_batches(arrays, batch_size, seed, epoch, buckets):
  """Batches of rows of similar length, each cut to its bucket's length.

  The epoch's permutation (seeded by (seed, epoch), as without buckets) decides which
  n % batch_size rows sit out; the rest are grouped by bucket in permutation order and
  cut into batches (a batch straddling two buckets takes the longer length), and the
  batches are served in an order seeded by (seed, epoch) too.
  """
  n = _num_rows(arrays)
  seq_len = arrays['input_ids'].shape[1]
  rng = np.random.default_rng([seed, epoch])
  num_batches = n // batch_size
  perm = rng.permutation(n)[:num_batches * batch_size]
  bucket = _bucket_index(arrays, buckets)
  grouped = perm[np.argsort(bucket[perm], kind='stable')]
  for j in rng.permutation(num_batches):
    rows = grouped[j * batch_size:(j + 1) * batch_size]
    batch = {k: v[rows] for k, v in arrays.items()}
    batch['weights'] = np.ones(batch_size, np.float32)
    yield _cut(batch, seq_len, buckets[int(bucket[rows].max())])


def train_batches(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, epoch: int,
                  drop_remainder: bool = True, buckets: Sequence[int] | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled batches; the order depends only on (seed, epoch).

  With drop_remainder the last partial batch is skipped (fixed shapes, as the official
  code); otherwise it is zero-padded like eval_batches. Every batch carries `weights`.
  buckets (bucket_lengths; several): length-bucketed batches, each cut to the shortest
  bucket length holding its rows' tokens (see _bucketed_train_batches; drop_remainder only).
  """
  if buckets is not None and len(buckets) > 1:
    if not drop_remainder:
      raise ValueError('length-bucketed training batches need drop_remainder=True')
    yield from _bucketed_train_batches(arrays, batch_size, seed, epoch, buckets)
    return
  n = _num_rows(arrays)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  shuffled = {k: v[perm] for k, v in arrays.items()}
  for batch in eval_batches(shuffled, batch_size):
    if drop_remainder and batch['weights'][-1] == 0:
      return
    yield batch


def bucketed_eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int,
                          buckets: Sequence[int]) -> tuple[np.ndarray, Iterator[dict]]:
  """(order, batches): eval_batches over the rows sorted by length (stable), each batch cut
  to the shortest bucket length holding its rows. Row i of the concatenated real outputs
  is row order[i] of `arrays`."""
  seq_len = arrays['input_ids'].shape[1]
  bucket = _bucket_index(arrays, buckets)
  order = np.argsort(bucket, kind='stable')
  sorted_arrays = {k: v[order] for k, v in arrays.items()}

  def batches():
    for start, batch in zip(range(0, len(order), batch_size),
                            eval_batches(sorted_arrays, batch_size)):
      length = buckets[int(bucket[order[start:start + batch_size]].max())]
      yield _cut(batch, seq_len, length)
  return order, batches()


def num_train_steps(num_features: int, batch_size: int, epochs: float,
                    drop_remainder: bool = True) -> int:
  """Optimizer steps that train_batches yields over `epochs` epochs (for LR schedules)."""
  per_epoch = num_features // batch_size if drop_remainder else -(-num_features // batch_size)
  return int(per_epoch * epochs)


def _num_rows(arrays: Mapping[str, np.ndarray]) -> int:
  lengths = {k: len(v) for k, v in arrays.items()}
  if not lengths or len(set(lengths.values())) != 1:
    raise ValueError(f'expected arrays with one common leading dim, got {lengths}')
  return next(iter(lengths.values()))
