"""PretrainingLoader: shapes, determinism, epochs, exact resume, per-host slices, eval padding."""

import json
import random

import ml_collections
import numpy as np
import pytest

from electra_jax.data import corpus
from electra_jax.data.loader import PretrainingLoader, make_pretraining_data
from electra_jax.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

SEQ = 32
WORDS = [f'w{i}' for i in range(300)]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp('loader')
  (d / 'vocab.txt').write_text('\n'.join(list(SPECIAL_TOKENS) + WORDS) + '\n')
  tok = WordPieceTokenizer.from_vocab(d / 'vocab.txt')
  rng = random.Random(0)
  docs = ['\n'.join(' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
                    for _ in range(rng.randint(2, 15))) for _ in range(150)]
  (d / 'c.txt').write_text('\n\n'.join(docs) + '\n')
  corpus.build_pretraining_data(str(d / 'c.txt'), tok, d / 'out', max_seq_length=SEQ,
                                     num_shards=3, num_workers=1, seed=0, progress=False)
  return d / 'out', tok


def _loader(data, batch=8, seed=0, **kw):
  kw.setdefault('process_index', 0)
  kw.setdefault('process_count', 1)
  return PretrainingLoader(data[0], batch, SEQ, seed, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _rows(batch):
  """Each row as bytes (ids + segments), to compare examples as sets."""
  return [batch['input_ids'][i].tobytes() + batch['segment_ids'][i].tobytes()
          for i in range(len(batch['input_ids']))]


def test_shapes_and_mask(data):
  ld = _loader(data)
  assert ld.num_examples > 100
  b = next(ld)
  assert set(b) == {'input_ids', 'input_mask', 'segment_ids'}
  for v in b.values():
    assert v.dtype == np.int32 and v.shape == (8, SEQ)
  # real tokens are never [PAD] (id 0), padding is zero everywhere
  np.testing.assert_array_equal(b['input_mask'], (b['input_ids'] != 0).astype(np.int32))
  assert (b['segment_ids'][b['input_mask'] == 0] == 0).all()
  assert (b['input_ids'][:, 0] == 2).all()  # [CLS]


def test_deterministic_and_seeded(data):
  a, b, c = _take(_loader(data), 5), _take(_loader(data), 5), _take(_loader(data, seed=1), 5)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x['input_ids'], y['input_ids']) for x, y in zip(a, c))


def test_epochs_cover_all_and_reshuffle(data):
  ld = _loader(data, batch=7)
  n = ld.num_examples
  steps = -(-2 * n // 7) + 1
  rows = [r for b in _take(ld, steps) for r in _rows(b)]
  everything = sorted(_rows({'input_ids': ld._ids, 'segment_ids': ld._seg.astype(np.int32)}))
  assert sorted(rows[:n]) == everything  # each example exactly once per epoch
  assert sorted(rows[n:2 * n]) == everything
  assert rows[:n] != rows[n:2 * n]  # a new permutation each epoch


def test_exact_resume(data):
  ref = _loader(data)
  expected = _take(ref, 12)
  first = _loader(data)
  _take(first, 7)
  state = json.loads(json.dumps(first.get_state()))  # plain JSON ints
  assert all(isinstance(v, int) for v in state.values())
  resumed = _loader(data)
  resumed.set_state(state)
  for want, got in zip(expected[7:], _take(resumed, 5)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  with pytest.raises(ValueError, match='seed'):
    _loader(data, seed=5).set_state(state)


def test_two_processes_split_each_global_batch(data):
  glob = _loader(data, batch=8)
  hosts = [_loader(data, batch=8, process_index=p, process_count=2) for p in range(2)]
  for _ in range(30):  # several epochs' worth of batch boundaries
    g = next(glob)
    parts = [next(h) for h in hosts]
    assert parts[0]['input_ids'].shape == (4, SEQ)
    for k in g:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k])
  # positions in the stream are disjoint between hosts
  p0, p1 = ({int(x) for s in range(3) for x in h._host_positions(s)} for h in hosts)
  assert not p0 & p1 and len(p0 | p1) == 24
  with pytest.raises(ValueError, match='multiple of process_count'):
    _loader(data, batch=7, process_index=0, process_count=2)


