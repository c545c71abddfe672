"""Deterministic, resumable, per-host loader of packed pre-training examples.

`PretrainingLoader` reads the shards written by `corpus.py` once into packed arrays
(ids int32 [N, seq_len], segment ids int8 [N, seq_len], lengths int32 [N]) in build order,
then serves batches by fancy indexing, with no per-example Python work.

Order. The examples form one endless stream: epoch e is the permutation
`default_rng([seed, e]).permutation(N)`, epochs follow each other, and global batch k is
stream positions [k*G, (k+1)*G) (no example is dropped at epoch ends; a batch may straddle two
epochs). Host p of P takes rows [p*G/P, (p+1)*G/P) of every global batch, so the union over
hosts is the global batch, and the state is just the global batch counter: a run can resume
on a different number of hosts and still see the same global batches.

Eval mode (`repeat=False`): one pass in build order; the last batch is padded with zero rows
and every batch carries `weights` (float32 [B], 0 for padding rows).

`make_pretraining_data(...)` is the entry the training runtime calls: it builds (once, cached
atomically) or reuses the shards of a data config and returns the train/eval loaders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from electra_jax import runlog
from electra_jax.data import corpus
from electra_jax.data import tokenizer as tok_lib

_STATE_VERSION = 1


def read_metadata(data_dir: str | os.PathLike) -> dict:
  path = Path(data_dir) / 'metadata.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found; expected a directory built by electra_jax.data.corpus')
  meta = json.loads(path.read_text())
  if meta.get('format') != corpus.RECORD_FORMAT:
    raise ValueError(f'{path}: record format {meta.get("format")!r}, expected {corpus.RECORD_FORMAT!r}')
  return meta


def load_examples(data_dir: str | os.PathLike, meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads all shards into (ids int32 [N, S], segment_ids int8 [N, S], lengths int32 [N]).

  Rows are in build order (example k is record k // num_shards of shard k % num_shards), so
  the loader's order does not depend on how many shards the data was written to.
  """
  from array_record.python.array_record_module import ArrayRecordReader
  n, s, shards = meta['num_examples'], meta['max_seq_length'], meta['shards']
  ids = np.zeros((n, s), np.int32)
  seg = np.zeros((n, s), np.int8)
  lengths = np.zeros((n,), np.int32)
  seen = 0
  for j, name in enumerate(shards):
    path = Path(data_dir) / name
    if not path.is_file():
      raise FileNotFoundError(f'shard {path} listed in metadata.json is missing')
    reader = ArrayRecordReader(str(path))
    try:
      records = reader.read_all()
    finally:
      reader.close()
    for r, rec in enumerate(records):
      k = r * len(shards) + j
      arr = np.frombuffer(rec, '<i4')
      m = arr.size // 2
      if k >= n or m > s or arr.size != 2 * m:
        raise ValueError(f'{path}: record {r} does not fit metadata (num_examples={n}, max_seq_length={s})')
      ids[k, :m] = arr[:m]
      seg[k, :m] = arr[m:]
      lengths[k] = m
    seen += len(records)
  if seen != n:
    raise ValueError(f'{data_dir}: shards hold {seen} examples but metadata.json says {n}')
  return ids, seg, lengths


