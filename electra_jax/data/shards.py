"""The pre-training builder's output: shards written atomically, resumable builds, the merge.

Layout of a build directory (see corpus.py for what a record is):
  train-XXXXX-of-NNNNN.array_record   shard j: the examples of work units [U*j/N, U*(j+1)/N)
  eval/eval-XXXXX-of-NNNNN.array_record   the held-out examples of the same units (eval > 0)
  metadata.json, eval/metadata.json   written last, by the merge: counts, per-shard example
                                      counts (`shard_examples`) and SHA-256 (`shard_sha256`)
  build_stats.json                    timings (not reproducible, so apart from metadata.json)
  .build/settings.json                while building: what is being built (a rerun must match)
  .build/part-XXXXX.json              while building: shard j is complete (its counts, checksums)

Shard j holds a contiguous range of work units, so the concatenation of the shards in order is
the examples in input order whatever N is (the loader's build order). A shard is written to a
temporary name, fsynced and renamed, then its part file is written the same way: a part file
whose checksums match the shards on disk marks shard j complete, and a rerun skips it. Shards
may be built by several machines (each takes j = process_index mod process_count) into one
shared directory, or into several that are then copied together; `merge` checks every part
against its shards and writes the metadata. The result is byte-identical to a one-machine build.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

RECORD_FORMAT = 'int32le:input_ids+segment_ids'
# 256 records per compressed chunk: the loader reads one chunk per example (~80 KB), and the
# chunk index it holds per shard is 64 bytes per 256 examples.
WRITER_OPTIONS = 'group_size:256'
BUILD_DIR = '.build'
TMP_PREFIX = '.tmp-'
_TOTALS = ('invalid_utf8_lines', 'num_documents', 'num_lines', 'num_text_tokens',
           'empty_documents', 'num_truncated_tokens')


def shard_name(split: str, j: int, num_shards: int) -> str:
  return f'{split}-{j:05d}-of-{num_shards:05d}.array_record'


def split_dir(output_dir: Path, split: str) -> Path:
  return output_dir if split == 'train' else output_dir / split


def unit_bounds(num_units: int, num_shards: int) -> list[int]:
  """Shard j holds work units [bounds[j], bounds[j + 1]) (rounded up: shard 0 is never
  empty)."""
  return [-(-j * num_units // num_shards) for j in range(num_shards + 1)]


def sha256_of(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _fsync_dir(d: Path) -> None:
  fd = os.open(d, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: Path, text: str) -> None:
  """Writes text to path through a temporary name, fsync and rename."""
  tmp = path.with_name(TMP_PREFIX + path.name)
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(path.parent)


class _ShardWriter:
  """Writes the examples of one split of one shard to a temporary file; `commit` renames it."""

  def __init__(self, out_dir: Path, name: str):
    from array_record.python.array_record_module import ArrayRecordWriter
    out_dir.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.path = out_dir / name
    self.tmp = out_dir / (TMP_PREFIX + name)
    self._writer = ArrayRecordWriter(str(self.tmp), WRITER_OPTIONS)
    self.num_examples = 0
    self.num_tokens = 0
    self.num_single_segment = 0

  def write(self, flat: np.ndarray, lengths: np.ndarray, len_a: np.ndarray) -> None:
    if len(lengths) == 0:
      return
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pos_in_example = np.arange(len(flat)) - np.repeat(starts, lengths)
    seg = (pos_in_example >= np.repeat(len_a, lengths)).astype('<i4')
    # Slicing two byte strings per example avoids per-example numpy calls (the main process
    # writes every example, so it must stay cheap next to the tokenizing workers).
    ids_b, seg_b = flat.astype('<i4').tobytes(), seg.tobytes()
    w = self._writer
    for o, l in zip((4 * starts).tolist(), (4 * lengths).tolist()):
      w.write(ids_b[o:o + l] + seg_b[o:o + l])
    self.num_examples += len(lengths)
    self.num_tokens += int(lengths.sum())
    self.num_single_segment += int((len_a == lengths).sum())

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def commit(self) -> dict:
    """Closes, fsyncs and renames the shard into place; returns its part-file entry."""
    self.close()
    with open(self.tmp, 'rb') as f:
      os.fsync(f.fileno())
    digest = sha256_of(self.tmp)
    os.replace(self.tmp, self.path)
    _fsync_dir(self.path.parent)
    return {'name': self.name, 'sha256': digest, 'num_examples': self.num_examples,
            'num_tokens': self.num_tokens, 'num_single_segment': self.num_single_segment}

  def abort(self) -> None:
    self.close()
    self.tmp.unlink(missing_ok=True)


class ShardBuild:
  """One shard's writers (train, and eval when held out) and its running totals."""

  def __init__(self, output_dir: Path, j: int, num_shards: int, splits: tuple[str, ...]):
    self.output_dir, self.j = output_dir, j
    self.writers = {s: _ShardWriter(split_dir(output_dir, s), shard_name(s, j, num_shards))
                    for s in splits}
    self.totals = dict.fromkeys(_TOTALS, 0)
    self.first_invalid = None

  def add(self, result: dict) -> None:
    """Adds one work unit's result (corpus._process_unit) to the shard."""
    for k in _TOTALS:
      self.totals[k] += result[k]
    self.first_invalid = self.first_invalid or result['first_invalid']
    for s, w in self.writers.items():
      w.write(*result[s])

  def commit(self, seconds: float) -> None:
    part = {'shard': self.j, 'first_invalid': self.first_invalid, 'seconds': round(seconds, 3),
            **self.totals, 'splits': {s: w.commit() for s, w in self.writers.items()}}
    write_atomic(part_path(self.output_dir, self.j), json.dumps(part, indent=1, sort_keys=True) + '\n')

  def abort(self) -> None:
    for w in self.writers.values():
      w.abort()


