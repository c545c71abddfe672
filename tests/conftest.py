"""Test setup: 8 fake CPU devices so sharded code paths run on any machine."""

import os
import sys
from pathlib import Path

# Must happen before jax is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture
def shared_data():
  """Path to ../shared/data (real public datasets); skips when absent."""
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
