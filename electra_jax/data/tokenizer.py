"""BERT-style WordPiece tokenizer (Hugging Face `tokenizers`) and vocab training.

`WordPieceTokenizer.from_vocab(path)` loads a BERT `vocab.txt` (one token per
line, id = line number) and reproduces the ids of BERT's reference tokenizer
(google-research/bert `FullTokenizer`, transformers' `BertTokenizer`): BERT
normalizer (clean text, CJK characters split, lower-casing, accent stripping),
BERT pre-tokenizer (whitespace and punctuation) and greedy longest-match-first
WordPiece with `##` continuations and words over 100 characters mapped to
[UNK]. Like ELECTRA's `FullTokenizer` (and unlike transformers, which keeps
"[MASK]" typed in the text as one token), special tokens that appear in raw
text are tokenized as ordinary text.

Command line (train a vocab from text files):
  python -m electra_jax.data.tokenizer train --input 'corpus/*.txt' \
      --vocab_size 8192 --output vocab.txt
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import flags
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from electra_jax import cli

# The five special tokens every vocab must have; `train_wordpiece` gives them ids 0..4.
SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
MAX_INPUT_CHARS_PER_WORD = 100  # BERT's WordpieceTokenizer default.

# What BERT's normalizer does to ASCII text, as a str.translate table: control characters are
# dropped, except tab/newline/carriage return which (being whitespace) become spaces. Accent
# stripping and CJK spacing never touch ASCII. Used by the ASCII fast path of encode_batch.
_ASCII_CLEAN = {i: None for i in [*range(32), 127]}
_ASCII_CLEAN.update({9: ' ', 10: ' ', 13: ' '})


def _bert_normalizer(lowercase: bool) -> normalizers.Normalizer:
  # strip_accents follows lowercase, as in BERT's BasicTokenizer (uncased vocab => no accents).
  return normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)


def read_vocab(path: str | os.PathLike, warn_duplicates: bool = True) -> list[str]:
  """Returns the tokens of a BERT vocab.txt in id order (line i -> id i).

  A file that is not UTF-8 text is refused, naming the file and line. Duplicate lines are
  warned about on stderr with their line numbers, not refused: the ids stay well defined (a
  duplicated token maps to its last line, as in BERT's load_vocab; the earlier line's id is
  never produced) and published vocabs with duplicates must keep matching their checkpoints.
  A duplicated special token is refused by `WordPieceTokenizer` (its id would be ambiguous).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'vocab file not found: {path}')
  data = path.read_bytes()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise ValueError(f'vocab file {path} is not UTF-8 text (invalid byte at line {line}); '
                     'expected a vocab.txt with one token per line') from None
  if '\0' in text:
    raise ValueError(f'vocab file {path} holds NUL bytes (line {text[:text.index(chr(0))].count(chr(10)) + 1}); '
                     'expected a vocab.txt with one token per line')
  # BERT's load_vocab strips each line; an empty line would still take an id.
  tokens = [line.strip() for line in text.split('\n')]
  if tokens and tokens[-1] == '' and len(tokens) > 1:
    tokens = tokens[:-1]  # tolerate a trailing newline
  if tokens and tokens[-1] == '' and len(tokens) > 1:
    tokens = tokens[:-1]  # and one trailing blank line
  if not tokens or tokens == ['']:
    raise ValueError(f'vocab file {path} is empty; expected one token per line')
  if warn_duplicates:
    dups = duplicate_lines(tokens)
    if dups:
      shown = '; '.join(f'{t!r} at lines {", ".join(map(str, ls))}' for t, ls in dups[:5])
      more = f'; and {len(dups) - 5} more' if len(dups) > 5 else ''
      import sys  # pylint: disable=g-import-not-at-top
      print(f'warning: vocab file {path} repeats {len(dups)} token(s): {shown}{more}; each maps to '
            'its last line (the earlier ids are never produced)', file=sys.stderr, flush=True)
  return tokens