def part_path(output_dir: Path, j: int) -> Path:
  return output_dir / BUILD_DIR / f'part-{j:05d}.json'


def read_part(output_dir: Path, j: int, verify: bool = True) -> dict | None:
  """Shard j's part file when the shard is complete (its checksums match); else None."""
  try:
    part = json.loads(part_path(output_dir, j).read_text())
  except (OSError, ValueError):
    return None
  if verify:
    for s, entry in part['splits'].items():
      path = split_dir(output_dir, s) / entry['name']
      if not path.is_file() or sha256_of(path) != entry['sha256']:
        return None
  return part


def start(output_dir: Path, settings: dict) -> None:
  """Records (or on a rerun, checks) what the directory is being built from."""
  path = output_dir / BUILD_DIR / 'settings.json'
  text = json.dumps(settings, indent=1, sort_keys=True) + '\n'
  if path.is_file():
    old = json.loads(path.read_text())
    if old != settings:
      diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      raise ValueError(f'{output_dir} holds a partial build with other settings ({", ".join(diff)} '
                       'differ); pass the same flags to resume it, or --overwrite to start over')
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  write_atomic(path, text)


def settings_of(output_dir: Path) -> dict:
  path = output_dir / BUILD_DIR / 'settings.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: {output_dir} is not a (partial) build directory')
  return json.loads(path.read_text())


def remove_temporaries(output_dir: Path) -> None:
  """Removes files of a write that was cut short (a killed build leaves at most these)."""
  for d in (output_dir, output_dir / 'eval', output_dir / BUILD_DIR):
    if d.is_dir():
      for p in d.glob(TMP_PREFIX + '*'):
        p.unlink(missing_ok=True)


def sum_parts(output_dir: Path) -> tuple[dict, dict]:
  """Checks every shard against its part file and sums the parts.

  Returns (totals over the corpus, {split: metadata fields of that split}). Raises ValueError
  naming the shards that are missing or do not match their checksums.
  """
  settings = settings_of(output_dir)
  n = settings['num_shards']
  parts, missing = [], []
  for j in range(n):
    part = read_part(output_dir, j)
    (missing.append(j) if part is None else parts.append(part))
  if missing:
    shown = ', '.join(map(str, missing[:8])) + (', ...' if len(missing) > 8 else '')
    raise ValueError(f'{output_dir}: {len(missing)} of {n} shards are not complete (shard {shown}); '
                     'run the build for them (the same command resumes) before merging')
  totals = {k: sum(p[k] for p in parts) for k in _TOTALS}
  totals['first_invalid'] = next((p['first_invalid'] for p in parts if p['first_invalid']), None)
  totals['seconds'] = sum(p['seconds'] for p in parts)
  splits = {}
  for s in parts[0]['splits']:
    entries = [p['splits'][s] for p in parts]
    splits[s] = {
        'num_examples': sum(e['num_examples'] for e in entries),
        'num_tokens': sum(e['num_tokens'] for e in entries),
        'num_single_segment': sum(e['num_single_segment'] for e in entries),
        'num_shards': n, 'shards': [e['name'] for e in entries],
        'shard_examples': [e['num_examples'] for e in entries],
        'shard_sha256': [e['sha256'] for e in entries],
    }
  return totals, splits


def finish(output_dir: Path) -> None:
  """Removes the build's working files once the metadata is written."""
  d = output_dir / BUILD_DIR
  for p in sorted(d.iterdir()):
    p.unlink()
  d.rmdir()


# ----------------------------------------------------------------------------- merge

# Defaults of the builder's quality limits (config.data.max_undecodable_fraction, ...).
MAX_UNDECODABLE_FRACTION = 0.5
MAX_TRUNCATED_FRACTION = 0.5


