"""WordPiece tokenizer: parity with transformers' BertTokenizer, vocab checks, training."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from electra_jax.data import tokenizer as tok_lib
from electra_jax.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece

import conftest

SHARED = conftest.DATA_ROOT  # ELECTRA_JAX_DATA
BERT_VOCAB = SHARED / 'vocab' / 'bert-base-uncased-vocab.txt'

_FIXED = [
    'Hello, world!', 'The quick brown fox jumps over the lazy dog.',
    'Héllo wörld, café naïve résumé coöperate façade Ångström.',
    "Don't stop-believing; it's 3.14159 (approx.) — right?", 'ÀÉÎÕÜ àéîõü ÇçÑñ ßẞ',
    '東京は日本の首都です。北京是中国的首都。', '한국어 문장도 있습니다.', 'Ελληνικά και русский текст.',
    'supercalifragilisticexpialidocious antidisestablishmentarianism',
    'x' * 101 + ' short', 'y' * 100, 'a\tb\nc\r\nd   e', '\u200bzero\u200bwidth\u00a0nbsp',
    'emoji 😀👍🏽 and symbols ©®™ § ¶ • … ‰', 'math: a+b=c, x^2 ≤ y², ∑ ∫ √', 'urls: https://example.com/a?b=c&d=e#f',
    'e-mail: someone@example.org', '$100 €20 £5 ¥1000', 'CamelCaseWordsAndALLCAPS', 'under_score and hy-phen',
    '""quotes"" ‘single’ “double” «guillemets»', 'control\x00chars\x07here\ufffd', '', '   ', '...!!!???',
    'ascii\tcontrols\x0bvt\x0cff\x1fus\x7fdel\rcr\x01soh end', 'İstanbul ıi', 'ﬁne ligature ﬀ', 'Ⅻ roman ① circled', 'Mixed 中文 and English words together.',
]
_WORDS = ('the of and to in is was for on that with as by at from his an were are which this be or has '
          'university government international electricity photosynthesis unbelievable reconsideration '
          'élan déjà-vu über jalapeño piñata smörgåsbord crème brûlée').split()
_PUNCT = list('.,;:!?()[]{}"\'-/\\@#$%^&*_+=<>|~`')
_CJK = list('的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年')


def _sentences(n=300, seed=0):
  rng = random.Random(seed)
  out = list(_FIXED)
  while len(out) < n:
    parts = []
    for _ in range(rng.randint(1, 25)):
      r = rng.random()
      if r < 0.6:
        w = rng.choice(_WORDS)
        parts.append(w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.2 else w)
      elif r < 0.75:
        parts.append(rng.choice(_PUNCT))
      elif r < 0.85:
        parts.append(''.join(rng.choice(_CJK) for _ in range(rng.randint(1, 4))))
      elif r < 0.93:
        parts.append(str(rng.randint(0, 10**6)))
      else:
        parts.append(''.join(rng.choice('abcdefghijklmnopqrstuvwxyzé') for _ in range(rng.randint(8, 120))))
    out.append((' ' if rng.random() < 0.8 else '').join(parts))
  return out


def _reference_tokenizers(vocab_path):
  """transformers' Python BERT tokenizer (the 'slow' one) and its BertTokenizer class."""
  import transformers
  refs = [transformers.BertTokenizer(str(vocab_path), do_lower_case=True)]
  try:  # transformers >= 5 keeps the pure-Python tokenizer under this name
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    refs.append(BertTokenizerLegacy(str(vocab_path), do_lower_case=True))
  except ImportError:
    pass
  return refs


def _check_parity(vocab_path, sentences):
  ours = WordPieceTokenizer.from_vocab(vocab_path)
  batch = ours.encode_batch(sentences)
  for ref in _reference_tokenizers(vocab_path):
    for s, ids in zip(sentences, batch):
      want = ref.convert_tokens_to_ids(ref.tokenize(s))
      assert ours.encode(s) == want, (type(ref).__name__, s, ours.tokenize(s), ref.tokenize(s))
      assert ids == want


@pytest.fixture(scope='module')
def small_vocab(tmp_path_factory):
  d = tmp_path_factory.mktemp('vocab')
  corpus = d / 'corpus.txt'
  corpus.write_text('\n'.join(_sentences(400, seed=1)) + '\n', encoding='utf-8')
  return train_wordpiece(str(corpus), 600, d / 'vocab.txt')


