"""The layers whose backward pass recomputes instead of keeping (issue 18): the same values
and gradients as the plain forms, and less memory between the two passes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.models import attention
from electra_jax.models import layers

B, L, H, N = 4, 16, 32, 4


def _x(seed, shape, scale=1.0, shift=0.0):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32) * scale + shift)


def _unbox(tree):
  return jax.tree.map(lambda x: getattr(x, 'value', x), tree, is_leaf=lambda x: hasattr(x, 'value'))


def _temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_gelu_value_and_gradient_are_the_plain_forms():
  x = _x(0, (B, L, H), 3.0)
  g = _x(1, (B, L, H))
  y, vjp = jax.jit(lambda x: jax.vjp(layers.gelu, x))(x)
  y_ref, vjp_ref = jax.jit(lambda x: jax.vjp(layers._gelu, x))(x)  # pylint: disable=protected-access
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-7)
  # and the mirrored form really is the same function
  np.testing.assert_array_equal(layers._gelu_mirrored(x), layers._gelu(x))  # pylint: disable=protected-access


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_layer_norm_matches_flax(dtype):
  x = _x(2, (B, L, H), 3.0, 1.0).astype(dtype)
  g = _x(3, (B, L, H)).astype(dtype)
  ours = layers.layer_norm(1e-12, dtype, 'LayerNorm')
  flax_ln = layers._flax_layer_norm(1e-12, dtype, 'LayerNorm')  # pylint: disable=protected-access
  params = _unbox(flax_ln.init(jax.random.key(0), x))
  assert jax.tree.structure(_unbox(ours.init(jax.random.key(0), x))) == jax.tree.structure(params)
  params = jax.tree.map(lambda p: p + _x(4, p.shape), params)  # scale and bias not 1 and 0

  def run(module):
    y, vjp = jax.vjp(lambda p, x: module.apply(p, x), params, x)
    return y, vjp(g)

  (y, (gp, gx)), (y_ref, (gp_ref, gx_ref)) = jax.jit(lambda: run(ours))(), jax.jit(
      lambda: run(flax_ln))()
  assert y.dtype == y_ref.dtype and gx.dtype == gx_ref.dtype
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == 'float32' else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), **tol)
  np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(gx_ref, np.float32), **tol)
  for k in ('scale', 'bias'):
    np.testing.assert_allclose(gp['params'][k], gp_ref['params'][k], rtol=1e-4, atol=1e-4)


def _attention_params_and_inputs():
  x = _x(5, (B, L, H))
  mask = np.ones((B, L), np.int32)
  mask[0, 10:] = 0
  key_mask = attention.key_padding_mask(jnp.asarray(mask))
  module = attention.SelfAttention(H, N, 0.3, 0.02)
  params = module.init({'params': jax.random.key(0)}, x, key_mask, True)
  return module, params, x, key_mask


class _ReferenceAttention(attention.SelfAttention):
  """SelfAttention's einsum path as it was: nn.Dropout on the probabilities, then einsum."""

  @nn.compact
  def __call__(self, x_BxLxH, key_mask_BxL, deterministic: bool):
    head_dim = self.hidden_size // self.num_heads

    def project(name):
      y = layers.dense(self.hidden_size, ('hidden', 'qkv'), self.initializer_range, self.dtype,
                       name)(x_BxLxH)
      return y.reshape(B, L, self.num_heads, head_dim)

    q, k, v = project('query'), project('key'), project('value')
    logits = jnp.einsum('bqnd,bknd->bnqk', q, k) * (1.0 / jnp.sqrt(jnp.float32(head_dim)))
    logits = jnp.where(key_mask_BxL[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = nn.Dropout(self.dropout_rate)(jax.nn.softmax(logits, axis=-1),
                                          deterministic=deterministic)
    return jnp.einsum('bnqk,bknd->bqnd', probs, v).reshape(B, L, self.hidden_size)


def test_attention_dropout_is_nn_dropout_with_the_same_key():
  module, params, x, key_mask = _attention_params_and_inputs()
  reference = _ReferenceAttention(H, N, 0.3, 0.02)
  g = _x(6, (B, L, H))
  rngs = {'dropout': jax.random.key(7)}

  def run(m):
    y, vjp = jax.vjp(lambda p, x: m.apply(p, x, key_mask, False, rngs=rngs), params, x)
    return y, vjp(g)

  (y, (gp, gx)), (y_ref, (gp_ref, gx_ref)) = run(module), run(reference)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # dropout is on: a different key gives a different output
  other = module.apply(params, x, key_mask, False, rngs={'dropout': jax.random.key(8)})
  assert not np.allclose(other, y)


def test_activated_dense_is_dense_of_the_activation():
  x = _x(9, (B, L, 2 * H), 2.0)
  g = _x(10, (B, L, H))
  fused = layers.dense(H, ('mlp', 'hidden'), 0.02, 'float32', 'dense', input_activation=layers.gelu)
  plain = layers.dense(H, ('mlp', 'hidden'), 0.02, 'float32', 'dense')
  params = _unbox(plain.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias

  def run(fn):
    y, vjp = jax.vjp(fn, params, x)
    return y, vjp(g)

  (y, (gp, gx)) = run(lambda p, x: fused.apply(p, x))
  (y_ref, (gp_ref, gx_ref)) = run(lambda p, x: plain.apply(p, layers.gelu(x)))
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_recompute_in_backward_keeps_less_than_autodiff():
  """A chain of GELU -> dense: autodiff keeps each GELU's output (and its erf) for the
  backward pass; recomputed, only the inputs stay. Fails if XLA merges the recomputation
  back into the forward pass (what `layers.after` prevents)."""
  x = _x(11, (64, 256), 2.0)
  ws = [_x(12 + i, (256, 256), 0.05) for i in range(6)]

  def chain(dense_of_gelu):
    def loss(ws, x):
      for w in ws:
        x = dense_of_gelu(x, w)
      return jnp.sum(x ** 2)
    return jax.grad(loss)

  plain = lambda x, w: jnp.dot(layers._gelu(x), w)  # pylint: disable=protected-access
  recomputed = layers.recompute_in_backward(plain)
  grads = jax.jit(chain(recomputed))(ws, x)
  grads_ref = jax.jit(chain(plain))(ws, x)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  one = 64 * 256 * 4
  assert _temp_bytes(chain(recomputed), ws, x) <= _temp_bytes(chain(plain), ws, x) - 6 * one


def test_after_is_the_value():
  x = jnp.asarray([1.5, -2.0, 0.0, 3e-38], jnp.float32)
  for g in (jnp.asarray([-4.0, 1.0]), jnp.asarray([0.0]), jnp.asarray([jnp.inf])):
    np.testing.assert_array_equal(jax.jit(layers.after)(x, g), x)


@pytest.mark.parametrize('rate', [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize('deterministic', [True, False])
def test_dropout_is_nn_dropout(rate, deterministic):
  x = _x(13, (B, L, H))
  rngs = {'dropout': jax.random.key(3)}

  def run(cls):
    f = lambda x: cls(rate).apply({}, x, deterministic, rngs=rngs)
    return f(x), jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)

  (y, gx), (y_ref, gx_ref) = run(layers.Dropout), run(nn.Dropout)
  np.testing.assert_array_equal(y, y_ref)  # the same mask
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-6)  # XLA may divide by keep as x * (1 / keep)
  np.testing.assert_array_equal(gx == 0, gx_ref == 0)


@pytest.mark.parametrize('shape', [(3, 5, 7), (8,), (2, 16)])
def test_pack_mask_round_trip(shape):
  mask = jax.random.bernoulli(jax.random.key(0), 0.5, shape)
  packed = layers.pack_mask(mask)
  assert packed.dtype == jnp.uint8 and packed.size == -(-mask.size // 8)
  np.testing.assert_array_equal(layers.unpack_mask(packed, shape), mask)


def test_dropout_keeps_bits_not_the_random_words():
  """A chain of dropouts: nn.Dropout keeps each mask's uint32 random bits until the
  backward pass; layers.Dropout keeps 1 bit an element."""
  x = _x(14, (64, 512))
  ws = [_x(20 + i, (512, 512), 0.05) for i in range(4)]

  def grad_of(cls):
    def loss(ws, x):
      for i, w in enumerate(ws):
        x = cls(0.1).apply({}, jnp.tanh(x @ w), False, rngs={'dropout': jax.random.key(i)})
      return jnp.sum(x ** 2)
    return jax.grad(loss)

  # Two programs: float rounding differs (up to 1.1e-5 on gradients of ~1 at XLA's CPU
  # optimization level 0, the tests'); a mask that differed would move whole elements.
  for a, b in zip(jax.jit(grad_of(layers.Dropout))(ws, x), jax.jit(grad_of(nn.Dropout))(ws, x)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-5)
  one = 64 * 512 * 4
  assert _temp_bytes(grad_of(layers.Dropout), ws, x) <= _temp_bytes(grad_of(nn.Dropout), ws, x) - 3 * one


def test_tower_recompute_switch_same_function_less_memory():
  """model.recompute_activations switches a whole tower between the recomputing layers
  and the plain ones (autodiff keeps everything): the same parameters, outputs and
  gradients (dropout on, the same keys), and the recomputing tower keeps less."""
  from electra_jax.models import encoder  # pylint: disable=g-import-not-at-top
  towers = {r: encoder.Tower(encoder.TowerConfig(H, 2, N, 4 * H, recompute_activations=r))
            for r in (True, False)}
  x, g = _x(20, (B, L, H)), _x(21, (B, L, H))
  mask = jnp.ones((B, L), jnp.int32).at[1, L // 2:].set(0)
  params = towers[True].init(jax.random.key(0), x, mask, True)
  assert (jax.tree.structure(params) ==
          jax.tree.structure(towers[False].init(jax.random.key(0), x, mask, True)))
  rngs = {'dropout': jax.random.key(3)}

  def grads(tower):
    def fn(p, x):
      y, vjp = jax.vjp(lambda p, x: tower.apply(p, x, mask, False, rngs=rngs), p, x)
      return y, vjp(g)
    return fn

  y, (gp, gx) = jax.jit(grads(towers[True]))(params, x)
  y_ref, (gp_ref, gx_ref) = jax.jit(grads(towers[False]))(params, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert not np.allclose(y, towers[True].apply(params, x, mask, True))  # dropout was on
  assert (_temp_bytes(grads(towers[True]), params, x)
          < _temp_bytes(grads(towers[False]), params, x))


def test_finetuning_recomputes_and_pretraining_keeps():
  """Fine-tuning's step memory needs the recomputing forms, pre-training's speed the kept ones;
  a checkpoint trained with either is fine-tuned with the fine-tuning config's value."""
  import types  # pylint: disable=g-import-not-at-top
  from configs import finetune, pretrain  # pylint: disable=g-import-not-at-top
  from electra_jax.finetune import resolve  # pylint: disable=g-import-not-at-top
  assert pretrain.get_config('size=small').model.recompute_activations is False
  c = finetune.get_config('task=mrpc,size=small')
  assert c.model.recompute_activations is True
  ckpt = types.SimpleNamespace(path='pretrained', model_config={
      **dict(c.model), 'recompute_activations': False, 'vocab_size': 100})
  model = resolve.resolve_model(c, ckpt, types.SimpleNamespace(vocab_size=100))
  assert model['recompute_activations'] is True