def check_quality(meta: dict, desc: str, max_undecodable_fraction: float = MAX_UNDECODABLE_FRACTION,
                  max_truncated_fraction: float = MAX_TRUNCATED_FRACTION,
                  names: tuple[str, str] = ('data.max_undecodable_fraction',
                                            'data.max_truncated_fraction')) -> None:
  """Refuses a build that dropped more than the limits allow (each limit named in the error).

  meta: a metadata.json dict (or the builder's totals). Caches written before these counts
  existed lack them and pass.
  """
  bad, lines = meta.get('invalid_utf8_lines', 0), meta.get('num_lines')
  if lines is not None and bad and bad / (bad + lines) > max_undecodable_fraction:
    raise ValueError(
        f'{desc}: {bad} of {bad + lines} lines ({bad / (bad + lines):.1%}) are not valid UTF-8'
        + (f' (first at {meta["first_invalid"]})' if meta.get('first_invalid') else '')
        + f', more than {names[0]}={max_undecodable_fraction}; is it a text corpus? (raise '
        f'{names[0]} to build from the valid lines)')
  cut, total = meta.get('num_truncated_tokens'), meta.get('num_text_tokens', 0)
  if cut is not None and total and cut / total > max_truncated_fraction:
    raise ValueError(
        f'{desc}: {cut} of its {total} tokens ({cut / total:.1%}) do not fit in the examples of '
        f'seq_len={meta.get("max_seq_length")} and would be dropped, more than '
        f'{names[1]}={max_truncated_fraction}; the text has lines far longer than an example '
        '(split it into sentences or paragraphs, one per line)')


LIMIT_FLAGS = ('--max_undecodable_fraction', '--max_truncated_fraction', '--min_examples')
LIMIT_KEYS = ('data.max_undecodable_fraction', 'data.max_truncated_fraction', 'train.batch_size')


def merge_pretraining_data(output_dir, max_undecodable_fraction: float = MAX_UNDECODABLE_FRACTION,
                           max_truncated_fraction: float = MAX_TRUNCATED_FRACTION,
                           min_examples: int = 1, names: tuple[str, ...] = LIMIT_FLAGS,
                           num_workers: int = 0, seconds: float | None = None) -> dict:
  """Checks that every shard is complete, applies the quality limits, writes the metadata."""
  output_dir = Path(output_dir)
  t = time.perf_counter()
  settings = settings_of(output_dir)
  totals, splits = sum_parts(output_dir)
  desc, max_seq_length = settings['source'], settings['max_seq_length']
  first_invalid = totals['first_invalid']
  report_drops(desc, totals, first_invalid, max_seq_length)
  check_quality({**totals, 'max_seq_length': max_seq_length}, desc, max_undecodable_fraction,
                max_truncated_fraction, names[:2])
  num_train = splits['train']['num_examples']
  if totals['num_lines'] == 0:
    raise ValueError(f'empty corpus: {desc} has no non-blank line'
                     + (f' of valid UTF-8 (first invalid at {first_invalid})' if first_invalid else ''))
  if num_train == 0:
    raise ValueError(f'{desc}: its {totals["num_documents"]} document(s) are too short to make any '
                     f'training example ({totals["empty_documents"]} have no token after tokenization'
                     + (f', eval_fraction={settings["eval_fraction"]} held out the rest'
                        if settings['eval_fraction'] else '') + ')')
  if num_train < min_examples:
    raise ValueError(f'{desc} gave {num_train} training example(s), fewer than one global batch '
                     f'({names[2]}={min_examples}); add text, or lower {names[2]}')
  seconds = totals['seconds'] if seconds is None else seconds
  timing = {'build_seconds': round(seconds + time.perf_counter() - t, 3),
            'shard_seconds': round(totals['seconds'], 3), 'num_workers': num_workers}
  meta = {}
  for s, fields in sorted(splits.items()):  # eval/ first: the top metadata.json marks a complete build
    m = {
        'format': RECORD_FORMAT, 'split': s, **{k: settings[k] for k in (
            'source', 'seed', 'vocab_hash', 'vocab_size', 'lowercase', 'special_ids',
            'max_seq_length', 'eval_fraction')},
        **fields, 'num_documents': totals['num_documents'],
        'num_text_tokens': totals['num_text_tokens'],
        'num_empty_documents': totals['empty_documents'], 'num_lines': totals['num_lines'],
        'num_truncated_tokens': totals['num_truncated_tokens'],
        'invalid_utf8_lines': totals['invalid_utf8_lines'],
    }
    d = split_dir(output_dir, s)
    # build_seconds varies run to run, so it lives in its own file: metadata.json stays reproducible.
    write_atomic(d / 'build_stats.json', json.dumps(timing) + '\n')
    write_atomic(d / 'metadata.json', json.dumps(m, indent=1, sort_keys=True) + '\n')
    meta[s] = {**m, 'build_seconds': timing['build_seconds']}
  finish(output_dir)
  return meta['train']


def report_drops(desc: str, totals: dict, first_invalid: str | None, max_seq_length: int) -> None:
  """One stderr line saying what the build dropped and why (nothing when nothing was)."""
  parts = []
  bad, lines = totals['invalid_utf8_lines'], totals['num_lines']
  if bad:
    parts.append(f'{bad} of {bad + lines} lines ({bad / (bad + lines):.1%}) of invalid UTF-8 '
                 f'(first at {first_invalid})')
  cut, total = totals['num_truncated_tokens'], totals['num_text_tokens']
  if cut and total:
    parts.append(f'{cut} of {total} tokens ({cut / total:.1%}) cut to fit seq_len='
                 f'{max_seq_length}')
  if totals['empty_documents']:
    parts.append(f'{totals["empty_documents"]} document(s) with no token')
  if parts:
    print(f'{desc}: dropped ' + '; '.join(parts), file=sys.stderr, flush=True)