def test_parity_with_built_vocab(small_vocab):
  _check_parity(small_vocab, _sentences(300, seed=2))


@pytest.mark.skipif(not BERT_VOCAB.exists(), reason='shared BERT vocab not present')
def test_parity_with_bert_uncased_vocab():
  _check_parity(BERT_VOCAB, _sentences(300, seed=3))
  tok = WordPieceTokenizer.from_vocab(BERT_VOCAB)
  assert (tok.vocab_size, tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
      30522, 0, 100, 101, 102, 103)
  assert tok.tokenize('unaffable') == ['una', '##ffa', '##ble']


def test_trained_vocab_layout_and_determinism(small_vocab, tmp_path):
  tokens = tok_lib.read_vocab(small_vocab)
  assert tuple(tokens[:5]) == SPECIAL_TOKENS
  assert len(tokens) <= 600 and len(set(tokens)) == len(tokens)
  assert any(t.startswith('##') for t in tokens)
  tok = WordPieceTokenizer.from_vocab(small_vocab)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  corpus = tmp_path / 'c.txt'
  corpus.write_text('\n'.join(_sentences(400, seed=1)) + '\n', encoding='utf-8')
  again = train_wordpiece(str(corpus), 600, tmp_path / 'v2.txt')
  assert again.read_bytes() == Path(small_vocab).read_bytes()
  # An iterator of lines gives the same vocab as the file.
  it = train_wordpiece(iter(_sentences(400, seed=1)), 600, tmp_path / 'v3.txt')
  assert it.read_bytes() == Path(small_vocab).read_bytes()


def test_vocab_hash_changes_with_order(small_vocab, tmp_path):
  tokens = tok_lib.read_vocab(small_vocab)
  swapped = tokens[:5] + [tokens[6], tokens[5]] + tokens[7:]
  assert WordPieceTokenizer(tokens).vocab_hash != WordPieceTokenizer(swapped).vocab_hash
  assert len(WordPieceTokenizer(tokens).vocab_hash) == 16


def test_missing_special_tokens_error(tmp_path):
  p = tmp_path / 'bad_vocab.txt'
  p.write_text('[PAD]\n[UNK]\n[CLS]\nhello\nworld\n', encoding='utf-8')
  with pytest.raises(ValueError) as e:
    WordPieceTokenizer.from_vocab(p)
  msg = str(e.value)
  assert '\n' not in msg and str(p) in msg and '[SEP]' in msg and '[MASK]' in msg and "'[PAD]'" not in msg.split('lacks')[1].split(';')[0]
  with pytest.raises(FileNotFoundError, match='nope.txt'):
    WordPieceTokenizer.from_vocab(tmp_path / 'nope.txt')


def test_train_cli(tmp_path):
  d = tmp_path / 'corpus'
  d.mkdir()
  for i in range(2):
    (d / f'part{i}.txt').write_text('\n'.join(_sentences(150, seed=10 + i)) + '\n', encoding='utf-8')
  out = tmp_path / 'vocab.txt'
  r = subprocess.run([sys.executable, '-m', 'electra_jax.data.tokenizer', 'train', '--input',
                      str(d / '*.txt'), '--vocab_size', '300', '--output', str(out)],
                     capture_output=True, text=True, cwd=Path(__file__).parents[1])
  assert r.returncode == 0, r.stderr
  assert tuple(tok_lib.read_vocab(out)[:5]) == SPECIAL_TOKENS
  r = subprocess.run([sys.executable, '-m', 'electra_jax.data.tokenizer', 'train', '--input',
                      str(tmp_path / 'missing*.txt'), '--vocab_size', '300', '--output', str(out)],
                     capture_output=True, text=True, cwd=Path(__file__).parents[1])
  assert r.returncode != 0 and 'missing*.txt' in r.stderr and 'Traceback' not in r.stderr


ENWIKI = SHARED / 'corpus' / 'enwiki-2015-wikiextractor-sample' / 'wiki_en_03.txt'


@pytest.mark.skipif(not (BERT_VOCAB.exists() and ENWIKI.exists()), reason='shared data not present')
def test_parity_on_real_wikipedia_lines():
  with open(ENWIKI, encoding='utf-8') as f:
    lines = [line.strip() for _, line in zip(range(4000), f) if line.strip()]
  rng = random.Random(0)
  sample = rng.sample(lines, 150)
  sample = [s[:2000] for s in sample]  # keep the pure-Python reference fast
  _check_parity(BERT_VOCAB, sample)
