"""Fine-tuning heads: output shapes, parameter names, losses, layer-wise LR multipliers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from electra_jax import optim
from electra_jax.models import electra
from electra_jax.models import heads

B, L = 4, 16


def _cfg(**kw):
  d = dict(vocab_size=50, embedding_size=16, hidden_size=32, num_layers=2, num_heads=2,
           intermediate_size=64, max_position_embeddings=64, dropout_rate=0.1,
           attention_dropout_rate=0.1)
  d.update(kw)
  return electra.ModelConfig(**d)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 50, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[1, 10:] = 0  # one padded row
  return jnp.asarray(ids), jnp.asarray(mask), jnp.zeros((B, L), jnp.int32)


def _init(head, cfg=None):
  model = heads.FinetuneModel(cfg or _cfg(), head)
  ids, mask, seg = _inputs()
  params = nn.meta.unbox(model.init({'params': jax.random.key(0)}, ids, mask, seg, True)['params'])
  return model, params


@pytest.mark.parametrize('kind,num_labels,keys,shapes', [
    ('classification', 3, ['logits'], [(B, 3)]),
    ('regression', 1, ['predictions'], [(B,)]),
    ('tagging', 5, ['logits'], [(B, L, 5)]),
])
def test_output_shapes_and_head_names(kind, num_labels, keys, shapes):
  head = heads.HeadConfig(kind, num_labels)
  model, params = _init(head)
  out = model.apply({'params': params}, *_inputs(), True)
  assert sorted(out) == keys
  for k, s in zip(keys, shapes):
    assert out[k].shape == s and out[k].dtype == jnp.float32
  # Encoder subtrees match ElectraModel's exactly, so pre-trained weights drop in by path.
  enc = electra.ElectraModel(_cfg()).init(jax.random.key(0), *_inputs(), True)['params']
  enc_paths = set(traverse_util.flatten_dict(nn.meta.unbox(enc), sep='/'))
  ours = set(traverse_util.flatten_dict(params, sep='/'))
  assert enc_paths <= ours
  head_name = 'tagger' if kind == 'tagging' else 'classifier'
  assert {p.split('/')[0] for p in ours - enc_paths} == {head_name}


def test_span_head_masks_padding_and_answerability():
  model, params = _init(heads.HeadConfig('span', 1, answerability=True))
  ids, mask, _ = _inputs()
  seg = jnp.asarray(np.where(np.arange(L) >= 4, mask, 0))  # [CLS] q q q [SEP]? | context
  out = model.apply({'params': params}, ids, mask, seg, True)
  assert out['start_logits'].shape == (B, L) and out['end_logits'].shape == (B, L)
  assert out['answerable_logits'].shape == (B,)
  # Only [CLS] and the context (segment 1) can hold an answer, as the official answer_mask.
  for k in ('start_logits', 'end_logits'):
    x = np.asarray(out[k])
    assert np.all(x[1, 10:] <= -1e4 + 1) and np.all(x[:, 1:4] <= -1e4 + 1)
    assert np.all(x[1, 4:10] > -100) and np.all(x[:, 0] > -100)
  assert 'answerable_classifier' in params and 'qa_outputs' in params
  _, params_v1 = _init(heads.HeadConfig('span', 1, answerability=False))
  assert 'answerable_classifier' not in params_v1


def test_joint_span_head_shapes_beam_and_training_path():
  """The official joint head: its parameters, the beam's shapes and order, and the beam's
  end log-probabilities equal to the training path's (teacher-forced) for the same start."""
  K = 5
  model, params = _init(heads.HeadConfig('span', 1, answerability=True, joint=True,
                                         beam_size=K))
  H = _cfg().hidden_size
  shapes = jax.tree.map(lambda x: x.shape, {k: params[k] for k in ('qa_joint',
                                                                  'answerable_classifier')})
  assert shapes == {
      'qa_joint': {'start_logits': {'kernel': (H, 1), 'bias': (1,)},
                   'qa_hidden': {'kernel': (2 * H, heads.QA_HIDDEN), 'bias': (heads.QA_HIDDEN,)},
                   'qa_logits': {'kernel': (heads.QA_HIDDEN, 1), 'bias': (1,)}},
      'answerable_classifier': {'dense': {'kernel': (2 * H, heads.QA_HIDDEN),
                                          'bias': (heads.QA_HIDDEN,)},
                                'dense_output': {'kernel': (heads.QA_HIDDEN, 1), 'bias': (1,)}}}
  assert 'qa_outputs' not in params
  ids, mask, _ = _inputs()
  seg = jnp.asarray(np.where(np.arange(L) >= 4, mask, 0))
  run = jax.jit(lambda starts: model.apply({'params': params}, ids, mask, seg, True, starts))
  out = jax.jit(lambda: model.apply({'params': params}, ids, mask, seg, True))()
  assert {k: v.shape for k, v in out.items()} == {
      'start_logits': (B, L), 'start_top_log_probs': (B, K), 'start_top_index': (B, K),
      'end_top_log_probs': (B, K, K), 'end_top_index': (B, K, K), 'null_log_prob': (B,),
      'answerable_logits': (B,)}
  assert out['start_top_index'].dtype == out['end_top_index'].dtype == jnp.int32
  s_idx, e_idx = np.asarray(out['start_top_index']), np.asarray(out['end_top_index'])
  s_lp, e_lp = np.asarray(out['start_top_log_probs']), np.asarray(out['end_top_log_probs'])
  assert np.all(np.diff(s_lp, axis=-1) <= 0) and np.all(np.diff(e_lp, axis=-1) <= 0)
  start_lp = np.asarray(jax.nn.log_softmax(out['start_logits']))
  np.testing.assert_allclose(s_lp, np.take_along_axis(start_lp, s_idx, 1), rtol=1e-6)
  # The beam's top starts are the answerable positions ([CLS], context), never padding.
  assert set(s_idx[1].tolist()) <= {0, *range(4, 10)}
  for i in range(K):  # beam i: end log-probs = the training path's with start = that beam's
    forced = run(jnp.asarray(s_idx[:, i]))
    assert forced['end_logits'].shape == (B, L)
    forced_lp = np.asarray(jax.nn.log_softmax(forced['end_logits']))
    np.testing.assert_allclose(e_lp[:, i], np.take_along_axis(forced_lp, e_idx[:, i], 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forced['answerable_logits'], out['answerable_logits'], rtol=1e-6)
  cls = run(jnp.zeros(B, jnp.int32))
  np.testing.assert_allclose(out['null_log_prob'], start_lp[:, 0] + np.asarray(
      jax.nn.log_softmax(cls['end_logits']))[:, 0], rtol=1e-5, atol=1e-5)
  # A beam wider than the row: the extra picks point past its end.
  wide, wparams = _init(heads.HeadConfig('span', 1, joint=True, beam_size=L + 3))
  w = jax.jit(lambda: wide.apply({'params': wparams}, ids, mask, seg, True))()
  assert w['start_top_index'].shape == (B, L + 3) and np.all(w['start_top_index'][:, L:] >= L)


def test_dropout_only_in_training():
  model, params = _init(heads.HeadConfig('classification', 2))
  args = _inputs()
  a = model.apply({'params': params}, *args, True)['logits']
  b = model.apply({'params': params}, *args, True)['logits']
  np.testing.assert_array_equal(a, b)
  c = model.apply({'params': params}, *args, False, rngs={'dropout': jax.random.key(1)})['logits']
  assert not np.allclose(a, c)


def test_head_config_rejects_bad_values():
  with pytest.raises(ValueError, match='kind'):
    heads.HeadConfig('ner', 3)
  with pytest.raises(ValueError, match='num_labels'):
    heads.HeadConfig('classification', 1)


def test_classification_loss_matches_reference_and_ignores_padding_rows():
  head = heads.HeadConfig('classification', 3)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(B, 3)), jnp.float32)
  labels = jnp.asarray([0, 2, 1, 1])
  w = jnp.asarray([1., 1., 1., 0.])
  loss, m = heads.loss_and_metrics(head, {'logits': logits}, {'label': labels, 'weights': w})
  ref = -np.mean([jax.nn.log_softmax(logits[i])[labels[i]] for i in range(3)])
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  # Changing the padding row's label changes nothing.
  loss2, _ = heads.loss_and_metrics(head, {'logits': logits},
                                    {'label': labels.at[3].set(0), 'weights': w})
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  acc = np.mean(np.asarray(logits[:3]).argmax(-1) == np.asarray(labels[:3]))
  np.testing.assert_allclose(m['accuracy'], acc, rtol=1e-6)


