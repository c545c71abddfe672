"""Gradient accumulation (train.grad_accum_steps): K microbatches make the same step as one batch.

Dropout is off in the step tests: its masks are drawn per microbatch, the one
thing accumulation changes (pretrain/microbatch.py).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from electra_jax import sharding
from electra_jax.pretrain import loop
from electra_jax.pretrain import microbatch
from electra_jax.pretrain import objectives
from electra_jax.pretrain import registry
import test_objective_variants as tov


def _cfg(**overrides):
  return tiny_config(**{'model.num_layers': 1, 'model.dropout_rate': 0.0,
                        'model.attention_dropout_rate': 0.0, 'optimizer.warmup_steps': 1,
                        **overrides})


def _batch(config, i=0):
  r = np.random.RandomState(i)
  B, L = config.train.batch_size, config.train.seq_len
  ids = r.randint(5, config.model.vocab_size, (B, L)).astype(np.int32)
  lengths = r.randint(L // 2, L + 1, B)  # unequal lengths: per-microbatch token counts differ
  mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = config.tokens.cls_id
  ids[np.arange(B), lengths - 1] = config.tokens.sep_id
  return {'input_ids': ids * mask, 'input_mask': mask, 'segment_ids': np.zeros_like(ids)}


def _train(config, accum_steps, steps=2):
  config.train.grad_accum_steps = accum_steps
  model = loop.build_model(config)
  tx, schedule = loop.build_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  state, shardings = loop.create_train_state(config, model, tx, mesh, jax.random.key(0))
  step = loop.make_train_step(config, model, tx, schedule, mesh, shardings)
  metrics = []
  for i in range(steps):
    state, m = step(state, sharding.global_batch(_batch(config, i), mesh), jax.random.key(1))
    metrics.append(jax.device_get(m))
  return jax.device_get(state.params), metrics


def test_four_microbatches_make_the_one_batch_step():
  """Loss, every metric, the gradient norm and the parameters after two updates agree.

  On an FSDP mesh (2 devices): the sharding constraints of the split and of the summed
  gradients are exercised; a data-parallel mesh adds nothing the FSDP one does not
  (tests/test_train_step.py checks data parallel == FSDP), at 2 more minutes of CI.
  """
  c = _cfg(**{'mesh.data': 1, 'mesh.fsdp': 2})
  p1, m1 = _train(c, 1)
  p4, m4 = _train(c, 4)
  for a, b in zip(m1, m4):
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=2e-5, atol=1e-6, err_msg=k)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), p1, _train(c, 1, steps=0)[0])
  assert max(jax.tree.leaves(moved)) > 1e-4  # the update is not trivially zero
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=2e-6), p1, p4)


def test_gradients_and_samples_do_not_depend_on_the_split():
  """Summed microbatch gradients == the one-batch gradient, and every row is masked
  and sampled the same whether its batch is split in 1 or 4."""
  c = _cfg(**{'mesh.data': 1})
  model = loop.build_model(c)
  cfg = objectives.ObjectiveConfig.from_config(c)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  params, _ = loop.create_train_state(c, model, loop.build_optimizer(c)[0], mesh,
                                      jax.random.key(0))
  params = params.params
  batch = {k: jnp.asarray(v) for k, v in _batch(c).items()}
  inputs = objectives.prepare_inputs(batch, jax.random.key(3), cfg)

  def loss_fn(p, inputs_mb, index):
    return objectives.electra_loss(p, inputs_mb, jax.random.fold_in(jax.random.key(0), index),
                                   model=model, cfg=cfg, deterministic=True)

  @functools.partial(jax.jit, static_argnums=1)
  def labels_by_split(p, K):  # the replaced-token labels, each microbatch computed alone
    micro = microbatch.split(inputs, K)
    out = [loss_fn(p, jax.tree.map(lambda x, k=k: x[k], micro), 0)[1][1]['disc_labels']
           for k in range(K)]
    return jnp.stack(out, 1).reshape(inputs.batch.input_ids.shape)  # rows back in order

  grads = {}
  for K in (1, 4):
    fn = jax.jit(lambda p, K=K: microbatch.value_and_grad(loss_fn, p, inputs, K))
    loss, grads[K], metrics = fn(params)
    np.testing.assert_array_equal(labels_by_split(params, K), labels_by_split(params, 1))
  assert int(labels_by_split(params, 1).sum()) > 0  # something was replaced
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7),
               grads[1], grads[4])


def test_split_keeps_each_row_with_its_draws():
  x = jnp.arange(8 * 3).reshape(8, 3)
  micro = microbatch.split({'x': x, 'keys': objectives.example_keys(jax.random.key(0), 8)}, 4)
  assert micro['x'].shape == (4, 2, 3)
  np.testing.assert_array_equal(micro['x'][1], x[np.array([1, 5])])  # microbatch k: rows k, K + k, ...
  np.testing.assert_array_equal(micro['keys'][1],
                                objectives.example_keys(jax.random.key(0), 8)[np.array([1, 5])])


# Four FakeModel rows of unequal length: per-microbatch normalisers differ.
P = tov.PAD
BATCH4 = {'input_ids': jnp.array([[tov.CLS, 4, 5, 6, 7, tov.SEP], [tov.CLS, 6, tov.SEP, P, P, P],
                                  [tov.CLS, 7, 4, 5, tov.SEP, P], [tov.CLS, 5, 6, tov.SEP, P, P]],
                                 jnp.int32)}
BATCH4['input_mask'] = (BATCH4['input_ids'] != P).astype(jnp.int32)
BATCH4['segment_ids'] = jnp.zeros_like(BATCH4['input_ids'])


@pytest.mark.parametrize('name', sorted(registry.OBJECTIVES))
def test_every_objective_accumulates_exactly(name):
  """For each objective: loss, gradients and finalized metrics of K = 2 and 4 == K = 1."""
  cfg = dataclasses.replace(tov._cfg(mask_prob=0.4, max_pred=2), stage_steps=3)
  model = tov.FakeModel(sharing='all' if name == 'bert_mlm' else 'embeddings')
  obj = registry.get_objective(name)
  params = {k: v + 0.1 * jnp.arange(v.size, dtype=jnp.float32).reshape(v.shape)
            for k, v in tov._params().items()}
  params['g'] = params['g'] * 0.01  # a generator that samples several tokens
  inputs = obj.prepare(BATCH4, jax.random.key(2), cfg)

  def loss_fn(p, inputs_mb, index):
    del index
    return obj.prepared_loss(p, inputs_mb, jax.random.key(0), model=model, cfg=cfg,
                             step=jnp.asarray(4), deterministic=True)

  want = None
  for K in (1, 2, 4):
    loss, grads, metrics = microbatch.value_and_grad(loss_fn, params, inputs, K)
    got = (loss, grads, objectives.finalize(metrics))
    if want is None:
      want = got
      full = obj.loss(params, BATCH4, jax.random.key(9), model=model, cfg=cfg,
                      step=jnp.asarray(4), deterministic=True)[1][0]
      assert set(full) == set(want[2])
      continue
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6),
                 want, got)
  assert float(optax.global_norm(want[1])) > 0


def test_bad_accumulation_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r'grad_accum_steps=3 .*multiple of 24'):
    microbatch.check(16, 3, 8)
  with pytest.raises(ValueError, match='grad_accum_steps=0'):
    microbatch.check(16, 0, 8)
  microbatch.check(32, 4, 8)
  c = _cfg(**{'train.grad_accum_steps': 2})  # batch 8 over 8 devices: 4 rows per microbatch
  with pytest.raises(ValueError, match=r'batch_size=8 .*multiple of 16'):
    loop.check_train_config(c, sharding.make_mesh(c.mesh))
