"""Checkpointer: sharded round trip, keep-K, corrupt/partial fallback; params export."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from electra_jax.io import checkpoint
from electra_jax import sharding
from electra_jax.pretrain import loop


def _mesh():
  return sharding.make_mesh(type('M', (), {'data': 4, 'fsdp': 2})())


def _state(mesh, seed):
  """A TrainState whose leaves are sharded like a real one (FSDP split + replicated)."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  split, repl = NamedSharding(mesh, P('fsdp')), NamedSharding(mesh, P())
  params = {'w': jax.device_put(jax.random.normal(k1, (8, 3)), split),
            'b': jax.device_put(jax.random.normal(k2, (3,)), repl)}
  opt = (jax.device_put(jnp.int32(seed), repl), jax.tree.map(jnp.zeros_like, params))
  return loop.TrainState(step=jax.device_put(jnp.int32(seed), repl), params=params,
                          opt_state=opt)


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_equal_trees(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_values_shardings_loader_and_rng(tmp_path):
  mesh = _mesh()
  state = _state(mesh, 3)
  rng = jax.random.fold_in(jax.random.key(7), 1)
  ck = checkpoint.Checkpointer(tmp_path, keep=2, abstract_state=_abstract(state))
  assert ck.restore_latest() is None  # fresh workdir
  assert ck.save(3, state, {'step': 3, 'seed': 0}, rng, {'vocab_hash': 'abc'})
  assert not ck.save(3, state, {'step': 3}, rng)  # an existing step is not overwritten
  ck.close()

  ck = checkpoint.Checkpointer(tmp_path, keep=2, abstract_state=_abstract(state))
  r = ck.restore_latest()
  ck.close()
  assert r.step == 3 and r.loader_state == {'step': 3, 'seed': 0}
  assert r.meta['vocab_hash'] == 'abc'
  _assert_equal_trees(r.state, state)
  assert r.state.params['w'].sharding == state.params['w'].sharding
  np.testing.assert_array_equal(jax.random.key_data(r.rng), jax.random.key_data(rng))
  # The restored key draws the same numbers.
  np.testing.assert_array_equal(jax.random.uniform(r.rng, (4,)), jax.random.uniform(rng, (4,)))


def test_keeps_the_last_k(tmp_path):
  mesh = _mesh()
  ck = checkpoint.Checkpointer(tmp_path, keep=2, abstract_state=_abstract(_state(mesh, 1)))
  for s in (1, 2, 3):
    ck.save(s, _state(mesh, s), {'step': s}, jax.random.key(0))
  ck.wait()
  assert ck.all_steps() == [2, 3]
  ck.close()


def _corrupt(step_dir):
  """Overwrites every file of a checkpoint's state item with garbage of the same size."""
  n = 0
  for root, _, files in os.walk(step_dir / 'state'):
    for f in files:
      p = os.path.join(root, f)
      size = max(os.path.getsize(p), 16)
      with open(p, 'wb') as fh:
        fh.write(b'\x13garbage' * (size // 8 + 1))
      n += 1
  assert n > 0


def test_corrupt_latest_falls_back_to_previous(tmp_path, capsys):
  mesh = _mesh()
  ck = checkpoint.Checkpointer(tmp_path, keep=3, abstract_state=_abstract(_state(mesh, 1)))
  for s in (1, 2):
    ck.save(s, _state(mesh, s), {'step': s}, jax.random.key(0))
  ck.close()
  _corrupt(tmp_path / 'checkpoints' / '2')
  # A partial save (killed before the rename) is a tmp dir: never a candidate.
  (tmp_path / 'checkpoints' / '5.orbax-checkpoint-tmp-123').mkdir()

  ck = checkpoint.Checkpointer(tmp_path, keep=3, abstract_state=_abstract(_state(mesh, 1)))
  r = ck.restore_latest()
  assert r.step == 1
  _assert_equal_trees(r.state, _state(mesh, 1))
  assert 'checkpoint at step 2 is corrupt or partial' in capsys.readouterr().out
  moved = list((tmp_path / checkpoint.CORRUPT_DIR).iterdir())
  assert [p.name.split('-')[0] for p in moved] == ['2']
  # The step can be saved again after the fallback.
  assert ck.save(2, _state(mesh, 2), {'step': 2}, jax.random.key(0))
  ck.close()
  assert ck.all_steps() == [1, 2]


def test_all_corrupt_raises_instead_of_restarting(tmp_path):
  mesh = _mesh()
  ck = checkpoint.Checkpointer(tmp_path, keep=3, abstract_state=_abstract(_state(mesh, 1)))
  ck.save(1, _state(mesh, 1), {'step': 1}, jax.random.key(0))
  ck.close()
  _corrupt(tmp_path / 'checkpoints' / '1')
  ck = checkpoint.Checkpointer(tmp_path, keep=3, abstract_state=_abstract(_state(mesh, 1)))
  with pytest.raises(ValueError, match='none of the 1 checkpoints'):
    ck.restore_latest()
  ck.close()


def test_export_and_load_exported(tmp_path):
  mesh = _mesh()
  state = _state(mesh, 4)
  towers = {'discriminator': {'embeddings': state.params['w'], 'discriminator': state.params['b']},
            'generator': {'generator': state.params['b']}}
  cfg = {'model': {'vocab_size': 8}, 'tokens': {'pad_id': 0}, 'step': 4}
  checkpoint.export_params(tmp_path / 'export', towers, cfg, ['[PAD]', 'a'])
  got_cfg, params = checkpoint.load_exported(tmp_path / 'export')
  assert got_cfg == cfg
  np.testing.assert_array_equal(params['embeddings'], np.asarray(state.params['w']))
  _, gen = checkpoint.load_exported(tmp_path / 'export', which='generator')
  np.testing.assert_array_equal(gen['generator'], np.asarray(state.params['b']))
  assert (tmp_path / 'export' / 'vocab.txt').read_text() == '[PAD]\na\n'
  assert json.loads((tmp_path / 'export' / 'model_config.json').read_text())['step'] == 4
  with pytest.raises(FileNotFoundError, match='model_config.json'):
    checkpoint.load_exported(tmp_path)
  with pytest.raises(ValueError, match='which='):
    checkpoint.load_exported(tmp_path / 'export', which='both')