def test_regression_loss_is_weighted_mse():
  head = heads.HeadConfig('regression', 1)
  pred = jnp.asarray([1.0, 2.0, 3.0, 100.0])
  gold = jnp.asarray([1.5, 2.0, 1.0, 0.0])
  loss, _ = heads.loss_and_metrics(head, {'predictions': pred},
                                   {'label': gold, 'weights': jnp.asarray([1., 1., 1., 0.])})
  np.testing.assert_allclose(loss, (0.25 + 0 + 4) / 3, rtol=1e-6)


def test_span_loss_with_answerability():
  head = heads.HeadConfig('span', 1, answerability=True)
  rng = np.random.default_rng(1)
  out = {'start_logits': jnp.asarray(rng.normal(size=(B, L)), jnp.float32),
         'end_logits': jnp.asarray(rng.normal(size=(B, L)), jnp.float32),
         'answerable_logits': jnp.asarray(rng.normal(size=(B,)), jnp.float32)}
  batch = {'start_positions': jnp.asarray([1, 2, 0, 3]), 'end_positions': jnp.asarray([2, 2, 0, 5]),
           'is_impossible': jnp.asarray([0, 0, 1, 0]), 'weights': jnp.ones(B)}
  loss, m = heads.loss_and_metrics(head, out, batch)
  s = optax.softmax_cross_entropy_with_integer_labels(out['start_logits'], batch['start_positions'])
  e = optax.softmax_cross_entropy_with_integer_labels(out['end_logits'], batch['end_positions'])
  a = optax.sigmoid_binary_cross_entropy(out['answerable_logits'], batch['is_impossible'] * 1.)
  np.testing.assert_allclose(m['span_loss'], np.mean((s + e) / 2), rtol=1e-5)
  # The official answerable_weight: 0.5.
  np.testing.assert_allclose(loss, np.mean((s + e) / 2) + 0.5 * np.mean(a), rtol=1e-5)


