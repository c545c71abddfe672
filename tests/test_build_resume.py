"""The builder at scale: a build split over machines and merged, or killed and rerun, is
byte-identical to one clean build; half-written shards never stay."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest

from electra_jax.data import corpus, shards
from electra_jax.data.loader import make_pretraining_data
from electra_jax.data.tokenizer import SPECIAL_TOKENS

WORDS = [f'w{i}' for i in range(300)]
REPO = Path(__file__).resolve().parents[1]
SHARDS = 5


def _files(d: Path) -> dict:
  """Every file of a build (but the timings) -> its bytes."""
  return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob('*'))
          if p.is_file() and p.name != 'build_stats.json'}


def _cli(*args, unit_sleep=0.0):
  """`python -m electra_jax.data.corpus ARGS` with 4 KB work units (optionally slowed down)."""
  code = ('import sys, time; from electra_jax import cli; from electra_jax.data import corpus as c; '
          f'c.UNIT_BYTES = 4096; slow = c._process_unit; '
          f'c._process_unit = lambda a: (time.sleep({unit_sleep}), slow(a))[1]; '
          'sys.argv[0] = "corpus"; cli.run(c.main, c.define_flags)')
  return subprocess.Popen([sys.executable, '-c', code, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp('build')
  (d / 'vocab.txt').write_text('\n'.join(list(SPECIAL_TOKENS) + WORDS) + '\n')
  rng = random.Random(0)
  for f in range(3):
    docs = ['\n'.join(' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
                      for _ in range(rng.randint(2, 15))) for _ in range(120)]
    (d / f'c{f}.txt').write_text('\n\n'.join(docs) + '\n')
  return d


def _args(inputs, out, *extra):
  # 3 files of ~30 KB in units of 4 KB: ~20 units over 5 shards.
  return ['--input', str(inputs / 'c*.txt'), '--vocab', str(inputs / 'vocab.txt'), '--output',
          str(out), '--seq_len', '32', '--num_shards', str(SHARDS), '--num_workers', '1',
          '--eval_fraction', '0.2', *extra]


def _run(inputs, out, *extra):
  p = _cli(*_args(inputs, out, *extra))
  out_text, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out_text
  return out_text


def test_split_build_and_merge_equals_one_build(inputs, tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  _run(inputs, one)
  for q in range(2):
    said = _run(inputs, two, '--process_index', str(q), '--process_count', '2')
    assert f'process {q} of 2 wrote its shards' in said
  assert not (two / 'metadata.json').exists()
  _run(inputs, two, '--merge')
  a, b = _files(one), _files(two)
  assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
  meta = json.loads(a['metadata.json'])
  assert meta['num_shards'] == SHARDS and sum(meta['shard_examples']) == meta['num_examples']
  assert sum(c > 0 for c in meta['shard_examples']) >= 4  # the units spread over the shards
  assert not (one / shards.BUILD_DIR).exists()
  # Training reads a prebuilt directory as data.source='shards:DIR'.
  cfg = ml_collections.ConfigDict(dict(source=f'shards:{one}', vocab=str(inputs / 'vocab.txt'),
                                       lowercase=True, eval_fraction=0.2, num_shards=0,
                                       num_workers=0))
  pd = make_pretraining_data(cfg, 32, 8, 4, 0, tmp_path / 'cache')
  assert pd.data_dir == one and not list((tmp_path / 'cache').glob('pretrain-*'))
  assert next(pd.train)['input_ids'].shape == (8, 32) and next(pd.eval)['weights'].shape == (4,)
  cfg.source = f'shards:{tmp_path / "nowhere"}'
  with pytest.raises(FileNotFoundError, match='build the shards first'):
    make_pretraining_data(cfg, 32, 8, 4, 0, tmp_path / 'cache')


def test_killed_build_resumes_to_the_same_bytes(inputs, tmp_path):
  clean, killed = tmp_path / 'clean', tmp_path / 'killed'
  _run(inputs, clean)
  # Slow each unit down so that the kill lands mid-build, after some shards are complete.
  p = _cli(*_args(inputs, killed), unit_sleep=0.3)
  deadline = time.time() + 120
  while time.time() < deadline and not (killed / shards.BUILD_DIR / 'part-00001.json').exists():
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=30)
  done = sorted(x.name for x in (killed / shards.BUILD_DIR).glob('part-*.json'))
  assert 2 <= len(done) < SHARDS, done
  assert not (killed / 'metadata.json').exists()
  said = _run(inputs, killed)
  assert f'{len(done)} of this process\'s {SHARDS} shards are complete' in said
  a, b = _files(clean), _files(killed)
  assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
  assert not list(killed.rglob(shards.TMP_PREFIX + '*'))


def test_a_corrupt_complete_shard_is_rebuilt_and_other_settings_refused(inputs, tmp_path):
  out = tmp_path / 'o'
  for q in range(2):
    _run(inputs, out, '--process_index', str(q), '--process_count', '2')
  shard = out / shards.shard_name('train', 0, SHARDS)
  good = shard.read_bytes()
  shard.write_bytes(good[:-10] + b'0123456789')  # same size, other bytes
  p = _cli(*_args(inputs, out, '--merge'))
  said, _ = p.communicate(timeout=300)
  assert p.returncode != 0 and '1 of 5 shards are not complete (shard 0)' in said
  _run(inputs, out, '--process_index', '0', '--process_count', '2')  # rebuilds shard 0 only
  assert shard.read_bytes() == good
  p = _cli(*_args(inputs, out, '--seq_len', '64'))
  said, _ = p.communicate(timeout=300)
  assert p.returncode != 0 and 'partial build with other settings (max_seq_length' in said


def test_interrupt_leaves_only_complete_shards(inputs, tmp_path, monkeypatch):
  from electra_jax.data.tokenizer import WordPieceTokenizer
  tok = WordPieceTokenizer.from_vocab(inputs / 'vocab.txt')
  monkeypatch.setattr(corpus, 'UNIT_BYTES', 4096)
  real, calls = corpus._ShardWriter.write, []

  def dying_write(self, *a):
    calls.append(1)
    real(self, *a)
    if len(calls) == 12:
      raise KeyboardInterrupt
  monkeypatch.setattr(corpus._ShardWriter, 'write', dying_write)
  with pytest.raises(KeyboardInterrupt):
    corpus.build_pretraining_data(str(inputs / 'c*.txt'), tok, tmp_path / 'o', max_seq_length=32,
                                  num_shards=SHARDS, eval_fraction=0.2, progress=False)
  left = sorted(p.name for p in (tmp_path / 'o').rglob('*.array_record'))
  parts = sorted((tmp_path / 'o' / shards.BUILD_DIR).glob('part-*.json'))
  assert parts and len(left) == 2 * len(parts)  # train + eval of each complete shard, no more
  assert not list((tmp_path / 'o').rglob(shards.TMP_PREFIX + '*'))
