"""Raw text -> packed ELECTRA pre-training examples -> sharded array_record files.

Follows google-research/electra `build_pretraining_dataset.py` (`ExampleBuilder`): lines are
tokenized and accumulated until their length reaches a target length (max_seq_length, or with
probability 5% a random length in [5, max_seq_length]); the accumulated sentences are split
roughly in half into segments A and B (10% of examples keep a single segment) and written as
`[CLS] A [SEP] B [SEP]`, truncated to max_seq_length. A blank line ends a document and flushes
the accumulated sentences into an example.

Sources:
  * text files, globs or directories: one sentence/paragraph per line, blank line between docs;
  * `builtin:python-docs`: the standard-library docstring corpus (builtin_corpus.py);
  * `tfds:NAME[/CONFIG]:FEATURE[:SPLIT]` (SPLIT defaults to train): each record is one
    document, split into lines on newlines. Read from `tfds_data_dir`; never downloads.

Output directory: `train-XXXXX-of-NNNNN.array_record` shards plus `metadata.json`; with
`eval_fraction > 0` the held-out documents (chosen by a hash of the document text) go to the
same layout under `eval/`. Each record is the little-endian int32 array
`concat(input_ids, segment_ids)` of one example (2 * n values, n <= max_seq_length, unpadded).
Shard j holds the examples of a contiguous range of work units; shards.py writes them
atomically with checksums, so a build resumes after a crash and can be split over machines.

Determinism: the input is cut into work units that depend only on the data (files cut at
document boundaries every ~UNIT_BYTES, TFDS records in groups of UNIT_DOCS); each unit has its
own builder and RNG seeded from (seed, unit index), and each shard's examples are written in
unit order. So the shards are byte-identical for any `num_workers`, any split over machines,
and after any number of interruptions. (The official script uses the global `random` state
and shuffles files per process, so its output depends on the number of processes and is not
reproducible.) Other deviations: a fresh builder per unit (the official one carries its
pending target length from file to file; the sentences themselves are flushed at every file
end in both); records are unpadded int32 arrays instead of padded tf.train.Examples with an
input_mask, which the loader derives from lengths.

Command line (rerun the same command to resume an interrupted build):
  python -m electra_jax.data.corpus --input='corpus/*.txt' --vocab=vocab.txt \
      --output=DIR --seq_len=128 --num_shards=8 --num_workers=2 --seed=0
  # split over N machines: add --process_index=i --process_count=N on machine i, then once
  python -m electra_jax.data.corpus --merge --output=DIR
"""

from __future__ import annotations

import collections
import hashlib
import mmap
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from absl import flags

from electra_jax import cli
from electra_jax import runlog
from electra_jax.data import shards
from electra_jax.data import tokenizer as tok_lib

UNIT_BYTES = 2 << 20  # ~2 MB of text per work unit: enough to keep Rust batch encoding busy
UNIT_DOCS = 1000  # TFDS records per work unit
RECORD_FORMAT = shards.RECORD_FORMAT
WRITER_OPTIONS = shards.WRITER_OPTIONS
_ShardWriter = shards._ShardWriter  # pylint: disable=protected-access
# The quality limits and the merge live in shards.py (the build's output); named here too.
MAX_UNDECODABLE_FRACTION = shards.MAX_UNDECODABLE_FRACTION
MAX_TRUNCATED_FRACTION = shards.MAX_TRUNCATED_FRACTION
LIMIT_FLAGS, LIMIT_KEYS = shards.LIMIT_FLAGS, shards.LIMIT_KEYS
check_quality, report_drops = shards.check_quality, shards.report_drops
merge_pretraining_data = shards.merge_pretraining_data
_SPLITS = ('train', 'eval')


