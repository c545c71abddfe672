"""Deterministic, resumable, per-host loader of packed pre-training examples, on Grain.

`PretrainingLoader` serves batches straight from the array_record shards written by
`corpus.py`: a `grain.MapDataset` over `ShardedRecords` (random access to the shards; only
their chunk indexes are held in memory), shuffled, batched and sliced per host, with a few
background threads that read and decode the next batches while the current step runs. Memory
per host is O(prefetched batches + shard indexes) and start-up reads only the shard footers,
so neither grows with the corpus beyond the index (64 bytes per 256 examples).

Order. Build order is input order: the shards hold contiguous runs of the input's examples
(see shards.py; older builds held example k as record k // S of shard k % S), so the order does
not depend on the number of shards. The examples form one endless stream: epoch e is Grain's
index_shuffle permutation of [0, N) under seed `shuffle_seed(seed) + e` (a Feistel-type
bijection evaluated per index: no O(N) permutation array), epochs follow each other, and global
batch k is stream positions [k*G, (k+1)*G) (no example is dropped at epoch ends; a batch may
straddle two epochs). Host p of P takes rows [p*G/P, (p+1)*G/P) of every global batch, so the
union over hosts is the global batch, and the state is just the global batch counter (Grain's
`next_index` of the host's batch dataset): a run can resume on a different number of hosts and
still see the same global batches.

Eval mode (`repeat=False`): one pass in build order; the last global batch is padded with zero
rows and every batch carries `weights` (float32 [B], 0 for padding rows).

`make_pretraining_data(...)` is the entry the training runtime calls: it builds (once, cached
atomically) or reuses the shards of a data config and returns the train/eval loaders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from electra_jax import runlog
from electra_jax.data import corpus
from electra_jax.data import tokenizer as tok_lib

# 2: Grain's index_shuffle order. 1 (the in-memory loader before it) drew each epoch with
# numpy's permutation; its states still restore (the step count), in the new order.
_STATE_VERSION = 2
_READER_OPTIONS = 'readahead_buffer_size:0'  # random access: no read-ahead past a chunk
PREFETCH_THREADS = 2  # batches read and decoded in parallel, ahead of the step
PREFETCH_BATCHES = 4


def read_metadata(data_dir: str | os.PathLike) -> dict:
  path = Path(data_dir) / 'metadata.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found; expected a directory built by electra_jax.data.corpus')
  try:
    meta = json.loads(path.read_text(encoding='utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is truncated or corrupt ({type(e).__name__}: {e}); delete '
                     f'{path.parent} to rebuild it') from None
  if not isinstance(meta, dict) or meta.get('format') != corpus.RECORD_FORMAT:
    raise ValueError(f'{path}: record format {meta.get("format")!r}, expected {corpus.RECORD_FORMAT!r}')
  return meta


def _corrupt(path: Path, data_dir: Path, e: Exception) -> ValueError:
  first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
  return ValueError(f'data shard {path} is truncated or corrupt ({first}); delete {data_dir} to '
                    'rebuild it')


class ShardedRecords:
  """A Grain random-access data source: example k of a split, in build order, as record bytes.

  Build order is the shards' records one shard after the other (`shard_examples` in the
  metadata; builds from before resumable builds wrote example k as record k // S of shard
  k % S, and read so). The readers open every shard at construction (reading only its
  footer, the chunk index) and check the record counts against metadata.json; records
  are read on demand, those of one shard in one call. Picklable (the readers reopen lazily),
  so Grain worker processes can use it too.
  """

  def __init__(self, data_dir: str | os.PathLike, meta: dict):
    self.data_dir = Path(data_dir)
    self.paths = [self.data_dir / name for name in meta['shards']]
    self.num_examples = n = int(meta['num_examples'])
    s = len(self.paths)
    self.round_robin = 'shard_examples' not in meta
    self.counts = ([len(range(j, n, s)) for j in range(s)] if self.round_robin
                   else [int(c) for c in meta['shard_examples']])
    if sum(self.counts) != n:
      raise ValueError(f'{self.data_dir / "metadata.json"}: shard_examples add up to '
                       f'{sum(self.counts)}, not num_examples={n}; delete {self.data_dir} to '
                       'rebuild it')
    self._starts = np.cumsum([0] + self.counts)
    self._lock = threading.Lock()
    self._readers = self._open()

  def _open(self) -> list:
    from array_record.python.array_record_module import ArrayRecordReader
    readers = []
    for path, want in zip(self.paths, self.counts):
      if not path.is_file():
        raise FileNotFoundError(f'shard {path} listed in metadata.json is missing')
      try:
        reader = ArrayRecordReader(str(path), _READER_OPTIONS, file_reader_buffer_size=32768)
        count = reader.num_records()
      except Exception as e:  # noqa: BLE001 -- riegeli / absl status errors of a cut or garbled file
        raise _corrupt(path, self.data_dir, e) from None
      if count != want:
        raise _corrupt(path, self.data_dir, ValueError(
            f'{count} records, metadata.json says {want}'))
      readers.append(reader)
    return readers

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, k) -> bytes:
    return self.read([int(k)])[0]

  def read(self, keys: Sequence[int]) -> list[bytes]:
    """The records of examples `keys` (build order), in that order."""
    if self._readers is None:
      with self._lock:
        if self._readers is None:
          self._readers = self._open()
    keys = np.asarray(keys, np.int64)
    if keys.size and (keys.min() < 0 or keys.max() >= self.num_examples):
      raise IndexError(f'example keys outside [0, {self.num_examples})')
    if self.round_robin:
      pos, shard = np.divmod(keys, len(self.paths))
    else:
      shard = np.searchsorted(self._starts, keys, side='right') - 1
      pos = keys - self._starts[shard]
    out: list[bytes] = [b''] * len(keys)
    for j in np.unique(shard).tolist():
      sel = np.flatnonzero(shard == j)
      try:
        records = self._readers[j].read(pos[sel].tolist())
      except Exception as e:  # noqa: BLE001
        raise _corrupt(self.paths[j], self.data_dir, e) from None
      for i, rec in zip(sel.tolist(), records):
        out[i] = rec
    return out

  _getitems = read  # Grain's batched-read protocol

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_readers', '_lock')}

  def __setstate__(self, state):
    self.__dict__.update(state, _readers=None, _lock=threading.Lock())

  def close(self) -> None:
    for r in self._readers or ():
      r.close()
    self._readers = None


def decode_records(records: Sequence[bytes], seq_len: int, where: Path
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Records -> (ids int32 [B, seq_len], segment_ids int32 [B, seq_len], lengths int32 [B]).

  A record is int32le concat(input_ids, segment_ids) of one example, unpadded; b'' (eval
  padding) decodes to an all-zero row of length 0.
  """
  nbytes = np.fromiter(map(len, records), np.int64, len(records))
  lengths = nbytes // 8
  if (nbytes % 8).any() or (lengths > seq_len).any():
    raise ValueError(f'{where}: a record does not fit metadata (max_seq_length={seq_len}); '
                     f'delete {where} to rebuild it')
  flat = np.frombuffer(b''.join(records), '<i4')
  starts = np.cumsum(2 * lengths) - 2 * lengths
  cols = np.arange(seq_len)
  real = cols[None, :] < lengths[:, None]
  idx = np.where(real, starts[:, None] + cols[None, :], 0)
  if not flat.size:
    flat = np.zeros(1, '<i4')
  ids = np.where(real, flat[idx], 0).astype(np.int32)
  seg = np.where(real, flat[np.where(real, idx + lengths[:, None], 0)], 0).astype(np.int32)
  return ids, seg, lengths.astype(np.int32)


