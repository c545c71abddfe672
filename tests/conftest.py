"""Test setup: 8 fake CPU devices so sharded code paths run on any machine."""

import os
import sys
from pathlib import Path

# Must happen before jax is imported anywhere. Benchmarks and real runs keep XLA's default
# optimization level; at the tests' level 0, numbers change in the last bits at most.
from runtime_util import xla_flags
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags(8)).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402


def _compilation_cache():
  """Programs compiled again in this session (the same tiny step in many tests) load from a
  persistent compilation cache, fresh per session, instead of compiling again: ~2 s instead of
  ~20 s of CPU for a train step. A cache dir set by the caller is kept."""
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return
  path = tempfile.mkdtemp(prefix='electra_jax_test_session_jit_')
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  jax.config.update('jax_compilation_cache_dir', path)


_compilation_cache()

# The public data (GLUE TSVs, SQuAD, the Wikipedia sample, the BERT vocab, CoNLL-2000) for
# the optional tests on real data: its root in ELECTRA_JAX_DATA; they skip without it.
DATA_ROOT = Path(os.environ.get('ELECTRA_JAX_DATA') or REPO / 'data')
SHARED_DATA = DATA_ROOT


@pytest.fixture
def shared_data():
  """The public data root (ELECTRA_JAX_DATA); skips when absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} not present')
  return SHARED_DATA


def tiny_config(arg='tiny', **overrides):
  """The real pretrain config at size tiny, shrunk further for unit tests."""
  from configs import pretrain
  c = pretrain.get_config(arg)
  c.train.batch_size = 8
  c.train.seq_len = 32
  c.model.num_layers = 2
  c.model.vocab_size = 128
  c.update_from_flattened_dict(overrides)  # {'train.seq_len': 32, ...}
  return c