class ExampleBuilder:
  """Packs tokenized lines into examples; a line-by-line port of ELECTRA's ExampleBuilder.

  Works on token-id lists; examples come out as (first_segment, second_segment) id lists
  without special tokens. `rng` replaces the official code's global `random` module (the
  same calls in the same order, but seeded per work unit).
  """

  def __init__(self, max_length: int, rng: random.Random):
    self._rng = rng
    self._current_sentences: list[list[int]] = []
    self._current_length = 0
    self._max_length = max_length
    self._target_length = max_length

  def add_line(self, ids: list[int]):
    """Adds one tokenized line; returns an example when the target length is reached."""
    self._current_sentences.append(ids)
    self._current_length += len(ids)
    if self._current_length >= self._target_length:
      return self._create_example()
    return None

  def end_document(self):
    """A blank line: flushes the accumulated sentences (if any) into an example."""
    if self._current_length != 0:
      return self._create_example()
    # Zero-token lines (e.g. only control characters) add nothing. The official builder keeps
    # them as empty sentences, which can only shift its RNG calls; dropping them keeps the
    # builder's state independent of what preceded a document.
    self._current_sentences = []
    return None

  def _create_example(self):
    rng = self._rng
    # small chance to only have one segment as in classification tasks
    if rng.random() < 0.1:
      first_segment_target_length = 100000
    else:
      # -3 due to not yet having [CLS]/[SEP] tokens in the input text
      first_segment_target_length = (self._target_length - 3) // 2

    first_segment: list[int] = []
    second_segment: list[int] = []
    for sentence in self._current_sentences:
      # the sentence goes to the first segment if (1) the first segment is empty, (2) the
      # sentence doesn't put the first segment over length or (3) 50% of the time when it does
      # put the first segment over length
      if (len(first_segment) == 0 or
          len(first_segment) + len(sentence) < first_segment_target_length or
          (len(second_segment) == 0 and
           len(first_segment) < first_segment_target_length and
           rng.random() < 0.5)):
        first_segment += sentence
      else:
        second_segment += sentence

    # trim to max_length while accounting for not-yet-added [CLS]/[SEP] tokens
    first_segment = first_segment[:self._max_length - 2]
    second_segment = second_segment[:max(0, self._max_length - len(first_segment) - 3)]

    # prepare to start building the next example
    self._current_sentences = []
    self._current_length = 0
    # small chance for random-length instead of max_length-length example
    if rng.random() < 0.05:
      self._target_length = rng.randint(5, self._max_length)
    else:
      self._target_length = self._max_length
    return first_segment, second_segment


# ----------------------------------------------------------------------------- sources


def parse_tfds_source(source: str) -> tuple[str, str, str]:
  """'tfds:NAME[/CONFIG]:FEATURE[:SPLIT]' -> (name_with_config, feature, split)."""
  parts = source[len('tfds:'):].split(':')
  if len(parts) not in (2, 3) or not all(parts):
    raise ValueError(f'bad TFDS source {source!r}; expected tfds:NAME[/CONFIG]:FEATURE[:SPLIT], '
                     'e.g. tfds:imdb_reviews/plain_text:text')
  return parts[0], parts[1], parts[2] if len(parts) == 3 else 'train'


def _tfds_builder(source: str, data_dir: str):
  """Returns (builder, feature, split) for a TFDS source that is prepared on disk (no download)."""
  name, feature, split = parse_tfds_source(source)
  import tensorflow_datasets as tfds  # lazy: TF is slow to import and only needed here
  where = data_dir or 'the default TFDS data_dir'
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, try_gcs=False)
  except Exception as e:  # noqa: BLE001 -- DatasetNotFoundError, bad config name, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f'TFDS dataset {name!r} is not available offline in {where}: {first}') from None
  if not builder.is_prepared():
    raise ValueError(f'TFDS dataset {name!r} is not prepared in {where} ({builder.data_path}); '
                     'prepare it first (this builder never downloads)')
  if split not in builder.info.splits:
    raise ValueError(f'TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}')
  if feature not in builder.info.features:
    raise ValueError(f'TFDS dataset {name!r} has no feature {feature!r}; it has {sorted(builder.info.features)}')
  return builder, feature, split


def _file_units(files: Sequence[str]) -> list[tuple]:
  """Cuts files at blank lines into ('file', path, start, end, first_line) units of ~UNIT_BYTES."""
  units = []
  for path in files:
    size = os.path.getsize(path)
    if size == 0:
      continue
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
      start, line = 0, 1
      while start < size:
        end = size
        if size - start > UNIT_BYTES:  # cut after the next blank line (LF or CRLF files)
          cuts = [(i, i + len(m)) for m in (b'\n\n', b'\n\r\n') if (i := data.find(m, start + UNIT_BYTES)) >= 0]
          end = min(cuts)[1] if cuts else size  # no blank line left: the rest is one document
        units.append(('file', path, start, end, line))
        line += data[start:end].count(b'\n')
        start = end
  return units


