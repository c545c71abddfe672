"""Masking, sampling and loss properties of the default ELECTRA objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from electra_jax.pretrain import objectives

CLS, SEP, MASK, PAD = 2, 3, 4, 0


def _cfg(**kw):
  c = tiny_config()
  c.train.seq_len = 128
  c.objective.mask_prob = 0.15
  for k, v in kw.items():
    c.objective[k] = v
  return objectives.ObjectiveConfig.from_config(c)


def _batch(rng, B=64, L=128, vocab=128):
  """Random sequences [CLS] ... [SEP] with random padding lengths."""
  ids = rng.randint(5, vocab, (B, L)).astype(np.int32)
  lengths = rng.randint(10, L + 1, B)
  mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = CLS
  ids[np.arange(B), lengths - 1] = SEP
  mid = rng.rand(B, L) < 0.05  # some [SEP] in the middle, like two segments
  ids = np.where(mid & (mask == 1), SEP, ids)
  ids[:, 0] = CLS
  ids = np.where(mask == 1, ids, PAD)
  return jnp.asarray(ids), jnp.asarray(mask)


def test_official_cap_formula():
  assert _cfg().max_predictions_per_seq == 19  # int((0.15 + 0.005) * 128)


def test_masking_statistics_and_never_special():
  cfg = _cfg()
  rng = np.random.RandomState(0)
  n_masked = n_tokens = n_mask_tok = n_kept = 0
  for i in range(20):
    ids, mask = _batch(rng)
    m = objectives.mask_inputs(jax.random.key(i), ids, mask, cfg)
    ids, mask, w = np.asarray(ids), np.asarray(mask), np.asarray(m.weights)
    pos, new = np.asarray(m.positions), np.asarray(m.input_ids)
    mask_tok_before = n_mask_tok
    per_seq = w.sum(1)
    assert per_seq.max() <= cfg.max_predictions_per_seq
    expected = np.maximum(1, np.minimum(19, np.round(mask.sum(1) * 0.15)))
    np.testing.assert_array_equal(per_seq, expected)
    for b in range(ids.shape[0]):
      p = pos[b][w[b] > 0]
      assert len(set(p.tolist())) == len(p), 'positions must be distinct'
      orig = ids[b, p]
      assert not np.isin(orig, [CLS, SEP, MASK, PAD]).any()
      assert mask[b, p].all()
      np.testing.assert_array_equal(np.asarray(m.targets)[b][w[b] > 0], orig)
      n_mask_tok += (new[b, p] == MASK).sum()
      n_kept += (new[b, p] == orig).sum()
    # Only [MASK] substitutions change the input: no random replacements by default.
    assert (new != ids).sum() == n_mask_tok - mask_tok_before
    n_masked += w.sum()
    n_tokens += mask.sum()
  assert n_mask_tok + n_kept == n_masked  # no random tokens (official 85/15)
  assert abs(n_mask_tok / n_masked - 0.85) < 0.02
  assert abs(n_masked / n_tokens - 0.15) < 0.01


def test_unchosen_positions_untouched():
  cfg = _cfg()
  ids, mask = _batch(np.random.RandomState(1))
  m = objectives.mask_inputs(jax.random.key(3), ids, mask, cfg)
  chosen = np.zeros(ids.shape, bool)
  w, pos = np.asarray(m.weights), np.asarray(m.positions)
  for b in range(ids.shape[0]):
    chosen[b, pos[b][w[b] > 0]] = True
  np.testing.assert_array_equal(np.asarray(m.input_ids)[~chosen], np.asarray(ids)[~chosen])


def test_bert_80_10_10_option():
  cfg = _cfg(mask_token_prob=0.8, random_token_prob=0.1)
  rng = np.random.RandomState(2)
  kinds = np.zeros(3)
  for i in range(20):
    ids, mask = _batch(rng)
    m = objectives.mask_inputs(jax.random.key(i), ids, mask, cfg)
    w = np.asarray(m.weights) > 0
    new = np.take_along_axis(np.asarray(m.input_ids), np.asarray(m.positions), 1)[w]
    tgt = np.asarray(m.targets)[w]
    kinds += [(new == MASK).sum(), ((new != MASK) & (new != tgt)).sum(), (new == tgt).sum()]
  frac = kinds / kinds.sum()
  # Random draws can hit the original token (1/128), so "kept" is slightly above 10%.
  np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.025)


def test_sampling_labels_and_disallow_correct():
  B, M, V = 16, 8, 6
  logits = jax.random.normal(jax.random.key(0), (B, M, V)) * 3
  targets = jax.random.randint(jax.random.key(1), (B, M), 0, V)
  keys = objectives.example_keys(jax.random.key(2), B)
  s = objectives.sample_tokens(keys, logits, targets, 1.0, False)
  assert (np.asarray(s) == np.asarray(targets)).any()  # sometimes right
  s2 = objectives.sample_tokens(keys, logits, targets, 1.0, True)
  assert not (np.asarray(s2) == np.asarray(targets)).any()


def test_gumbel_sampling_matches_softmax():
  logits = jnp.log(jnp.array([0.1, 0.2, 0.7]))
  logits = jnp.broadcast_to(logits, (4000, 1, 3))
  s = objectives.sample_tokens(objectives.example_keys(jax.random.key(0), 4000), logits,
                               jnp.zeros((4000, 1), jnp.int32), 1.0, False)
  freq = np.bincount(np.asarray(s).ravel(), minlength=3) / 4000
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.03)


def test_disc_loss_matches_formula():
  logits = jnp.array([[2.0, -1.0, 0.5, 9.0]])
  labels = jnp.array([[1, 0, 0, 1]])
  weights = jnp.array([[1, 1, 1, 0]])
  loss, metrics = objectives.disc_loss_and_metrics(logits, labels, objectives.normalized(weights))
  metrics = objectives.finalize(metrics)
  p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
  expected = -np.mean([np.log(p[0]), np.log(1 - p[1]), np.log(1 - p[2])])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['disc_accuracy'], 2 / 3, rtol=1e-4)
  np.testing.assert_allclose(metrics['disc_precision'], 1 / 2)  # predicted replaced: 2.0, 0.5
  np.testing.assert_allclose(metrics['disc_recall'], 1.0)  # the weight-0 token does not count


def test_mlm_loss_matches_formula():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
  targets = jnp.array([[0, 2, 1]])
  weights = jnp.array([[1.0, 1.0, 0.0]])
  loss, acc = objectives.mlm_loss_and_accuracy(logits, targets, objectives.normalized(weights))
  np.testing.assert_allclose(loss, -(np.log(0.5) + np.log(0.1)) / 2, rtol=1e-5)
  np.testing.assert_allclose(acc, 0.5, rtol=1e-4)


def test_mlm_loss_gradient_and_accuracy_match_autodiff_and_argmax():
  """nll_and_hit's hand-written backward == autodiff of log_softmax; hit == (argmax == target)."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  logits = 3 * jax.random.normal(k1, (4, 7, 300))
  targets = jax.random.randint(k2, (4, 7), 0, 300)
  targets = targets.at[:, :3].set(jnp.argmax(logits[:, :3], -1))  # some hits
  weights = (jax.random.uniform(k3, (4, 7)) > 0.3).astype(jnp.float32)
  norm = objectives.normalized(weights)

  def reference(x):
    nll = -jnp.take_along_axis(jax.nn.log_softmax(x, -1), targets[..., None], -1)[..., 0]
    acc = (jnp.argmax(x, -1) == targets).astype(jnp.float32)
    return objectives.share(nll, norm), objectives.share(acc, norm)

  (loss, acc), (want_loss, want_acc) = (objectives.mlm_loss_and_accuracy(logits, targets, norm),
                                        reference(logits))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert 0 < float(acc) == float(want_acc) < 1
  grad = jax.grad(lambda x: objectives.mlm_loss_and_accuracy(x, targets, norm)[0])(logits)
  want = jax.grad(lambda x: reference(x)[0])(logits)
  np.testing.assert_allclose(grad, want, atol=1e-7)
  assert float(jnp.abs(want).max()) > 1e-2