def load_examples(data_dir: str | os.PathLike, meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads a whole split into (ids int32 [N, S], segment_ids int8 [N, S], lengths int32 [N]).

  Rows are in build order. For inspecting small builds and for tests: training never holds
  the corpus in memory (see PretrainingLoader).
  """
  source = ShardedRecords(data_dir, meta)
  try:
    ids, seg, lengths = decode_records(source.read(range(len(source))), meta['max_seq_length'],
                                       Path(data_dir))
  finally:
    source.close()
  return ids, seg.astype(np.int8), lengths


def shuffle_seed(seed: int) -> int:
  """The 32-bit index_shuffle seed of a run seed (hashed: seeds s and s + 1 would otherwise
  share epochs, as Grain seeds epoch e with seed + e)."""
  return int.from_bytes(hashlib.blake2b(f'electra_jax.loader:{seed}'.encode(),
                                        digest_size=4).digest(), 'little')


class PretrainingLoader:
  """Iterator of per-host batches: dicts of np.int32 [global_batch_size // process_count, seq_len].

  Keys: `input_ids`, `input_mask` (1 on real tokens), `segment_ids`; in eval mode also
  `weights` (float32 [B]). `process_index`/`process_count` default to jax.process_index() /
  jax.process_count(). `get_state()`/`set_state()` save and restore the position.
  `num_threads`/`prefetch`: Grain's reader threads and the batches they keep ready (0 reads
  each batch in the caller's thread, when asked for).
  """

  def __init__(self, data_dir: str | os.PathLike, global_batch_size: int, seq_len: int, seed: int,
               process_index: int | None = None, process_count: int | None = None,
               expected_vocab_hash: str | None = None, expected_vocab_size: int | None = None,
               repeat: bool = True, num_threads: int = PREFETCH_THREADS,
               prefetch: int = PREFETCH_BATCHES):
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
    self.num_examples = int(meta['num_examples'])
    self.source = ShardedRecords(self.data_dir, meta)
    self._read_options = (num_threads, prefetch)
    self._dataset = self._host_batches()
    self._iter = None
    self._step = 0
    self._all = None

  def _host_batches(self):
    """The grain.MapDataset whose element k is this host's part of global batch k.

    Grain orders example *indices* (shuffle per epoch, repeat, batch, take this host's
    batches); each batch of indices is then read with one call per shard and decoded.
    """
    import grain  # pylint: disable=g-import-not-at-top
    n = self.num_examples
    if self.repeat:
      keys = grain.MapDataset.range(n).shuffle(seed=shuffle_seed(self.seed)).repeat()
    else:
      keys = grain.MapDataset.range(n + -n % self.global_batch_size)  # keys >= n: padding rows
    batches = keys.batch(self.local_batch_size, batch_fn=np.asarray)
    return batches.slice(slice(self.process_index, None, self.process_count)).map(self._read)

  def _read(self, keys: np.ndarray) -> dict[str, np.ndarray]:
    real = keys < self.num_examples
    records = iter(self.source.read(keys[real]))
    records = [next(records) if r else b'' for r in real.tolist()]
    ids, seg, lengths = decode_records(records, self.seq_len, self.data_dir)
    batch = {'input_ids': ids,
             'input_mask': (np.arange(self.seq_len)[None, :] < lengths[:, None]).astype(np.int32),
             'segment_ids': seg}
    if not self.repeat:
      batch['weights'] = real.astype(np.float32)
    return batch

  # ------------------------------------------------------------------ order
  def __len__(self) -> int:
    """Batches per pass: ceil(N / G) in eval mode; batches per epoch (rounded down) otherwise."""
    if self.repeat:
      return self.num_examples // self.global_batch_size
    return -(-self.num_examples // self.global_batch_size)

  def _host_positions(self, step: int) -> np.ndarray:
    """Stream positions of this host's rows of global batch `step`."""
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    return np.arange(start, start + self.local_batch_size, dtype=np.int64)

  @property
  def _ids(self) -> np.ndarray:
    """Every example's ids in build order (reads the whole split: for tests of small data)."""
    if self._all is None:
      self._all = load_examples(self.data_dir, self.metadata)
    return self._all[0]

  @property
  def _seg(self) -> np.ndarray:
    self._ids  # noqa: B018 -- loads self._all
    return self._all[1]

  # ------------------------------------------------------------------ iteration
  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iter is None:
      import grain  # pylint: disable=g-import-not-at-top
      threads, prefetch = self._read_options
      self._iter = iter(self._dataset.to_iter_dataset(
          grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))
      self._iter.set_state({'next_index': self._step})
    batch = next(self._iter)  # StopIteration at the end of an eval pass
    self._step += 1
    return batch

  # ------------------------------------------------------------------ state
  def _restart(self, step: int) -> None:
    if self._iter is not None:
      with contextlib.suppress(Exception):
        self._iter.close()
    self._iter = None
    self._step = step

  def reset(self) -> None:
    """Back to the first batch (e.g. to run the same eval pass again)."""
    self._restart(0)

  def get_state(self) -> dict[str, int]:
    """The position as plain ints (JSON-able); pass to set_state on a fresh loader to resume.

    `step` is the global batch counter, Grain's `next_index` of every host's batch dataset.
    """
    return {'version': _STATE_VERSION, 'step': self._step, 'seed': self.seed,
            'num_examples': self.num_examples, 'global_batch_size': self.global_batch_size,
            'repeat': int(self.repeat)}

  def set_state(self, state: dict[str, Any]) -> None:
    mine = self.get_state()
    version = int(state.get('version', -1))
    if version not in (1, _STATE_VERSION):
      raise ValueError(f'loader state has version={state.get("version")!r} but this loader has '
                       f'{_STATE_VERSION}')
    for key in ('seed', 'num_examples', 'global_batch_size', 'repeat'):
      if int(state.get(key, -1)) != mine[key]:
        raise ValueError(f'loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}')
    step = int(state['step'])
    if step < 0:
      raise ValueError(f'loader state has step={step}; expected >= 0')
    if version == 1:
      print(f'note: the checkpoint\'s data position (step {step}) was saved by the in-memory loader '
            'before Grain; the run goes on from there in the Grain loader\'s order (other '
            'permutations than before)', file=sys.stderr)
    self._restart(step)


# ---------------------------------------------------------------------- runtime entry

STALE_UNLOCKED_BUILD_S = 3600  # a .tmp-pretrain-* without a lock file (older versions) is stale after


class _BuildLock:
  """Holds an flock on `<tmp>.lock` while a cache build writes `tmp`; see clean_stale_builds."""

  def __init__(self, tmp: Path):
    self.path = tmp.with_name(tmp.name + '.lock')
    self._fd = None

  def __enter__(self):
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(self._fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    try:
      self.path.unlink()
    except OSError:
      pass
    os.close(self._fd)


def clean_stale_builds(cache_root: Path) -> list[Path]:
  """Removes the `.tmp-pretrain-*` folders of builds that were killed; returns them.

  A live build holds an flock on its `.lock` file next to the folder (released by the kernel
  when the process dies), so only dead builds' folders are removed, even when several hosts
  or runs share the cache. A folder without a lock file (an older version's) goes once it is
  an hour old.
  """
  removed = []
  for tmp in sorted(Path(cache_root).glob('.tmp-pretrain-*')):
    if tmp.name.endswith('.lock'):
      if not tmp.with_suffix('').exists():  # a build killed before it made its folder
        with contextlib.suppress(OSError):
          fd = os.open(tmp, os.O_RDWR)
          try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink()
          finally:
            os.close(fd)
      continue
    if not tmp.is_dir():
      continue
    lock = tmp.with_name(tmp.name + '.lock')
    try:
      fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
      try:
        stale = time.time() - tmp.stat().st_mtime > STALE_UNLOCKED_BUILD_S
      except FileNotFoundError:
        continue
      if stale:
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
      continue
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        continue  # a build in progress
      shutil.rmtree(tmp, ignore_errors=True)
      removed.append(tmp)
      try:
        lock.unlink()
      except OSError:
        pass
    finally:
      os.close(fd)
  if removed:
    print(f'removed {len(removed)} folder(s) of killed data builds: '
          + ', '.join(p.name for p in removed), file=sys.stderr)
  return removed



@dataclasses.dataclass
class PretrainingData:
  train: PretrainingLoader
  eval: PretrainingLoader | None
  tokenizer: tok_lib.WordPieceTokenizer
  data_dir: Path


SHARDS_PREFIX = 'shards:'  # data.source='shards:DIR': a directory built by electra_jax.data.corpus
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


def load_tokenizer(data_config, cache_root: str | os.PathLike | None = None
                   ) -> tuple[tok_lib.WordPieceTokenizer, Path]:
  """(tokenizer, vocab file) of a data config: data.vocab is a vocab.txt path or 'builtin'."""
  if not str(data_config.vocab).strip():
    raise ValueError("data.vocab is empty; set --config.data.vocab (a vocab.txt path, or "
                     "'builtin')")
  if data_config.vocab == 'builtin':
    from electra_jax.data import builtin_corpus
    cache_root = runlog.cache_dir(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    vocab_path = builtin_corpus.builtin_vocab(cache_root)
  else:
    vocab_path = Path(data_config.vocab).expanduser()
  tokenizer = tok_lib.WordPieceTokenizer.from_vocab(vocab_path, lowercase=bool(data_config.lowercase))
  return tokenizer, Path(vocab_path)


def make_pretraining_data(data_config, seq_len: int, global_batch_size: int, eval_batch_size: int,
                          seed: int, cache_root: str | os.PathLike | None,
                          tokenizer: tok_lib.WordPieceTokenizer | None = None) -> PretrainingData:
  """Builds (once) or reuses the shards for `data_config` and returns the loaders.

  data_config keys: source, vocab ('builtin' or a vocab.txt path), lowercase, eval_fraction,
  num_shards, num_workers, and optionally tfds_data_dir ('' = TFDS's default). The shards live
  under cache_root/pretrain-<hash of (source fingerprint, vocab hash, lowercase, seq_len,
  seed, eval_fraction)>; num_shards/num_workers are not in the key since they do not change
  the examples or their order. A build goes to a temporary directory that is renamed into
  place when complete, so an interrupted build never leaves a half cache. Each host builds
  a missing cache itself (the rename makes concurrent builds safe). cache_root None means
  $ELECTRA_JAX_CACHE or ~/.cache/electra_jax. source 'shards:DIR' reads a directory built
  beforehand by `python -m electra_jax.data.corpus` (a corpus too large to build per run),
  and DIR/eval when eval_fraction > 0.
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
  if tokenizer is None:
    tokenizer, _ = load_tokenizer(data_config, cache_root)
  limits = dict(max_undecodable_fraction=float(data_config.get(
      'max_undecodable_fraction', corpus.MAX_UNDECODABLE_FRACTION)),
                max_truncated_fraction=float(data_config.get(
                    'max_truncated_fraction', corpus.MAX_TRUNCATED_FRACTION)))
  import jax
  process_index, process_count = jax.process_index(), jax.process_count()
  if str(data_config.source).startswith(SHARDS_PREFIX):
    data_dir = Path(data_config.source[len(SHARDS_PREFIX):]).expanduser()
    if not (data_dir / 'metadata.json').is_file():
      raise FileNotFoundError(
          f'{data_dir / "metadata.json"} not found: build the shards first (python -m '
          f'electra_jax.data.corpus --output={data_dir} ..., then --merge for a split build)')
  else:
    data_dir = _cached_build(data_config, tokenizer, seq_len, seed, global_batch_size,
                             cache_root, tfds_data_dir, limits, progress=process_index == 0)
  meta = read_metadata(data_dir)
  # A cache built earlier (under other limits) is held to this run's limits too.
  corpus.check_quality(meta, f'{data_config.source} (cache {data_dir})',
                            names=corpus.LIMIT_KEYS[:2], **limits)
  if meta['num_examples'] < global_batch_size:
    raise ValueError(f'{data_config.source} gave {meta["num_examples"]} training example(s), fewer '
                     f'than one global batch (train.batch_size={global_batch_size}); add text, or '
                     'lower train.batch_size')
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


def _cached_build(data_config, tokenizer, seq_len, seed, global_batch_size, cache_root,
                  tfds_data_dir, limits, progress) -> Path:
  """The cache directory of a data config, built first when missing."""
  key = {
      'format': corpus.RECORD_FORMAT,
      'source': _source_fingerprint(data_config.source, tfds_data_dir, cache_root),
      'vocab_hash': tokenizer.vocab_hash, 'lowercase': tokenizer.lowercase, 'seq_len': seq_len,
      'seed': seed, 'eval_fraction': float(data_config.eval_fraction),
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  data_dir = cache_root / f'pretrain-{digest}'
  if not (data_dir / 'metadata.json').is_file():
    clean_stale_builds(cache_root)
    tmp = cache_root / f'.tmp-pretrain-{digest}-{uuid.uuid4().hex[:8]}'
    with _BuildLock(tmp):
      try:
        corpus.build_pretraining_data(
            data_config.source, tokenizer, tmp, max_seq_length=seq_len,
            num_shards=int(data_config.num_shards), num_workers=int(data_config.num_workers),
            seed=seed, eval_fraction=float(data_config.eval_fraction), tfds_data_dir=tfds_data_dir,
            cache_dir=str(cache_root), progress=progress, min_examples=global_batch_size,
            limit_names=corpus.LIMIT_KEYS, **limits)
        (tmp / 'cache_key.json').write_text(json.dumps(key, indent=1, sort_keys=True) + '\n')
        try:
          os.rename(tmp, data_dir)
        except OSError:
          if not (data_dir / 'metadata.json').is_file():
            raise
          # Another process finished the same build first; its result is identical.
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
  return data_dir
