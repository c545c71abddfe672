"""Hugging Face Hub ids as starting weights, from the local HF cache only (a fake cache here)."""

import pytest

from electra_jax.io import weights
from test_finetune import VOCAB

transformers = pytest.importorskip('transformers')
huggingface_hub = pytest.importorskip('huggingface_hub')

COMMIT = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """A cache laid out as huggingface_hub writes it, holding one tiny ELECTRA."""
  cache = tmp_path / 'hub'
  repo = cache / 'models--someone--electra-tiny'
  snap = repo / 'snapshots' / COMMIT
  cfg = transformers.ElectraConfig(vocab_size=len(VOCAB), embedding_size=16, hidden_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)
  transformers.ElectraForPreTraining(cfg).save_pretrained(snap)
  (snap / 'vocab.txt').write_text('\n'.join(VOCAB) + '\n')
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text(COMMIT)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  return snap


def test_cached_hub_id_loads(hub_cache):
  ckpt = weights.load('someone/electra-tiny')
  assert ckpt.kind == 'huggingface' and ckpt.path == str(hub_cache)
  assert set(ckpt.params) == {'embeddings', 'discriminator'}
  assert ckpt.model_config['hidden_size'] == 32 and ckpt.vocab == hub_cache / 'vocab.txt'


def test_uncached_hub_id_names_the_download_command(hub_cache):
  with pytest.raises(FileNotFoundError, match=r'train\.init_from=someone/other: .*not in the '
                     r'local cache .*huggingface-cli download someone/other'):
    weights.load('someone/other')


def test_paths_are_not_hub_ids(tmp_path, hub_cache):
  with pytest.raises(FileNotFoundError, match='no such file or directory'):
    weights.load(tmp_path / 'missing' / 'dir')
  assert weights.resolve_hub_id('./a') is None and weights.resolve_hub_id('a/b/c') is None
