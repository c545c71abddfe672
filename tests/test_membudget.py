"""electra_jax.membudget: a step that would not fit says so before it runs, once per shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import membudget


def _step(state, batch):
  return state + 1.0, jnp.tanh(batch @ batch.T).sum()


@pytest.fixture
def step_fn():
  return jax.jit(_step, donate_argnums=0)


def test_warns_once_per_shape_when_the_step_exceeds_available_memory(step_fn, monkeypatch,
                                                                     capsys):
  monkeypatch.setattr(membudget, 'available_host_bytes', lambda: 2_000)
  monkeypatch.setattr(membudget, 'process_rss_bytes', lambda: 1_000)
  fn = membudget.Precompiled(step_fn, 'training step', host_bytes=4096, key_argnums=(1,))
  state = jnp.zeros((256,))
  state, loss = fn(state, np.ones((64, 32), np.float32))
  state, loss = fn(state, np.ones((64, 32), np.float32))  # same shape: compiled once
  assert float(state[0]) == 2.0 and np.isfinite(float(loss))
  out = capsys.readouterr().out.strip().splitlines()
  warnings = [line for line in out if line.startswith('warning: the training step needs about')]
  assert len(warnings) == 1 and fn.warnings == warnings, out
  assert 'MemAvailable 0.0 GB + this process 0.0 GB' in warnings[0]
  assert 'lower train.batch_size or train.seq_len' in warnings[0]
  estimate, = fn.estimates.values()
  assert estimate.arguments == 256 * 4 + 64 * 32 * 4 and estimate.per_device > 3_000
  assert estimate.aliased == 256 * 4  # the donated state
  fn(state, np.ones((32, 32), np.float32))  # a new shape: compiled and checked again
  assert len(fn.executables) == 2 and len(fn.warnings) == 2


def test_no_warning_when_it_fits(step_fn, monkeypatch, capsys):
  monkeypatch.setattr(membudget, 'available_host_bytes', lambda: 1 << 40)
  fn = membudget.Precompiled(step_fn, 'training step')
  fn(jnp.zeros((256,)), np.ones((64, 32), np.float32))
  assert fn.warnings == [] and 'warning' not in capsys.readouterr().out


def test_accelerators_compare_with_the_device_limit():
  class Gpu:
    platform = 'gpu'

    def memory_stats(self):
      return {'bytes_limit': 2 * 10**9}

  est = membudget.Estimate(arguments=10**9, outputs=10**9, aliased=10**9, temporaries=2 * 10**9)
  line = membudget.check(est, 'training step', [Gpu()])
  assert line.startswith('warning: the training step needs about 3.0 GB per GPU') and \
      'the device has 2.0 GB' in line
  assert membudget.check(membudget.Estimate(10**8, 0, 0, 10**8), 'step', [Gpu()]) is None


def test_available_host_bytes_reads_meminfo():
  available = membudget.available_host_bytes()
  assert available is None or available > 0
  assert membudget.process_rss_bytes() >= 0
