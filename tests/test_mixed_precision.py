"""Mixed precision (model.matmul_dtype=bfloat16): bf16 matmuls with float32 accumulation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from electra_jax import sharding
from electra_jax.pretrain import loop
from electra_jax.models import layers


@pytest.mark.parametrize('dims', [
    (((1,), (0,)), ((), ())),  # x @ w
    (((2,), (0,)), ((), ())),  # [B, L, H] @ [H, O] (nn.Dense)
    (((0, 1), (0, 1)), ((), ())),  # weight gradient: contract batch and length
    (((3,), (3,)), ((0, 2), (0, 2))),  # attention scores, heads as a batch dim
    (((1,), (2,)), ((0,), (0,))),
])
def test_einsum_spec_reproduces_dot_general(dims):
  """The dot_general -> einsum translation used by mixed_dot_general is exact (float32)."""
  (lc, rc), (lb, rb) = dims
  rng = np.random.RandomState(0)
  lhs_shape = [3, 4, 5, 6][:max(lc + lb) + 1]
  sizes = dict(zip(lc, [lhs_shape[i] for i in lc]))
  rhs_ndim = max(rc + rb) + 1 + 1
  rhs_shape = [7] * rhs_ndim
  for i, j in zip(lc, rc):
    rhs_shape[j] = lhs_shape[i]
  for i, j in zip(lb, rb):
    rhs_shape[j] = lhs_shape[i]
  del sizes
  a = rng.randn(*lhs_shape).astype(np.float32)
  b = rng.randn(*rhs_shape).astype(np.float32)
  want = jax.lax.dot_general(a, b, dims)
  lhs, rhs, out = layers._einsum_spec(dims, a.ndim, b.ndim)  # pylint: disable=protected-access
  got = jnp.einsum(f'{lhs},{rhs}->{out}', a, b)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  mixed = layers.mixed_dot_general(jnp.bfloat16)(a, b, dims)
  assert mixed.dtype == jnp.float32
  np.testing.assert_allclose(mixed, want, rtol=0.05, atol=0.1)


def test_mixed_einsum_values_and_gradients():
  """Close to float32 (bf16 operand rounding only); gradients come back in the operands' dtypes."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (4, 16, 32))
  w = jax.random.normal(k2, (32, 24)) / 32 ** 0.5
  t = jax.random.normal(k3, (4, 16, 24))
  loss = lambda x, w, md: jnp.sum((layers.einsum('blh,ho->blo', x, w, md) - t) ** 2)  # noqa: E731
  y = layers.einsum('blh,ho->blo', x, w, jnp.bfloat16)
  y32 = layers.einsum('blh,ho->blo', x, w)
  assert y.dtype == jnp.float32
  rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))  # noqa: E731
  assert 0 < rel(y, y32) < 1e-2  # really rounded to bf16, and only that
  g = jax.grad(loss, argnums=(0, 1))(x, w, jnp.bfloat16)
  g32 = jax.grad(loss, argnums=(0, 1))(x, w, None)
  for a, b in zip(g, g32):
    assert a.dtype == b.dtype == jnp.float32
    assert 0 < rel(a, b) < 2e-2
  # A bf16 operand gets a bf16 gradient.
  gx16 = jax.grad(lambda x: loss(x, w, jnp.bfloat16).astype(jnp.float32))(x.astype(jnp.bfloat16))
  assert gx16.dtype == jnp.bfloat16


def test_mixed_backward_matmuls_run_in_bf16():
  """All three matmuls of a mixed dense layer have bf16 operands and float32 results."""
  x = jnp.ones((8, 16, 32))
  w = jnp.ones((32, 24))
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.einsum('blh,ho->blo', x, w, jnp.bfloat16) ** 2),
                       argnums=(0, 1)))
  hlo = f.lower(x, w).as_text()
  dots = [l for l in hlo.splitlines() if 'dot_general' in l and '=' in l]
  assert len(dots) == 3, dots
  for line in dots:
    assert 'bf16' in line.split('dot_general')[1] and '-> tensor<' in line and 'xf32>' in line.split('->')[-1], line


def _step_losses(config, steps=3, seed=0):
  model = loop.build_model(config)
  tx, schedule = loop.build_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = loop.create_train_state(config, model, tx, mesh, jax.random.key(seed))
  step = loop.make_train_step(config, model, tx, schedule, mesh, shardings)
  rng = np.random.RandomState(0)
  B, L = config.train.batch_size, config.train.seq_len
  out = []
  for _ in range(steps):
    ids = rng.randint(5, config.model.vocab_size, (B, L)).astype(np.int32)
    ids[:, 0] = config.tokens.cls_id
    batch = {'input_ids': ids, 'input_mask': np.ones((B, L), np.int32),
             'segment_ids': np.zeros((B, L), np.int32)}
    state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
    out.append(jax.device_get(metrics))
  return state, out


def test_mixed_train_step_matches_float32_and_is_deterministic():
  """The sharded (8-device) step with bf16 matmuls: float32 params, losses near float32's, same bits per seed."""
  c32 = tiny_config()
  cmix = tiny_config(**{'model.matmul_dtype': 'bfloat16'})
  s32, m32 = _step_losses(c32)
  smix, mmix = _step_losses(cmix)
  _, mmix2 = _step_losses(cmix)
  assert [m['loss'] for m in mmix] == [m['loss'] for m in mmix2]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(smix.params))
  for a, b in zip(m32, mmix):
    assert np.isfinite(b['loss'])
    np.testing.assert_allclose(b['loss'], a['loss'], rtol=2e-2)
    assert a['loss'] != b['loss']  # the bf16 path really ran


def test_bad_matmul_dtype_errors():
  with pytest.raises(ValueError, match='model.matmul_dtype=.int8.*expected'):
    loop.build_model(tiny_config(**{'model.matmul_dtype': 'int8'}))
  with pytest.raises(ValueError, match='mixed precision needs model.dtype=float32'):
    loop.build_model(tiny_config(**{'model.matmul_dtype': 'bfloat16', 'model.dtype': 'float16'}))