def test_tagging_loss_only_on_weighted_tokens():
  head = heads.HeadConfig('tagging', 4)
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(B, L, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, (B, L)), jnp.int32)
  tw = jnp.asarray(rng.integers(0, 2, (B, L)), jnp.int32)
  batch = {'labels': labels, 'label_weights': tw, 'weights': jnp.asarray([1., 1., 1., 0.])}
  loss, _ = heads.loss_and_metrics(head, {'logits': logits}, batch)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  w = np.asarray(tw, np.float32) * np.asarray([1, 1, 1, 0], np.float32)[:, None]
  np.testing.assert_allclose(loss, np.sum(xent * w) / w.sum(), rtol=1e-5)
  # Labels at unweighted tokens do not matter.
  loss2, _ = heads.loss_and_metrics(head, {'logits': logits},
                                    dict(batch, labels=jnp.where(w > 0, labels, 0)))
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)


@pytest.mark.parametrize('fixed_top_layer', [False, True])
def test_layerwise_lr_multipliers_per_parameter(fixed_top_layer):
  """2-layer model: every parameter's multiplier, official off-by-one and fixed."""
  decay = 0.8
  _, params = _init(heads.HeadConfig('classification', 2))  # embedding 16 != hidden 32: projection
  mult = traverse_util.flatten_dict(
      optim.layerwise_lr_multipliers(params, 2, decay, fixed_top_layer), sep='/')
  # official: head 1, top layer decay^2, layer_0 decay^3, embeddings decay^4.
  # fixed:    head 1, top layer decay^1, layer_0 decay^2, embeddings decay^3.
  shift = 1 if fixed_top_layer else 0
  expected_exp = {'layer_1': 2 - shift, 'layer_0': 3 - shift, 'embeddings': 4 - shift, 'head': 0}
  seen = set()
  for path, m in mult.items():
    if path.startswith('classifier/'):
      group = 'head'
    elif '/layer_1/' in path:
      group = 'layer_1'
    elif '/layer_0/' in path:
      group = 'layer_0'
    else:  # word/position/type tables, embedding LayerNorm, discriminator/embeddings_project
      assert path.startswith('embeddings/') or 'embeddings_project' in path, path
      group = 'embeddings'
    seen.add(group)
    np.testing.assert_allclose(float(m), decay ** expected_exp[group], rtol=1e-6, err_msg=path)
  assert seen == {'head', 'layer_0', 'layer_1', 'embeddings'}
  assert any('embeddings_project' in p for p in mult)