def test_labels_only_where_sample_differs():
  """Label is 1 exactly where the discriminator input differs from the original."""
  from electra_jax.pretrain import loop
  c = tiny_config()
  model = loop.build_model(c)
  cfg = objectives.ObjectiveConfig.from_config(c)
  ids, mask = _batch(np.random.RandomState(4), B=8, L=32, vocab=c.model.vocab_size)
  batch = {'input_ids': ids, 'input_mask': mask, 'segment_ids': jnp.zeros_like(ids)}
  params = model.init(jax.random.key(0), ids, mask, batch['segment_ids'],
                      jnp.zeros((8, cfg.max_predictions_per_seq), jnp.int32), True)['params']
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  _, (metrics, aux) = objectives.ELECTRA.loss(params, batch, jax.random.key(5), model=model,
                                              cfg=cfg)
  labels = np.asarray(aux['disc_labels'])
  assert labels[np.asarray(mask) == 0].sum() == 0
  assert 0 < labels.sum() <= 8 * cfg.max_predictions_per_seq
  assert 0 < float(metrics['replaced_fraction']) < 0.2


def test_bad_objective_config_errors():
  c = tiny_config()
  c.objective.mask_prob = 1.5
  with pytest.raises(ValueError, match='mask_prob=1.5'):
    objectives.ObjectiveConfig.from_config(c)
  c = tiny_config()
  c.objective.name = 'gan'
  with pytest.raises(ValueError, match="'gan'"):
    objectives.ObjectiveConfig.from_config(c)