def _tfds_units(source: str, data_dir: str) -> Iterator[tuple]:
  """Yields ('docs', name, first_record, [document texts]) units from a prepared TFDS split."""
  builder, feature, split = _tfds_builder(source, data_dir)
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, shuffle_files=False)
  batch, first = [], 0
  for i, ex in enumerate(tfds.as_numpy(ds)):
    batch.append(ex[feature])
    if len(batch) == UNIT_DOCS:
      yield ('docs', source, first, batch)
      batch, first = [], i + 1
  if batch:
    yield ('docs', source, first, batch)


def resolve_source(source: str, tfds_data_dir: str = '', cache_dir: str | None = None):
  """Returns (units iterator, number of units or None, description) for a source string."""
  if source.startswith('tfds:'):
    name, _, split = parse_tfds_source(source)
    builder, _, _ = _tfds_builder(source, tfds_data_dir)  # fail fast, before spawning workers
    n = builder.info.splits[split].num_examples
    return _tfds_units(source, tfds_data_dir), -(-n // UNIT_DOCS), source
  if source.startswith('builtin:'):
    from electra_jax.data import builtin_corpus
    if source != builtin_corpus.BUILTIN_SOURCE:
      raise ValueError(f'unknown builtin source {source!r}; expected {builtin_corpus.BUILTIN_SOURCE!r}')
    cache = runlog.cache_dir(cache_dir) / 'python_docs'
    files = [str(p) for p in builtin_corpus.write_builtin_corpus(cache)]
  else:
    files = tok_lib.expand_inputs([s for s in source.split(',') if s])
  units = _file_units(files)
  return iter(units), len(units), source


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(tokens: list[str], lowercase: bool, max_seq_length: int, seed: int,
                 eval_fraction: float, threads: int | None) -> None:
  if threads:  # must precede the first encode: Rust's thread pool reads it once
    os.environ['RAYON_NUM_THREADS'] = str(threads)
  _WORKER.update(tok=tok_lib.WordPieceTokenizer(tokens, lowercase=lowercase),
                 max_len=max_seq_length, seed=seed, eval_fraction=eval_fraction)


def _is_eval(doc_lines: list[str], eval_fraction: float) -> bool:
  """Deterministic hold-out by a hash of the document text (independent of seed and sharding)."""
  if eval_fraction <= 0:
    return False
  h = hashlib.blake2b('\n'.join(doc_lines).encode('utf-8'), digest_size=8).digest()
  return int.from_bytes(h, 'little') / 2.0**64 < eval_fraction


def _decode_unit(unit) -> tuple[list[list[str]], int, str | None]:
  """Returns (documents as lists of stripped non-empty lines, invalid lines, first bad place)."""
  kind = unit[0]
  bad, first_bad = 0, None
  if kind == 'file':
    _, path, start, end, first_line = unit
    with open(path, 'rb') as f:
      f.seek(start)
      data = f.read(end - start)
    try:
      raw_lines = data.decode('utf-8').split('\n')
    except UnicodeDecodeError:
      raw_lines = []
      for i, b in enumerate(data.split(b'\n')):
        try:
          raw_lines.append(b.decode('utf-8'))
        except UnicodeDecodeError:
          bad += 1
          first_bad = first_bad or f'{path}:{first_line + i}'
          raw_lines.append(None)  # skipped, but not a document boundary
    docs, cur = [], []
    for line in raw_lines:
      if line is None:
        continue
      line = line.strip()
      if line:
        cur.append(line)
      elif cur:
        docs.append(cur)
        cur = []
    if cur:
      docs.append(cur)
  else:
    _, name, first_record, texts = unit
    docs = []
    for i, t in enumerate(texts):
      if isinstance(t, bytes):
        try:
          t = t.decode('utf-8')
        except UnicodeDecodeError:
          bad += 1
          first_bad = first_bad or f'{name} record {first_record + i}'
          continue
      lines = [s.strip() for s in t.split('\n')]
      lines = [s for s in lines if s]
      if lines:
        docs.append(lines)
  return docs, bad, first_bad


def _process_unit(args) -> dict:
  """Tokenizes and packs one unit. Returns per-split flat arrays and counts."""
  index, unit = args
  w = _WORKER
  tok, max_len = w['tok'], w['max_len']
  docs, bad, first_bad = _decode_unit(unit)
  flat_lines = [line for doc in docs for line in doc]
  ids = tok.encode_batch(flat_lines)
  out = {'invalid_utf8_lines': bad, 'first_invalid': first_bad, 'num_documents': len(docs),
         'num_lines': len(flat_lines), 'num_text_tokens': sum(map(len, ids))}
  builders = {s: ExampleBuilder(max_len, random.Random(f'{w["seed"]}:{index}:{s}')) for s in _SPLITS}
  examples = {s: [] for s in _SPLITS}
  empty_docs = 0
  pos = 0
  for doc in docs:
    split = 'eval' if _is_eval(doc, w['eval_fraction']) else 'train'
    b, ex = builders[split], examples[split]
    doc_tokens = 0
    for _ in doc:
      doc_tokens += len(ids[pos])
      e = b.add_line(ids[pos])
      pos += 1
      if e is not None:
        ex.append(e)
    e = b.end_document()
    if e is not None:
      ex.append(e)
    empty_docs += doc_tokens == 0
  out['empty_documents'] = empty_docs
  # Tokens the examples could not hold: ExampleBuilder cuts each example to max_seq_length.
  out['num_truncated_tokens'] = out['num_text_tokens'] - sum(
      len(a) + len(b) for s in _SPLITS for a, b in examples[s])
  cls, sep = tok.cls_id, tok.sep_id
  for s in _SPLITS:
    # [CLS] A [SEP] (B [SEP]); segment ids 0 up to and including the first [SEP], then 1.
    seqs, len_a = [], []
    for a, b in examples[s]:
      seqs.append([cls] + a + [sep] + (b + [sep] if b else []))
      len_a.append(len(a) + 2)
    lengths = np.fromiter(map(len, seqs), np.int32, len(seqs))
    flat = np.fromiter((t for q in seqs for t in q), np.int32, int(lengths.sum()))
    out[s] = (flat, lengths, np.asarray(len_a, np.int32))
  return out


def _ordered_map(fn, items: Iterator, pool, window: int) -> Iterator:
  """Like pool.imap (results in input order) but reads at most `window` items ahead."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.apply_async(fn, (item,)))
    if len(pending) >= window:
      yield pending.popleft().get()
  while pending:
    yield pending.popleft().get()


def build_pretraining_data(source: str, tokenizer: tok_lib.WordPieceTokenizer, output_dir,
                           max_seq_length: int = 128, num_shards: int = 8, num_workers: int = 1,
                           seed: int = 0, eval_fraction: float = 0.0, tfds_data_dir: str = '',
                           cache_dir: str | None = None, progress: bool = True,
                           max_undecodable_fraction: float = MAX_UNDECODABLE_FRACTION,
                           max_truncated_fraction: float = MAX_TRUNCATED_FRACTION,
                           min_examples: int = 1, limit_names: tuple[str, ...] | None = None,
                           process_index: int = 0, process_count: int = 1) -> dict | None:
  """Builds the shards of `source` into `output_dir` (absent, empty, or a partial build).

  Returns the train split's metadata dict (also written to output_dir/metadata.json), or None
  when process_count > 1: this process then wrote only its shards (j = process_index mod
  process_count) and `merge_pretraining_data` writes the metadata once all are done. A rerun
  with the same arguments resumes: shards whose checksums match their part files are skipped
  (see shards.py); an interrupted build leaves only complete shards. Raises FileNotFoundError /
  ValueError with a one-line message for a missing path, an empty corpus, documents too short
  to make an example, or an unavailable TFDS dataset. What was dropped (invalid UTF-8 lines,
  tokens cut by the length limit, empty documents) is counted in the metadata and reported on
  stderr; the build stops with an error naming the limit when more than
  `max_undecodable_fraction` of the lines are not UTF-8, more than `max_truncated_fraction` of
  the tokens are cut, or fewer than `min_examples` training examples come out.
  `limit_names`: how the error names the three limits (the config keys or the flags).
  """
  if max_seq_length < 5:
    raise ValueError(f'max_seq_length={max_seq_length} is too small; expected >= 5')
  if num_shards < 1 or num_workers < 0:
    raise ValueError(f'num_shards={num_shards} and num_workers={num_workers}; expected >= 1 and >= 0')
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f'eval_fraction={eval_fraction}; expected a value in [0, 1)')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index}, process_count={process_count}; expected '
                     '0 <= process_index < process_count')
  output_dir = Path(output_dir)
  if output_dir.exists() and any(output_dir.iterdir()) and not (
      output_dir / shards.BUILD_DIR / 'settings.json').is_file():
    raise ValueError(f'output directory {output_dir} is not empty')
  units, num_units, desc = resolve_source(source, tfds_data_dir, cache_dir)
  fresh = not output_dir.exists() or not any(output_dir.iterdir())
  settings = {
      'format': RECORD_FORMAT, 'source': source, 'seed': seed, 'vocab_hash': tokenizer.vocab_hash,
      'vocab_size': tokenizer.vocab_size, 'lowercase': tokenizer.lowercase,
      'special_ids': {'pad': tokenizer.pad_id, 'unk': tokenizer.unk_id, 'cls': tokenizer.cls_id,
                      'sep': tokenizer.sep_id, 'mask': tokenizer.mask_id},
      'max_seq_length': max_seq_length, 'num_shards': num_shards, 'eval_fraction': eval_fraction,
      'num_units': num_units, 'unit_bytes': UNIT_BYTES, 'unit_docs': UNIT_DOCS}
  limits = dict(max_undecodable_fraction=max_undecodable_fraction,
                max_truncated_fraction=max_truncated_fraction, min_examples=min_examples,
                names=limit_names or LIMIT_FLAGS)
  start = time.perf_counter()
  try:
    shards.start(output_dir, settings)
    shards.remove_temporaries(output_dir)
    _build(units, num_units, desc, tokenizer, output_dir, max_seq_length, num_shards, num_workers,
           seed, eval_fraction, progress, process_index, process_count)
    if process_count > 1:
      return None
    return merge_pretraining_data(output_dir, num_workers=num_workers,
                                  seconds=time.perf_counter() - start, **limits)
  except ValueError:
    if fresh and process_count == 1:  # a corpus that cannot make data: leave nothing behind
      shutil.rmtree(output_dir, ignore_errors=True)
    raise
  finally:
    if output_dir.exists():
      shards.remove_temporaries(output_dir)


def _build(units, num_units, desc, tokenizer, output_dir, max_seq_length, num_shards, num_workers,
           seed, eval_fraction, progress, process_index, process_count) -> None:
  """Writes this process's shards that are not complete yet, one after the other."""
  bounds = shards.unit_bounds(num_units, num_shards)
  mine = range(process_index, num_shards, process_count)
  todo = [j for j in mine if shards.read_part(output_dir, j) is None]
  if len(todo) < len(mine) and progress:
    print(f'{output_dir}: {len(mine) - len(todo)} of this process\'s {len(mine)} shards are '
          'complete (checksums match); building the rest', file=sys.stderr, flush=True)
  if not todo:
    return
  wanted = np.zeros(num_units, bool)
  for j in todo:
    wanted[bounds[j]:bounds[j + 1]] = True
  work = ((u, unit) for u, unit in enumerate(units) if wanted[u])
  splits = ('train', 'eval') if eval_fraction > 0 else ('train',)
  init = (tokenizer.tokens, tokenizer.lowercase, max_seq_length, seed, eval_fraction)
  from tqdm import tqdm
  bar = tqdm(total=int(wanted.sum()), unit='unit', desc=f'building {desc}', disable=not progress,
             file=sys.stderr, dynamic_ncols=True)
  pool, current = None, None
  try:
    if num_workers <= 1:
      _init_worker(*init, None)
      results = map(_process_unit, work)
    else:
      import multiprocessing
      # spawn, not fork: the parent may hold JAX/TF/Rust threads, which fork would copy broken.
      threads = max(1, (os.cpu_count() or 1) // num_workers)
      pool = multiprocessing.get_context('spawn').Pool(num_workers, _init_worker, init + (threads,))
      results = _ordered_map(_process_unit, work, pool, window=2 * num_workers)
    examples = 0
    for j in todo:
      current, t = shards.ShardBuild(output_dir, j, num_shards, splits), time.perf_counter()
      for _ in range(bounds[j], bounds[j + 1]):
        r = next(results)
        current.add(r)
        examples += len(r['train'][1])
        bar.update(1)
        bar.set_postfix(shard=j, examples=examples, refresh=False)
      current.commit(time.perf_counter() - t)
      current = None
    if pool is not None:
      pool.close()
      pool.join()
  finally:
    bar.close()
    if current is not None:
      current.abort()
    if pool is not None:
      pool.terminate()


def define_flags():
  flags.DEFINE_string('input', None, "Files, globs or directories (comma-separated), "
                    "'builtin:python-docs' or tfds:NAME[/CONFIG]:FEATURE.")
  flags.DEFINE_string('vocab', None, "vocab.txt path, or 'builtin' for the builtin 8192 vocab.")
  flags.DEFINE_string('output', None, 'Directory of the shards to write.')
  flags.DEFINE_integer('seq_len', 128, 'Tokens per example (the configs\' train.seq_len).')
  flags.DEFINE_integer('num_shards', 8, 'Output shards.')
  flags.DEFINE_integer('num_workers', os.cpu_count() or 1, 'Worker processes.')
  flags.DEFINE_integer('seed', 0, 'Shuffling and eval-split seed.')
  flags.DEFINE_float('eval_fraction', 0.0, 'Fraction of documents held out for evaluation.')
  flags.DEFINE_bool('lowercase', True, '--nolowercase: keep case (for a cased vocab).')
  flags.DEFINE_string('tfds_data_dir', '', 'TFDS data directory.')
  flags.DEFINE_string('cache_dir', None, 'Where the builtin corpus and vocab are cached '
                      '(default $ELECTRA_JAX_CACHE or ~/.cache/electra_jax).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output directory.')
  flags.DEFINE_float('max_undecodable_fraction', MAX_UNDECODABLE_FRACTION,
                     'Stop when more than this share of the lines is not valid UTF-8.')
  flags.DEFINE_float('max_truncated_fraction', MAX_TRUNCATED_FRACTION,
                     'Stop when more than this share of the tokens would be cut away.')
  flags.DEFINE_integer('min_examples', 1,
                       'Stop when fewer training examples come out (e.g. one global batch).')
  flags.DEFINE_integer('process_index', 0, 'This machine\'s index, for a build split over '
                       '--process_count machines (each writes shards j = index mod count).')
  flags.DEFINE_integer('process_count', 1, 'Machines sharing the build; then run --merge once.')
  flags.DEFINE_bool('merge', False, 'Only check the shards of a split build in --output and '
                    'write its metadata (after every process has finished).')


def main(argv) -> None:
  """python -m electra_jax.data.corpus --input=GLOB --vocab=vocab.txt --output=DIR [flags]."""
  f = flags.FLAGS
  cli.no_positional(argv)
  limits = dict(max_undecodable_fraction=f.max_undecodable_fraction,
                max_truncated_fraction=f.max_truncated_fraction, min_examples=f.min_examples)
  if f.merge:
    cli.require(output=f.output)
    meta = merge_pretraining_data(f.output, **limits)
  else:
    cli.require(input=f.input, vocab=f.vocab, output=f.output)
    if f.vocab == 'builtin':
      from electra_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
      vocab = builtin_corpus.builtin_vocab(runlog.cache_dir(f.cache_dir))
    else:
      vocab = f.vocab
    tok = tok_lib.WordPieceTokenizer.from_vocab(vocab, lowercase=f.lowercase)
    out = Path(f.output)
    if f.overwrite and out.exists():
      shutil.rmtree(out)
    meta = build_pretraining_data(f.input, tok, out, f.seq_len, f.num_shards, f.num_workers, f.seed,
                                  f.eval_fraction, f.tfds_data_dir, f.cache_dir,
                                  process_index=f.process_index, process_count=f.process_count,
                                  **limits)
    if meta is None:
      print(f'process {f.process_index} of {f.process_count} wrote its shards to {f.output}; once '
            f'every process has, run: python -m electra_jax.data.corpus --merge --output={f.output}')
      return
  rate = meta['num_text_tokens'] / max(meta['build_seconds'], 1e-9)
  print(f'wrote {meta["num_examples"]} examples ({meta["num_tokens"]} tokens) in {meta["num_shards"]} '
        f'shards to {f.output} in {meta["build_seconds"]:.1f}s ({rate / 1e6:.2f}M text tokens/s)')


if __name__ == '__main__':
  cli.run(main, define_flags)
