"""Exact resume of fine-tuning through `python -m electra_jax.finetune` (8 fake CPU devices).

One uninterrupted run is the reference. Against it: a run killed with SIGKILL and
started again with the same command, and a run stopped with SIGTERM (which saves
a checkpoint and exits 0) and started again, log bit-identical per-step losses
and per-epoch dev metrics and end with the same saved model.
"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

from runtime_util import REPO, env, wait_for_step
from test_finetune import _write_rte, _write_vocab

STEPS_PER_EPOCH, EPOCHS = 40, 2
NUM_STEPS = STEPS_PER_EPOCH * EPOCHS


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('ft_resume')
  _write_rte(root / 'data', n_train=STEPS_PER_EPOCH * 8, n_dev=24, n_test=0, n_long=2)
  return root


def _args(root, workdir):
  o = {'data.vocab': _write_vocab(root), 'data.data_dir': root / 'data', 'data.test_splits': '',
       'model.embedding_size': 16, 'model.hidden_size': 32, 'model.num_layers': 1,
       'model.num_heads': 2, 'model.intermediate_size': 64, 'model.max_position_embeddings': 64,
       'train.seq_len': 32, 'train.batch_size': 8, 'train.eval_batch_size': 8,
       'train.epochs': float(EPOCHS), 'train.log_every': 1, 'train.checkpoint_every': 10}
  return [sys.executable, '-m', 'electra_jax.finetune', '--config=configs/finetune.py:task=rte,'
          'size=tiny', f'--workdir={workdir}', '--noprogress',
          *[f'--config.{k}={v}' for k, v in o.items()]]


def _run(root, workdir):
  r = subprocess.run(_args(root, workdir), cwd=REPO, env=env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return r.stdout


def _start(root, workdir):
  return subprocess.Popen(_args(root, workdir), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _logs(workdir):
  """(train metrics by step, dev records by epoch): the last line written for each."""
  train, dev = {}, {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    r = json.loads(line)
    if 'train' in r:
      train[r['step']] = r['train']
    else:
      dev[r['epoch']] = r
  return train, dev


def _model(workdir):
  return serialization.msgpack_restore((workdir / 'model' / 'finetuned.msgpack').read_bytes())


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
  wd = tmp_path_factory.mktemp('ft_reference') / 'run'
  _run(data, wd)
  train, dev = _logs(wd)
  assert sorted(train) == list(range(1, NUM_STEPS + 1))
  assert sorted(dev) == [1, 2]
  return wd, train, dev


def _assert_same_run(wd, reference, from_step=1):
  ref_wd, want_train, want_dev = reference
  train, dev = _logs(wd)
  assert sorted(train) == list(range(1, NUM_STEPS + 1))
  for s in range(from_step, NUM_STEPS + 1):
    # JSON floats round-trip exactly: == compares the float32 values bit for bit.
    assert train[s] == want_train[s], f'step {s}: {train[s]} != {want_train[s]}'
  assert dev == want_dev
  got, want = _model(wd), _model(ref_wd)
  for a, b in zip(*(jax_leaves(t) for t in (got, want))):
    np.testing.assert_array_equal(a, b)
  results = json.loads((wd / 'results.json').read_text())
  assert results['dev'] == json.loads((ref_wd / 'results.json').read_text())['dev']


def jax_leaves(tree):
  from flax import traverse_util
  flat = traverse_util.flatten_dict(tree, sep='/')
  return [flat[k] for k in sorted(flat)]


def test_sigkill_then_same_command_is_bit_identical(data, reference, tmp_path):
  wd = tmp_path / 'run'
  proc = _start(data, wd)
  killed_at = wait_for_step(proc, wd / 'metrics.jsonl', STEPS_PER_EPOCH + 5)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert killed_at < NUM_STEPS, 'the run finished before the kill; nothing was tested'
  before, _ = _logs(wd)
  for s in before:  # what it logged before dying matches too
    assert before[s] == reference[1][s]
  out = _run(data, wd)
  resumed = int(out.split('Resumed from the checkpoint at step ')[1].split()[0])
  # The newest checkpoint may still have been in flight (async) when the kill came.
  assert 10 <= resumed <= killed_at and resumed % 10 == 0
  _assert_same_run(wd, reference, resumed + 1)


def test_sigterm_saves_exits_0_and_resumes(data, reference, tmp_path):
  wd = tmp_path / 'run'
  proc = _start(data, wd)
  wait_for_step(proc, wd / 'metrics.jsonl', STEPS_PER_EPOCH + 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  step = int(out.split('SIGTERM: saved a checkpoint at step ')[1].split()[0])
  assert STEPS_PER_EPOCH + 3 <= step < NUM_STEPS
  assert (wd / 'checkpoints' / str(step)).is_dir()
  assert not (wd / 'results.json').exists() and not (wd / 'model').exists()
  out = _run(data, wd)
  assert f'Resumed from the checkpoint at step {step}' in out
  _assert_same_run(wd, reference)
