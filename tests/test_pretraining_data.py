"""Pre-training example builder: packing rules, determinism, bad inputs, the TFDS path."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from electra_jax.data import corpus
from electra_jax.data.loader import load_examples, read_metadata
from electra_jax.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

WORDS = [f'w{i}' for i in range(400)]
CLS, SEP = 2, 3


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp('vocab') / 'vocab.txt'
  path.write_text('\n'.join(list(SPECIAL_TOKENS) + WORDS) + '\n')
  return WordPieceTokenizer.from_vocab(path)


def _corpus(num_docs=120, seed=0, min_sent=2, max_sent=9, sents=(20, 60)):
  """Documents of random one-token words; returns list of docs, each a list of sentences."""
  rng = random.Random(seed)
  return [[' '.join(rng.choice(WORDS) for _ in range(rng.randint(min_sent, max_sent)))
           for _ in range(rng.randint(*sents))] for _ in range(num_docs)]


def _write(path, docs):
  path.write_text('\n\n'.join('\n'.join(d) for d in docs) + '\n', encoding='utf-8')
  return path


def _examples(out_dir):
  meta = read_metadata(out_dir)
  ids, seg, lengths = load_examples(out_dir, meta)
  return meta, [(ids[i, :n], seg[i, :n]) for i, n in enumerate(lengths)]


def _match(seq, sents, start, partial):
  """Sentence indices (from `start`) whose in-order concatenation is `seq` (last may be cut)."""
  pos, used = 0, []
  for i in range(start, len(sents)):
    s = sents[i]
    if pos == len(seq):
      break
    if seq[pos:pos + len(s)] == s:
      used.append(i)
      pos += len(s)
    elif partial and len(seq) - pos < len(s) and s[:len(seq) - pos] == seq[pos:]:
      used.append(i)
      pos = len(seq)
  return used if pos == len(seq) else None


def _segments_match(a, b, sents):
  for start in range(len(sents)):
    if sents[start] != a[:len(sents[start])] and not (not b and a == sents[start][:len(a)]):
      continue
    ua = _match(a, sents, start, partial=not b)
    ub = _match(b, sents, start, partial=True) if b else []
    if ua is None or ub is None:
      continue
    used = sorted(ua + ub)
    if used == list(range(used[0], used[0] + len(used))) and (not ub or ub[0] > ua[0]):
      return True
  return False


def _build(src, tok, out, **kw):
  kw.setdefault('num_shards', 3)
  kw.setdefault('num_workers', 1)
  return corpus.build_pretraining_data(str(src), tok, out, progress=False, **kw)


def test_packing_rules(tok, tmp_path):
  docs = _corpus()
  _build(_write(tmp_path / 'c.txt', docs), tok, tmp_path / 'out', max_seq_length=64)
  meta, exs = _examples(tmp_path / 'out')
  assert meta['num_examples'] == len(exs) > 300
  doc_ids = [[[tok.vocab[w] for w in sent.split()] for sent in d] for d in docs]
  single = 0
  for ids, seg in exs:
    n = len(ids)
    assert 3 <= n <= 64 and ids[0] == CLS and ids[-1] == SEP
    seps = np.flatnonzero(ids == SEP)
    assert len(seps) in (1, 2) and CLS not in ids[1:]
    # segment 0 up to and including the first [SEP], segment 1 after it (B and its [SEP]).
    np.testing.assert_array_equal(seg, (np.arange(n) > seps[0]).astype(np.int32))
    single += len(seps) == 1
    a, b = ids[1:seps[0]].tolist(), ids[seps[0] + 1:-1].tolist()
    # A and B are whole sentences of one document, in order, together a contiguous run of its
    # sentences (a later short sentence may join A after B started: the official rule);
    # only the segment that hits max_seq_length is cut mid-sentence.
    assert any(_segments_match(a, b, d) for d in doc_ids), (a, b)
  # 10% single-segment by rule, plus short examples that hold one sentence only.
  assert 0.08 <= single / len(exs) <= 0.2, single / len(exs)
  assert meta['num_single_segment'] == single


def test_example_builder_split_and_target_lengths():
  """One-token sentences make the official rules exact: A gets 61 or 62 tokens at length 128."""
  b = corpus.ExampleBuilder(128, random.Random(0))
  out, targets = [], []
  for i in range(200_000):
    target = b._target_length
    e = b.add_line([5])
    if e is not None:
      out.append(e)
      targets.append(target)
  a_len = np.array([len(a) for a, _ in out])
  b_len = np.array([len(bb) for _, bb in out])
  total, targets = a_len + b_len, np.array(targets)
  full_two = (targets == 128) & (b_len > 0)
  assert set(a_len[full_two]) == {61, 62}
  assert abs((a_len[full_two] == 62).mean() - 0.5) < 0.05  # the 50% rule
  # truncated to fit the specials: [CLS] A [SEP] B [SEP] <= 128, [CLS] A [SEP] <= 128
  assert total[b_len > 0].max() == 125 and total[b_len == 0].max() == 126
  single = (b_len == 0).mean()
  assert 0.08 < single < 0.13, single  # 10% single segment (plus very short random targets)
  short = (targets < 128).mean()
  assert 0.03 < short < 0.07, short  # 5% random shorter target lengths in [5, 128]
  assert targets.min() >= 5 and (total == np.minimum(targets, np.where(b_len > 0, 125, 126))).all()


def test_deterministic_across_workers_and_seed(tok, tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, 'UNIT_BYTES', 4096)  # several units, so workers share work
  src = _write(tmp_path / 'c.txt', _corpus(200, seed=1))
  _build(src, tok, tmp_path / 'a', seed=3)
  _build(src, tok, tmp_path / 'b', seed=3, num_workers=2)
  _build(src, tok, tmp_path / 'c', seed=4)
  names = sorted(p.name for p in (tmp_path / 'a').iterdir() if p.name != 'build_stats.json')
  assert len(names) == 4 and names == sorted(p.name for p in (tmp_path / 'b').iterdir() if p.name != 'build_stats.json')
  for n in names:
    assert (tmp_path / 'a' / n).read_bytes() == (tmp_path / 'b' / n).read_bytes(), n
  shards = [n for n in names if n.endswith('.array_record')]
  assert any((tmp_path / 'a' / n).read_bytes() != (tmp_path / 'c' / n).read_bytes() for n in shards)


def test_eval_split_by_document_hash(tok, tmp_path):
  docs = _corpus(150, seed=2, sents=(3, 6))
  meta = _build(_write(tmp_path / 'c.txt', docs), tok, tmp_path / 'out', eval_fraction=0.3)
  ev_meta, ev = _examples(tmp_path / 'out' / 'eval')
  _, tr = _examples(tmp_path / 'out')
  assert meta['num_examples'] == len(tr) and ev_meta['num_examples'] == len(ev) > 0
  assert 0.15 < len(ev) / (len(ev) + len(tr)) < 0.45
  held = [corpus._is_eval(d, 0.3) for d in docs]
  streams = [' ' + ' '.join(str(tok.vocab[w]) for s in d for w in s.split()) + ' ' for d in docs]
  for split, exs in (('eval', ev), ('train', tr)):
    for ids, _ in exs[:50]:
      text = ' ' + ' '.join(str(t) for t in ids if t not in (CLS, SEP)) + ' '
      owners = {held[i] for i, s in enumerate(streams) if text in s}
      assert owners == {split == 'eval'}


def test_bad_inputs(tok, tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    _build(tmp_path / 'nowhere' / '*.txt', tok, tmp_path / 'o1')
  (tmp_path / 'blank.txt').write_text('\n\n   \n\n')
  with pytest.raises(ValueError, match='empty corpus'):
    _build(tmp_path / 'blank.txt', tok, tmp_path / 'o2')
  assert not (tmp_path / 'o2').exists()  # nothing half-written is left behind
  (tmp_path / 'tiny.txt').write_text('\x01\x02\n\n\x03\n')
  with pytest.raises(ValueError, match='too short to make any'):
    _build(tmp_path / 'tiny.txt', tok, tmp_path / 'o3')
  with pytest.raises(ValueError, match='not available offline.*no_such_dataset_xyz|no_such_dataset_xyz.*not available'):
    _build('tfds:no_such_dataset_xyz:text', tok, tmp_path / 'o4', tfds_data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='tfds:NAME'):
    _build('tfds:only_name', tok, tmp_path / 'o5')


def test_invalid_utf8_is_skipped_and_counted(tok, tmp_path, capsys):
  p = tmp_path / 'bad.txt'
  p.write_bytes(b'w1 w2 w3\nw4 \xff\xfe w5\nw6 w7\n\nw8 w9 w10\n')
  meta = _build(p, tok, tmp_path / 'out')
  assert meta['invalid_utf8_lines'] == 1
  err = capsys.readouterr().err
  assert f'{p}:2' in err and 'invalid UTF-8' in err
  _, exs = _examples(tmp_path / 'out')
  tokens = sorted(t for ids, _ in exs for t in ids if t not in (CLS, SEP))
  assert tokens == sorted(tok.vocab[f'w{i}'] for i in (1, 2, 3, 6, 7, 8, 9, 10))


def test_cli_errors_are_one_line(tok, tmp_path):
  vocab = tmp_path / 'v.txt'
  vocab.write_text('\n'.join(tok.tokens) + '\n')
  root = Path(__file__).parents[1]
  r = subprocess.run([sys.executable, '-m', 'electra_jax.data.corpus', '--input', str(tmp_path / 'missing.txt'),
                      '--vocab', str(vocab), '--output', str(tmp_path / 'o'), '--num_workers', '1'],
                     capture_output=True, text=True, cwd=root)
  assert r.returncode != 0 and 'Traceback' not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith('error:') and 'missing.txt' in r.stderr
  src = _write(tmp_path / 'c.txt', _corpus(20))
  r = subprocess.run([sys.executable, '-m', 'electra_jax.data.corpus', '--input', str(src), '--vocab', str(vocab),
                      '--output', str(tmp_path / 'o'), '--num_shards', '2', '--num_workers', '1', '--seed', '1'],
                     capture_output=True, text=True, cwd=root)
  assert r.returncode == 0, r.stderr
  assert json.loads((tmp_path / 'o' / 'metadata.json').read_text())['num_shards'] == 2


def test_tfds_source_matches_text_files(tok, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  docs = _corpus(40, seed=5, sents=(3, 12))
  data_dir = tmp_path / 'tfds'
  tfds.dataset_builders.store_as_tfds_dataset(
      name='tiny_docs', version='1.0.0',
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
      split_datasets={'train': [(i, {'text': '\n'.join(d)}) for i, d in enumerate(docs)]},
      data_dir=str(data_dir), disable_shuffling=True)
  meta = _build('tfds:tiny_docs:text', tok, tmp_path / 'from_tfds', tfds_data_dir=str(data_dir), seed=7)
  _build(_write(tmp_path / 'c.txt', docs), tok, tmp_path / 'from_text', seed=7)
  assert meta['source'] == 'tfds:tiny_docs:text' and meta['num_documents'] == 40
  a, b = _examples(tmp_path / 'from_tfds')[1], _examples(tmp_path / 'from_text')[1]
  assert len(a) == len(b) > 0
  for (ia, sa), (ib, sb) in zip(a, b):  # one document per record gives the same examples
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(sa, sb)
  with pytest.raises(ValueError, match="no feature 'body'"):
    _build('tfds:tiny_docs:body', tok, tmp_path / 'o', tfds_data_dir=str(data_dir))