def duplicate_lines(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
  """[(token, [1-based line numbers])] of every token that appears on more than one line."""
  where: dict[str, list[int]] = {}
  for i, t in enumerate(tokens):
    where.setdefault(t, []).append(i + 1)
  return [(t, ls) for t, ls in where.items() if len(ls) > 1]


def vocab_hash(tokens: Sequence[str]) -> str:
  """Short hex sha256 of the vocab tokens in id order (identifies a vocab across files)."""
  return hashlib.sha256('\n'.join(tokens).encode('utf-8')).hexdigest()[:16]


class WordPieceTokenizer:
  """A BERT WordPiece tokenizer over a fixed vocab.

  Attributes: vocab_size, pad_id, unk_id, cls_id, sep_id, mask_id (ints),
  vocab_hash (16 hex chars), tokens (list[str], id order), lowercase.
  """

  def __init__(self, tokens: Sequence[str], lowercase: bool = True, name: str = '<memory>'):
    self.tokens = list(tokens)
    self.lowercase = lowercase
    self.name = str(name)
    vocab: dict[str, int] = {}
    for i, tok in enumerate(self.tokens):
      vocab[tok] = i  # a duplicated line keeps its last id, as in BERT's load_vocab
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise ValueError(f'vocab {self.name} lacks special tokens {missing}; '
                       f'a BERT vocab needs all of {list(SPECIAL_TOKENS)}')
    twice = [(t, [i + 1 for i, x in enumerate(self.tokens) if x == t]) for t in SPECIAL_TOKENS
             if self.tokens.count(t) > 1]
    if twice:
      raise ValueError(f'vocab {self.name} repeats special token(s) ' + '; '.join(
          f'{t} at lines {", ".join(map(str, ls))}' for t, ls in twice)
                       + '; their ids would be ambiguous: keep one line of each')
    self.vocab = vocab
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token='[UNK]',
                                     max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    tok.normalizer = _bert_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self._tok = tok
    # Same model without the normalizer, for ASCII text normalized in Python (see encode_batch).
    raw = Tokenizer.from_str(tok.to_str())
    raw.normalizer = None
    self._raw = raw
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        vocab[t] for t in SPECIAL_TOKENS)
    self.vocab_size = len(self.tokens)
    self.vocab_hash = vocab_hash(self.tokens)

  @classmethod
  def from_vocab(cls, path: str | os.PathLike, lowercase: bool = True) -> 'WordPieceTokenizer':
    """Loads a BERT vocab.txt; raises ValueError naming the file if a special token is missing."""
    return cls(read_vocab(path), lowercase=lowercase, name=str(path))

  @property
  def hf_tokenizer(self) -> Tokenizer:
    """The underlying `tokenizers.Tokenizer` (no post-processor: no specials are added)."""
    return self._tok

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without [CLS]/[SEP]."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def _ascii_normalize(self, text: str) -> str:
    text = text.translate(_ASCII_CLEAN)
    return text.lower() if self.lowercase else text

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (multi-threaded in Rust), without special tokens.

    Speed: the Rust normalizer tracks character alignments and takes ~40% of the encoding
    time. ASCII texts (most English text) are normalized in Python instead (exactly what the
    BERT normalizer does to ASCII: see _ASCII_CLEAN) and encoded without it; the ids are
    identical (checked by tests against transformers' BertTokenizer).
    """
    if not texts:
      return []
    fast_i, fast, slow_i, slow = [], [], [], []
    for i, t in enumerate(texts):
      if t.isascii():
        fast_i.append(i)
        fast.append(self._ascii_normalize(t))
      else:
        slow_i.append(i)
        slow.append(t)
    out: list = [None] * len(texts)
    for idx, batch, tok in ((fast_i, fast, self._raw), (slow_i, slow, self._tok)):
      if batch:
        for i, e in zip(idx, tok.encode_batch_fast(batch, add_special_tokens=False)):
          out[i] = e.ids
    return out

  def tokenize(self, text: str) -> list[str]:
    """WordPiece strings of `text` (for debugging and tests)."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  def decode(self, ids: Iterable[int]) -> str:
    """Joins word pieces back into text (`##` continuations glued); specials kept."""
    out = []
    for i in ids:
      t = self.tokens[int(i)]
      if t.startswith('##') and out:
        out[-1] += t[2:]
      else:
        out.append(t)
    return ' '.join(out)


def _iter_lines(files: Sequence[str], stats: dict | None = None) -> Iterable[str]:
  """Stripped non-blank lines of `files`; lines that are not UTF-8 are skipped and counted."""
  for path in files:
    with open(path, 'rb') as f:
      for number, raw in enumerate(f, 1):
        try:
          line = raw.decode('utf-8').strip()
        except UnicodeDecodeError:
          if stats is not None:
            stats['bad'] = stats.get('bad', 0) + 1
            stats.setdefault('first_bad', f'{path}:{number}')
          continue
        if line:
          if stats is not None:
            stats['good'] = stats.get('good', 0) + 1
          yield line


def expand_inputs(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Expands globs / directories / files into a sorted list of files.

  Raises FileNotFoundError naming the pattern when it matches nothing.
  """
  specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
  files: list[str] = []
  for s in specs:
    s = os.fspath(s)
    if os.path.isdir(s):
      found = sorted(str(p) for p in Path(s).rglob('*') if p.is_file() and not p.name.startswith('.'))
      if not found:
        raise FileNotFoundError(f'input directory {s} contains no files')
      files += found
    elif os.path.isfile(s):
      files.append(s)
    else:
      found = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
      if not found:
        raise FileNotFoundError(f'input path {s} does not exist or matches no file')
      files += found
  return files


MAX_UNDECODABLE_FRACTION = 0.5


def train_wordpiece(files_or_iterator: str | Sequence[str] | Iterable[str], vocab_size: int,
                    out_path: str | os.PathLike, lowercase: bool = True,
                    min_frequency: int = 2,
                    max_undecodable_fraction: float = MAX_UNDECODABLE_FRACTION) -> Path:
  """Trains a WordPiece vocab and writes it as vocab.txt (one token per line).

  `files_or_iterator`: a glob/dir/file path or a list/tuple of them; any other iterable
  (a generator, `iter(list_of_lines)`) is read as text lines.
  The first five tokens are [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0..4). The result is
  deterministic for the same input (ties in the merge order are broken by the trainer
  deterministically; checked by tests). Returns the output path.

  Lines that are not UTF-8 are skipped; more than `max_undecodable_fraction` of them is
  refused (not a text corpus). When the vocab written differs in size from `vocab_size` (a
  corpus with more distinct characters than that, which the vocab must all hold, or too few
  words), a warning on stderr says so and why.
  """
  if vocab_size < len(SPECIAL_TOKENS) + 1:
    raise ValueError(f'vocab_size={vocab_size} is too small; expected > {len(SPECIAL_TOKENS)}')
  if isinstance(files_or_iterator, (str, os.PathLike, list, tuple)):
    files = expand_inputs(files_or_iterator)
    lines = lambda: _iter_lines(files)  # noqa: E731  (read twice: alphabet pass, training pass)
    stats: dict = {}
    first_pass = _iter_lines(files, stats)
  else:
    cached = [line for line in (str(x).strip() for x in files_or_iterator) if line]
    lines = lambda: iter(cached)  # noqa: E731
    stats, first_pass = None, lines()
  tok = Tokenizer(models.WordPiece(unk_token='[UNK]',
                                   max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
  tok.normalizer = _bert_normalizer(lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  # Determinism: the trainer gives '##c' pieces ids in the iteration order of a Rust HashMap
  # (random per process), and ties between equally frequent merges are broken by those ids, so
  # two runs on the same corpus give different vocabs. Registering every '##c' up front (as
  # trainer "special" tokens, sorted) fixes their ids, which makes the whole run deterministic.
  continuations = set()
  norm, pre = tok.normalizer, tok.pre_tokenizer
  alphabet = set()
  for line in first_pass:
    for word, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
      continuations.update(word[1:])
      alphabet.update(word)
  if stats and stats.get('bad'):
    bad, total = stats['bad'], stats['bad'] + stats.get('good', 0)
    if bad / total > max_undecodable_fraction:
      what = ', '.join(files) if len(files) <= 3 else f'{len(files)} files'
      raise ValueError(f'{bad} of the {total} lines ({bad / total:.1%}) of {what} '
                       f'are not valid UTF-8 (first at {stats["first_bad"]}), more than '
                       f'max_undecodable_fraction={max_undecodable_fraction}; is it a text corpus?')
    import sys  # pylint: disable=g-import-not-at-top
    print(f'warning: skipped {bad} of {total} lines that are not valid UTF-8 (first at '
          f'{stats["first_bad"]})', file=sys.stderr, flush=True)
  initial = list(SPECIAL_TOKENS) + ['##' + c for c in sorted(continuations)]
  trainer = trainers.WordPieceTrainer(
      vocab_size=max(vocab_size, len(initial)), min_frequency=min_frequency, special_tokens=initial,
      continuing_subword_prefix='##', show_progress=False)
  tok.train_from_iterator(lines(), trainer=trainer)
  vocab = tok.get_vocab()
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  if not tokens or tokens[:len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS) or len(tokens) <= len(SPECIAL_TOKENS):
    raise ValueError(f'training a vocab on {files_or_iterator!r} gave no tokens; is the corpus empty?')
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_name(out_path.name + f'.tmp{os.getpid()}')
  tmp.write_text(''.join(t + '\n' for t in tokens), encoding='utf-8')
  os.replace(tmp, out_path)  # atomic: a reader never sees a half-written vocab
  if len(tokens) != vocab_size:
    import sys  # pylint: disable=g-import-not-at-top
    why = (f'the corpus has {len(alphabet)} distinct characters, which the vocab must all '
           'hold (alone, and as ##continuations where they follow another)'
           if len(tokens) > vocab_size else
           f'the corpus has too few distinct words seen at least min_frequency={min_frequency} '
           'times')
    print(f'warning: {out_path} has {len(tokens)} tokens, not the {vocab_size} asked for: {why}; '
          f'set model.vocab_size={len(tokens)} to train with it', file=sys.stderr, flush=True)
  return out_path


def define_flags():
  flags.DEFINE_list('input', None, 'Files, globs or directories (comma-separated).')
  flags.DEFINE_integer('vocab_size', None, 'Size of the vocab to train.')
  flags.DEFINE_string('output', None, 'Path of the vocab.txt to write.')
  flags.DEFINE_bool('lowercase', True, '--nolowercase: a cased vocab (no lower-casing or '
                    'accent stripping).')
  flags.DEFINE_integer('min_frequency', 2, 'Minimum count of a merged word piece.')
  flags.DEFINE_float('max_undecodable_fraction', MAX_UNDECODABLE_FRACTION,
                     'Refuse input with more than this share of lines that are not UTF-8.')


def main(argv) -> None:
  """python -m electra_jax.data.tokenizer train --input=GLOB --vocab_size=N --output=vocab.txt."""
  f = flags.FLAGS
  if argv[1:] != ['train']:
    raise cli.UsageError(f'expected the command `train`; got {argv[1:]}')
  cli.require(input=f.input, vocab_size=f.vocab_size, output=f.output)
  files = expand_inputs(f.input)
  out = train_wordpiece(files, f.vocab_size, f.output, lowercase=f.lowercase,
                        min_frequency=f.min_frequency,
                        max_undecodable_fraction=f.max_undecodable_fraction)
  n = len(read_vocab(out))
  print(f'wrote {out}: {n} tokens (hash {vocab_hash(read_vocab(out))}) from {len(files)} file(s)')


if __name__ == '__main__':
  cli.run(main, define_flags)