def test_eval_mode_pads_last_batch(data):
  for count in (1, 2):
    loaders = [_loader(data, batch=16, repeat=False, process_index=p, process_count=count)
               for p in range(count)]
    batches = [list(ld) for ld in loaders]
    n = loaders[0].num_examples
    assert all(len(b) == -(-n // 16) for b in batches)
    total = sum(float(b['weights'].sum()) for bs in batches for b in bs)
    assert total == n
    rows = [r for bs in batches for b in bs for r, w in zip(_rows(b), b['weights']) if w > 0]
    ld = loaders[0]
    assert sorted(rows) == sorted(_rows({'input_ids': ld._ids, 'segment_ids': ld._seg.astype(np.int32)}))
    last = batches[-1][-1]
    pad = last['weights'] == 0
    assert last['weights'].dtype == np.float32 and pad.any() or n % 16 == 0
    assert (last['input_ids'][pad] == 0).all() and (last['input_mask'][pad] == 0).all()


def test_refuses_mismatched_data(data):
  with pytest.raises(ValueError, match=r"vocab_hash is '[0-9a-f]+' but the config expects 'deadbeef'"):
    _loader(data, expected_vocab_hash='deadbeef')
  with pytest.raises(ValueError, match='max_seq_length is 32 but the config expects 64'):
    PretrainingLoader(data[0], 8, 64, 0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='vocab_size is 305 but the config expects 8192'):
    _loader(data, expected_vocab_size=8192)
  _loader(data, expected_vocab_hash=data[1].vocab_hash, expected_vocab_size=data[1].vocab_size)


def test_make_pretraining_data_builds_once(data, tmp_path):
  src = data[0].parent / 'c.txt'
  cfg = ml_collections.ConfigDict(dict(source=str(src), vocab=str(data[0].parent / 'vocab.txt'),
                                       lowercase=True, eval_fraction=0.2, num_shards=2, num_workers=1,
                                       tfds_data_dir=''))
  pd = make_pretraining_data(cfg, seq_len=SEQ, global_batch_size=8, eval_batch_size=6, seed=0,
                             cache_root=tmp_path)
  assert pd.data_dir.parent == tmp_path and (pd.data_dir / 'metadata.json').exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.tmp')]
  assert pd.train.repeat and pd.eval is not None and not pd.eval.repeat
  assert next(pd.eval)['input_ids'].shape == (6, SEQ)
  assert pd.tokenizer.vocab_hash == data[1].vocab_hash
  stamp = (pd.data_dir / 'metadata.json').stat().st_mtime_ns
  again = make_pretraining_data(cfg, SEQ, 8, 6, 0, tmp_path)
  assert again.data_dir == pd.data_dir and (pd.data_dir / 'metadata.json').stat().st_mtime_ns == stamp
  np.testing.assert_array_equal(next(again.train)['input_ids'], next(pd.train)['input_ids'])
  other = make_pretraining_data(cfg, SEQ, 8, 6, 1, tmp_path)  # another seed, another cache entry
  assert other.data_dir != pd.data_dir
  bad = ml_collections.ConfigDict(dict(source=str(src)))
  with pytest.raises(ValueError, match='lacks keys'):
    make_pretraining_data(bad, SEQ, 8, 6, 0, tmp_path)


def test_builtin_source_and_vocab(tmp_path):
  """The offline default: stdlib docstrings corpus + its 8192-token vocab, end to end."""
  cfg = ml_collections.ConfigDict(dict(source='builtin:python-docs', vocab='builtin', lowercase=True,
                                       eval_fraction=0.02, num_shards=2, num_workers=1, tfds_data_dir=''))
  pd = make_pretraining_data(cfg, seq_len=128, global_batch_size=4, eval_batch_size=4, seed=0,
                             cache_root=tmp_path)
  tok = pd.tokenizer
  assert (tok.vocab_size, tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (8192, 0, 1, 2, 3, 4)
  meta = pd.train.metadata
  assert meta['num_examples'] > 3000 and meta['vocab_hash'] == tok.vocab_hash
  assert pd.eval is not None and pd.eval.num_examples > 20
  ids = next(pd.train)['input_ids']
  text = tok.decode(ids[0][ids[0] > 0])
  assert text.startswith('[CLS]') and text.endswith('[SEP]')
  assert tok.encode('Return the number of items in the list.') != []
  assert tok.unk_id not in tok.encode('return a list of the values in the dictionary')


def test_interrupted_build_leaves_no_cache(data, tmp_path, monkeypatch):
  cfg = ml_collections.ConfigDict(dict(source=str(data[0].parent / 'c.txt'),
                                       vocab=str(data[0].parent / 'vocab.txt'), lowercase=True,
                                       eval_fraction=0.0, num_shards=2, num_workers=1, tfds_data_dir=''))
  real = corpus._ShardWriter.write
  calls = []

  def dying_write(self, *a):
    calls.append(1)
    if len(calls) == 1:
      real(self, *a)  # some shards are already written when the build dies
      raise KeyboardInterrupt
  monkeypatch.setattr(corpus._ShardWriter, 'write', dying_write)
  with pytest.raises(KeyboardInterrupt):
    make_pretraining_data(cfg, SEQ, 8, 8, 0, tmp_path)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(('pretrain-', '.tmp'))] == []
  monkeypatch.setattr(corpus._ShardWriter, 'write', real)
  pd = make_pretraining_data(cfg, SEQ, 8, 8, 0, tmp_path)
  assert pd.eval is None and next(pd.train)['input_ids'].shape == (8, SEQ)
