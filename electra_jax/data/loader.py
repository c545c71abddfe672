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

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
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
  try:
    meta = json.loads(path.read_text(encoding='utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is truncated or corrupt ({type(e).__name__}: {e}); delete '
                     f'{path.parent} to rebuild it') from None
  if not isinstance(meta, dict) or meta.get('format') != corpus.RECORD_FORMAT:
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
    try:
      reader = ArrayRecordReader(str(path))
      try:
        records = reader.read_all()
      finally:
        reader.close()
    except Exception as e:  # noqa: BLE001 -- riegeli / absl status errors of a cut or garbled file
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise ValueError(f'data shard {path} is truncated or corrupt ({first}); delete '
                       f'{Path(data_dir)} to rebuild it') from None
    for r, rec in enumerate(records):
      k = r * len(shards) + j
      arr = np.frombuffer(rec, '<i4')
      m = arr.size // 2
      if k >= n or m > s or arr.size != 2 * m:
        raise ValueError(f'{path}: record {r} does not fit metadata (num_examples={n}, max_seq_length={s}); '
                         f'delete {Path(data_dir)} to rebuild it')
      ids[k, :m] = arr[:m]
      seg[k, :m] = arr[m:]
      lengths[k] = m
    seen += len(records)
  if seen != n:
    raise ValueError(f'{data_dir}: shards hold {seen} examples but metadata.json says {n}; '
                     f'delete {data_dir} to rebuild it')
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
  if tokenizer is None:
    tokenizer, _ = load_tokenizer(data_config, cache_root)
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
  limits = dict(max_undecodable_fraction=float(data_config.get(
      'max_undecodable_fraction', corpus.MAX_UNDECODABLE_FRACTION)),
                max_truncated_fraction=float(data_config.get(
                    'max_truncated_fraction', corpus.MAX_TRUNCATED_FRACTION)))
  if not (data_dir / 'metadata.json').is_file():
    clean_stale_builds(cache_root)
    tmp = cache_root / f'.tmp-pretrain-{digest}-{uuid.uuid4().hex[:8]}'
    with _BuildLock(tmp):
      try:
        corpus.build_pretraining_data(
            data_config.source, tokenizer, tmp, max_seq_length=seq_len,
            num_shards=int(data_config.num_shards), num_workers=int(data_config.num_workers),
            seed=seed, eval_fraction=float(data_config.eval_fraction), tfds_data_dir=tfds_data_dir,
            cache_dir=str(cache_root), progress=process_index == 0, min_examples=global_batch_size,
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