class PretrainingLoader:
  """Iterator of per-host batches: dicts of np.int32 [global_batch_size // process_count, seq_len].

  Keys: `input_ids`, `input_mask` (1 on real tokens), `segment_ids`; in eval mode also
  `weights` (float32 [B]). `process_index`/`process_count` default to jax.process_index() /
  jax.process_count(). `get_state()`/`set_state()` save and restore the position.
  """

  def __init__(self, data_dir: str | os.PathLike, global_batch_size: int, seq_len: int, seed: int,
               process_index: int | None = None, process_count: int | None = None,
               expected_vocab_hash: str | None = None, expected_vocab_size: int | None = None,
               repeat: bool = True):
    if process_index is None or process_count is None:
      import jax  # lazy: only for the defaults
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                       f'process_count={process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} is outside [0, {process_count})')
    self.data_dir = Path(data_dir)
    meta = read_metadata(self.data_dir)
    where = self.data_dir / 'metadata.json'
    for key, want in (('vocab_hash', expected_vocab_hash), ('vocab_size', expected_vocab_size),
                      ('max_seq_length', seq_len)):
      if want is not None and meta[key] != want:
        raise ValueError(f'{where}: {key} is {meta[key]!r} but the config expects {want!r}; '
                         'rebuild the data with the configured vocab and sequence length')
    if meta['num_examples'] < 1:
      raise ValueError(f'{where}: no examples')
    self.metadata = meta
    self.global_batch_size = global_batch_size
    self.seq_len = seq_len
    self.seed = seed
    self.repeat = repeat
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch_size = global_batch_size // process_count
    self._ids, self._seg, self._lengths = load_examples(self.data_dir, meta)
    self.num_examples = len(self._lengths)
    self._step = 0
    self._perms: dict[int, np.ndarray] = {}
    self._positions = np.arange(seq_len, dtype=np.int32)

  # ------------------------------------------------------------------ order
  def __len__(self) -> int:
    """Batches per pass: ceil(N / G) in eval mode; batches per epoch (rounded down) otherwise."""
    if self.repeat:
      return self.num_examples // self.global_batch_size
    return -(-self.num_examples // self.global_batch_size)

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      if len(self._perms) >= 2:  # a batch touches at most two epochs unless G > N
        self._perms.pop(min(self._perms))
      self._perms[epoch] = perm
    return perm

  def _host_positions(self, step: int) -> np.ndarray:
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    return np.arange(start, start + self.local_batch_size, dtype=np.int64)

  # ------------------------------------------------------------------ iteration
  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    pos = self._host_positions(self._step)
    n = self.num_examples
    if self.repeat:
      epochs = pos // n
      rows = np.empty_like(pos)
      for e in np.unique(epochs):
        sel = epochs == e
        rows[sel] = self._perm(int(e))[pos[sel] % n]
      batch = self._gather(rows)
    else:
      if self._step * self.global_batch_size >= n:
        raise StopIteration
      valid = pos < n
      batch = self._gather(np.where(valid, pos, 0))
      for k in ('input_ids', 'input_mask', 'segment_ids'):
        batch[k][~valid] = 0
      batch['weights'] = valid.astype(np.float32)
    self._step += 1
    return batch

  def _gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    lengths = self._lengths[rows]
    return {
        'input_ids': self._ids[rows],
        'input_mask': (self._positions[None, :] < lengths[:, None]).astype(np.int32),
        'segment_ids': self._seg[rows].astype(np.int32),
    }

  # ------------------------------------------------------------------ state
  def reset(self) -> None:
    """Back to the first batch (e.g. to run the same eval pass again)."""
    self._step = 0

  def get_state(self) -> dict[str, int]:
    """The position as plain ints (JSON-able); pass to set_state on a fresh loader to resume."""
    return {'version': _STATE_VERSION, 'step': self._step, 'seed': self.seed,
            'num_examples': self.num_examples, 'global_batch_size': self.global_batch_size,
            'repeat': int(self.repeat)}

  def set_state(self, state: dict[str, Any]) -> None:
    mine = self.get_state()
    for key in ('version', 'seed', 'num_examples', 'global_batch_size', 'repeat'):
      if int(state.get(key, -1)) != mine[key]:
        raise ValueError(f'loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}')
    step = int(state['step'])
    if step < 0:
      raise ValueError(f'loader state has step={step}; expected >= 0')
    self._step = step


# ---------------------------------------------------------------------- runtime entry


@dataclasses.dataclass
class PretrainingData:
  train: PretrainingLoader
  eval: PretrainingLoader | None
  tokenizer: tok_lib.WordPieceTokenizer
  data_dir: Path


_REQUIRED_KEYS = ('source', 'vocab', 'lowercase', 'eval_fraction', 'num_shards', 'num_workers')


def _source_fingerprint(source: str, tfds_data_dir: str, cache_root: Path) -> Any:
  """What identifies the input text: file paths + sizes + mtimes, the builtin corpus, or TFDS."""
  if source.startswith('tfds:'):
    return [source, tfds_data_dir]
  if source.startswith('builtin:'):
    from electra_jax.data import builtin_corpus
    files = builtin_corpus.write_builtin_corpus(cache_root / 'python_docs')
    done = json.loads((files[0].parent / 'done.json').read_text())
    return [source, done['sha256']]
  files = tok_lib.expand_inputs([s for s in source.split(',') if s])
  return [source] + [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]


def make_pretraining_data(data_config, seq_len: int, global_batch_size: int, eval_batch_size: int,
                          seed: int, cache_root: str | os.PathLike | None) -> PretrainingData:
  """Builds (once) or reuses the shards for `data_config` and returns the loaders.

  data_config keys: source, vocab ('builtin' or a vocab.txt path), lowercase, eval_fraction,
  num_shards, num_workers, and optionally tfds_data_dir ('' = TFDS's default). The shards live
  under cache_root/pretrain-<hash of (source fingerprint, vocab hash, lowercase, seq_len,
  seed, eval_fraction)>; num_shards/num_workers are not in the key since they do not change
  the examples or their order. A build goes to a temporary directory that is renamed into
  place when complete, so an interrupted build never leaves a half cache. Each host builds
  a missing cache itself (the rename makes concurrent builds safe). cache_root None means
  $ELECTRA_JAX_CACHE or ~/.cache/electra_jax.
  """
  missing = [k for k in _REQUIRED_KEYS if k not in data_config]
  if missing:
    raise ValueError(f'data config lacks keys {missing}; expected {list(_REQUIRED_KEYS)}')
  for k in ('source', 'vocab'):
    if not str(data_config[k]).strip():
      raise ValueError(f"data.{k} is empty; set --config.data.{k} (e.g. 'builtin:python-docs' / "
                       "'builtin', a file glob, or a vocab.txt path)")
  cache_root = runlog.cache_dir(cache_root)
  cache_root.mkdir(parents=True, exist_ok=True)
  tfds_data_dir = str(data_config['tfds_data_dir']) if 'tfds_data_dir' in data_config else ''
  if data_config.vocab == 'builtin':
    from electra_jax.data import builtin_corpus
    vocab_path = builtin_corpus.builtin_vocab(cache_root)
  else:
    vocab_path = data_config.vocab
  tokenizer = tok_lib.WordPieceTokenizer.from_vocab(vocab_path, lowercase=bool(data_config.lowercase))
  key = {
      'format': corpus.RECORD_FORMAT,
      'source': _source_fingerprint(data_config.source, tfds_data_dir, cache_root),
      'vocab_hash': tokenizer.vocab_hash, 'lowercase': tokenizer.lowercase, 'seq_len': seq_len,
      'seed': seed, 'eval_fraction': float(data_config.eval_fraction),
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  data_dir = cache_root / f'pretrain-{digest}'
  import jax
  process_index, process_count = jax.process_index(), jax.process_count()
  if not (data_dir / 'metadata.json').is_file():
    tmp = cache_root / f'.tmp-pretrain-{digest}-{uuid.uuid4().hex[:8]}'
    try:
      corpus.build_pretraining_data(
          data_config.source, tokenizer, tmp, max_seq_length=seq_len,
          num_shards=int(data_config.num_shards), num_workers=int(data_config.num_workers),
          seed=seed, eval_fraction=float(data_config.eval_fraction), tfds_data_dir=tfds_data_dir,
          cache_dir=str(cache_root), progress=process_index == 0)
      (tmp / 'cache_key.json').write_text(json.dumps(key, indent=1, sort_keys=True) + '\n')
      try:
        os.rename(tmp, data_dir)
      except OSError:
        if not (data_dir / 'metadata.json').is_file():
          raise
        # Another process finished the same build first; its result is identical.
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  common = dict(seq_len=seq_len, seed=seed, process_index=process_index, process_count=process_count,
                expected_vocab_hash=tokenizer.vocab_hash, expected_vocab_size=tokenizer.vocab_size)
  train = PretrainingLoader(data_dir, global_batch_size, repeat=True, **common)
  eval_loader = None
  eval_dir = data_dir / 'eval'
  if float(data_config.eval_fraction) > 0 and (eval_dir / 'metadata.json').is_file():
    if read_metadata(eval_dir)['num_examples'] > 0:
      eval_loader = PretrainingLoader(eval_dir, eval_batch_size, repeat=False, **common)
    else:
      print(f'warning: eval_fraction={data_config.eval_fraction} held out no example of '
            f'{data_config.source}; no eval loader', file=sys.stderr)
  return PretrainingData(train=train, eval=eval_loader, tokenizer=tokenizer, data_dir=data_dir)
