"""The paper's objective variants: hand-computed losses, freezing, REINFORCE.

Most tests use `FakeModel`, whose "towers" are lookup tables in `params`, so
every loss can be written out by hand; one test runs each variant on the real
tiny Pretrainer.
"""

import dataclasses
import functools
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from electra_jax.pretrain import variants as ov
from electra_jax.pretrain import objectives
from electra_jax.pretrain import registry
from electra_jax.pretrain import loop

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 8


def _cfg(mask_prob=0.5, max_pred=2, **kw):
  base = dict(mask_prob=mask_prob, max_predictions_per_seq=max_pred, mask_token_prob=1.0,
              random_token_prob=0.0, temperature=1.0, disallow_correct=False, gen_weight=1.0,
              disc_weight=50.0, vocab_size=V, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK)
  base.update(kw)
  return objectives.ObjectiveConfig(**base)


class FakeModel:
  """Tables instead of towers: generator logits = params['g'] ([V], same at every
  slot), discriminator logit of token t = params['d'][t], discriminator MLM
  logits = params['m'] ([V]), REINFORCE baseline = params['b'] (scalar)."""

  def __init__(self, sharing='embeddings'):
    self.cfg = types.SimpleNamespace(generator_head='masked', sharing=sharing,
                                     discriminator_mlm_head=True, generator_baseline_head=True)

  def apply(self, variables, *args, method, rngs=None):
    del rngs
    return method(variables['params'], *args)

  @staticmethod
  def _vocab(vec, ids, positions):
    shape = (positions if positions is not None else ids).shape
    return jnp.broadcast_to(vec, shape + (V,))

  def generator_logits(self, p, ids, mask, seg, positions, det):
    return self._vocab(p['g'], ids, positions)

  def discriminator_logits(self, p, ids, mask, seg, det):
    return p['d'][ids]

  def discriminator_mlm_logits(self, p, ids, mask, seg, positions, det):
    return self._vocab(p['m'], ids, positions), p['d'][ids]

  def generator_logits_and_baseline(self, p, ids, mask, seg, positions, det):
    return self._vocab(p['g'], ids, positions), jnp.full(positions.shape, p['b'])


# [CLS] 4 5 [SEP]: with mask_prob 0.5 both middle tokens are chosen (round(4 * 0.5) = 2).
BATCH = {'input_ids': jnp.array([[CLS, 4, 5, SEP]], jnp.int32),
         'input_mask': jnp.ones((1, 4), jnp.int32), 'segment_ids': jnp.zeros((1, 4), jnp.int32)}
ORIG = np.array([CLS, 4, 5, SEP])
FAKE = np.array([CLS, 4, 4, SEP])  # the generator always samples 4 (see _params)


def _params():
  g = np.zeros(V, np.float32)
  g[4] = 100.0  # sample 4 everywhere: correct at position 1, a replacement at position 2
  return {'g': jnp.asarray(g), 'd': jnp.linspace(-1.0, 1.5, V), 'm': jnp.linspace(0.5, -0.7, V),
          'b': jnp.asarray(0.3)}


def _np(p):
  return {k: np.asarray(v, np.float64) for k, v in p.items()}


def logsm(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def softplus(x):
  return np.log1p(np.exp(x))


def _loss(name, params=None, cfg=None, model=None, step=0):
  obj = registry.get_objective(name)
  loss, (metrics, aux) = obj.loss(params or _params(), BATCH, jax.random.key(0),
                                  model=model or FakeModel(), cfg=cfg or _cfg(), step=step,
                                  deterministic=True)
  return float(loss), metrics, aux


def _mlm(logits, targets):
  return -np.mean([logsm(logits)[t] for t in targets])


def test_every_variant_gives_what_the_evaluator_reads():
  """pretrain_eval.evaluate reads these metrics and aux keys from any objective."""
  cfg = dataclasses.replace(_cfg(disc_weight=1.0), stage_steps=3)
  for name in sorted(registry.OBJECTIVES):
    model = FakeModel(sharing='all' if name == 'bert_mlm' else 'embeddings')
    _, m, aux = _loss(name, cfg=cfg, model=model)
    assert {'loss', 'gen_loss', 'gen_accuracy', 'disc_loss'} <= set(m), name
    for k in ('disc_probs', 'disc_labels', 'disc_weights'):
      assert aux[k].shape == BATCH['input_ids'].shape, (name, k)


def test_all_variants_registered():
  assert {'electra', 'bert_mlm', 'electra_15', 'replace_mlm', 'all_tokens_mlm',
          'uniform_generator', 'unigram_generator', 'two_stage',
          'adversarial'} <= set(registry.OBJECTIVES)


def test_bert_mlm_loss_by_hand():
  p = _np(_params())
  loss, m, _ = _loss('bert_mlm', model=FakeModel(sharing='all'))
  np.testing.assert_allclose(loss, _mlm(p['g'], [4, 5]), rtol=1e-5)
  assert float(m['gen_accuracy']) == pytest.approx(0.5, abs=1e-5)
  with pytest.raises(ValueError, match="sharing='all'"):
    _loss('bert_mlm', model=FakeModel(sharing='embeddings'))


def _bce(logit, label):
  return softplus(-logit) if label else softplus(logit)


def test_electra_15_only_masked_positions():
  p = _np(_params())
  labels = FAKE != ORIG  # [0, 0, 1, 0]
  gen = _mlm(p['g'], [4, 5])
  loss15, m15, aux = _loss('electra_15')
  want15 = gen + 50.0 * np.mean([_bce(p['d'][FAKE[i]], labels[i]) for i in (1, 2)])
  np.testing.assert_allclose(loss15, want15, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(aux['disc_weights'])[0], [0, 1, 1, 0])
  # The default averages over all four tokens instead.
  loss, _, _ = _loss('electra')
  want = gen + 50.0 * np.mean([_bce(p['d'][FAKE[i]], labels[i]) for i in range(4)])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(m15['replaced_fraction']) == pytest.approx(0.5, abs=1e-5)


def test_replace_mlm_by_hand():
  p = _np(_params())
  loss, m, _ = _loss('replace_mlm', cfg=_cfg(disc_weight=1.0))
  np.testing.assert_allclose(loss, _mlm(p['g'], [4, 5]) + _mlm(p['m'], [4, 5]), rtol=1e-5)
  np.testing.assert_allclose(float(m['disc_loss']), _mlm(p['m'], [4, 5]), rtol=1e-5)


def test_all_tokens_mlm_copy_mechanism_by_hand():
  p = _np(_params())
  sm = np.exp(logsm(p['m']))
  nll = []
  for inp, tgt in zip(FAKE, ORIG):
    copy = 1.0 / (1.0 + np.exp(p['d'][inp]))  # D = sigmoid(-logit) = P(original)
    prob = (1.0 - copy) * sm[tgt] + (copy if inp == tgt else 0.0)
    nll.append(-np.log(prob))
  loss, m, _ = _loss('all_tokens_mlm', cfg=_cfg(disc_weight=1.0))
  np.testing.assert_allclose(float(m['disc_loss']), np.mean(nll), rtol=1e-5)
  np.testing.assert_allclose(loss, _mlm(p['g'], [4, 5]) + np.mean(nll), rtol=1e-5)


def test_copy_mechanism_is_stable_for_extreme_logits():
  nll = ov.copy_mechanism_nll(jnp.array([[[0.0, 80.0]]]), jnp.array([[-200.0]]),
                              jnp.array([[0]]), jnp.array([[0]]))
  assert np.isfinite(np.asarray(nll)).all() and float(nll[0, 0]) < 1e-6


def test_variants_that_need_a_head_say_so():
  model = FakeModel()
  model.cfg.discriminator_mlm_head = False
  with pytest.raises(ValueError, match='discriminator_mlm_head'):
    _loss('all_tokens_mlm', model=model)


def test_fixed_generator_loss_by_hand():
  p = _np(_params())
  always_7 = lambda rng, b, masked, cfg: jnp.full(masked.positions.shape, 7, jnp.int32)
  obj = objectives.Objective(ov.fixed_generator_loss,
                             functools.partial(objectives.prepare_inputs, sampler=always_7))
  loss, (m, _) = obj.loss(_params(), BATCH, jax.random.key(0), model=FakeModel(), cfg=_cfg(),
                          deterministic=True)
  fake = [CLS, 7, 7, SEP]
  want = 50.0 * np.mean([_bce(p['d'][t], t != o) for t, o in zip(fake, ORIG)])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(m['gen_loss']) == 0.0  # no generator


def test_fixed_generators_freeze_the_generator():
  params = {'generator': {'w': jnp.ones(3)}, 'generator_predictions': {'b': jnp.ones(2)},
            'discriminator': {'w': jnp.ones(3)}, 'embeddings': {'t': jnp.ones(2)}}
  for name in ('uniform_generator', 'unigram_generator'):
    mask = registry.get_objective(name).update_mask(params, 0, _cfg())
    assert float(mask['generator']['w']) == 0 and float(mask['generator_predictions']['b']) == 0
    assert float(mask['discriminator']['w']) == 1 and float(mask['embeddings']['t']) == 1


def test_uniform_and_unigram_samplers_follow_their_distributions():
  # Candidates in the batch: token 4 three times, token 5 once (specials excluded).
  b = objectives.Batch(jnp.array([[CLS, 4, 4, SEP], [CLS, 4, 5, PAD]], jnp.int32),
                       jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.int32), jnp.zeros((2, 4), jnp.int32))
  masked = objectives.Masked(b.input_ids, jnp.zeros((2, 4000), jnp.int32),
                             jnp.ones((2, 4000)), jnp.zeros((2, 4000), jnp.int32))
  uni = np.asarray(ov._unigram_sample(jax.random.key(1), b, masked, _cfg()))
  assert set(np.unique(uni)) == {4, 5}
  assert np.mean(uni == 4) == pytest.approx(0.75, abs=0.02)
  unif = np.asarray(ov._uniform_sample(jax.random.key(2), b, masked, _cfg()))
  np.testing.assert_allclose(np.bincount(unif.ravel(), minlength=V) / unif.size, 1 / V, atol=0.01)


def test_two_stage_loss_switches_at_stage_steps():
  p = _np(_params())
  cfg = dataclasses.replace(_cfg(), stage_steps=3)
  labels = FAKE != ORIG
  disc = np.mean([_bce(p['d'][FAKE[i]], labels[i]) for i in range(4)])
  for step, want in [(0, _mlm(p['g'], [4, 5])), (2, _mlm(p['g'], [4, 5])), (3, 50.0 * disc)]:
    loss, m, _ = _loss('two_stage', cfg=cfg, step=jnp.asarray(step))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
  with pytest.raises(ValueError, match='stage_steps'):
    _loss('two_stage', cfg=_cfg())  # stage_steps 0: two_stage needs > 0


def _real(objective, **overrides):
  c = tiny_config(f'tiny,objective={objective}', **overrides)
  c.model.num_layers = 1
  c.model.update(hidden_size=16, embedding_size=16, intermediate_size=32, num_heads=1,
                 vocab_size=32)
  if c.model.generator_fraction != 1.0:
    c.model.generator_fraction = 0.5
  c.train.batch_size, c.train.seq_len = 2, 8
  model = loop.build_model(c)
  b = loop.dummy_batch(1, 8)
  variables = model.init({'params': jax.random.key(0)}, b['input_ids'], b['input_mask'],
                         b['segment_ids'], jnp.zeros((1, 2), jnp.int32), True)
  return c, model, flax.linen.meta.unbox(variables['params'])


def _text_batch(c, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(5, c.model.vocab_size, (c.train.batch_size, c.train.seq_len))
  ids[:, 0], ids[:, -1] = c.tokens.cls_id, c.tokens.sep_id
  return {'input_ids': jnp.asarray(ids, jnp.int32), 'input_mask': jnp.ones(ids.shape, jnp.int32),
          'segment_ids': jnp.zeros(ids.shape, jnp.int32)}


def test_two_stage_freezes_and_copies_with_the_real_train_step():
  c, model, params = _real('two_stage', **{'model.generator_fraction': 1.0,
                                           'model.sharing': 'none'})
  c.objective.stage_steps = 2
  cfg = objectives.ObjectiveConfig.from_config(c)
  assert cfg.stage_steps == 2
  obj = registry.get_objective('two_stage')
  tx = optax.adamw(1e-2, weight_decay=0.1)  # decay too: frozen means not even decayed
  state = loop.TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params))
  step_fn = jax.jit(lambda s, b, r: loop.train_step(
      s, b, r, model=model, tx=tx, obj_cfg=cfg, objective=obj, schedule=lambda _: jnp.asarray(1e-2),
      skip_nonfinite=False))
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b)))
  p0 = state.params
  for i in range(2):  # stage 1: the discriminator side never moves
    state, _ = step_fn(state, _text_batch(c, i), jax.random.key(0))
  p2 = state.params
  for k in ov.DISCRIMINATOR_PARTS:
    if k in p0:
      assert same(p0[k], p2[k]), k
  assert not same(p0['generator'], p2['generator'])
  # Step 2 starts stage 2: the discriminator is initialised from the generator.
  prepared = obj.prepare_params(p2, jnp.asarray(2), cfg)
  assert same(prepared['discriminator'], p2['generator'])
  assert same(prepared['discriminator_embeddings'], p2['generator_embeddings'])
  assert same(obj.prepare_params(p2, jnp.asarray(3), cfg), p2)
  for i in range(2, 4):  # stage 2: the generator side never moves
    state, _ = step_fn(state, _text_batch(c, i), jax.random.key(0))
  for k in ov.GENERATOR_PARTS:
    if k in p2:
      assert same(p2[k], state.params[k]), k
  assert not same(prepared['discriminator'], state.params['discriminator'])


def test_reinforce_terms_exact_single_sample_gradient():
  logits = jnp.array([[[0.2, -0.4, 1.0, 0.0]]])
  p = np.asarray(jax.nn.softmax(logits[0, 0]))
  s, r, b = 2, 1.7, 0.4
  grad = jax.grad(lambda l: ov.reinforce_terms(l, jnp.array([[s]]), jnp.array([[r]]),
                                               jnp.array([[b]]), jnp.ones((1, 1)))[0])(logits)
  np.testing.assert_allclose(np.asarray(grad[0, 0]), -(r - b) * (np.eye(4)[s] - p), atol=1e-5)
  # The reward and the baseline carry no gradient into the surrogate.
  g_rb = jax.grad(lambda rb: ov.reinforce_terms(logits, jnp.array([[s]]), rb[0], rb[1],
                                                jnp.ones((1, 1)))[0])(jnp.ones((2, 1, 1)))
  assert float(jnp.abs(g_rb).sum()) == 0.0


def test_adversarial_generator_gradient_is_reinforce_in_expectation():
  """E over samples of d loss / d g = -gen_weight * grad_g E_{v~softmax(g)}[R(v)].

  One masked slot (position 1, original token 4). The reward is the
  discriminator's loss there: R(v) = softplus(-d[v]) for v != 4 (label
  "replaced") and softplus(d[4]) for v = 4, so E[R] = sum_v p_v R(v) and its
  gradient p * (R - E[R]) are known in closed form.
  """
  batch = {'input_ids': jnp.array([[CLS, 4, SEP]], jnp.int32),
           'input_mask': jnp.ones((1, 3), jnp.int32), 'segment_ids': jnp.zeros((1, 3), jnp.int32)}
  cfg = _cfg(mask_prob=0.15, max_pred=1, gen_weight=2.0)
  params = {'g': jnp.array([0.0, -1.0, 0.5, 0.3, 1.0, -0.5, 0.8, 0.2]),
            'd': jnp.linspace(-1.2, 1.0, V), 'm': jnp.zeros(V), 'b': jnp.asarray(0.5)}
  obj = registry.get_objective('adversarial')

  def grad_g(key):
    g = jax.grad(lambda p: obj.loss(p, batch, key, model=FakeModel(), cfg=cfg, step=0,
                                    deterministic=True)[0])(params)
    return g['g']

  n = 40000
  mean = np.asarray(jax.jit(jax.vmap(grad_g))(jax.random.split(jax.random.key(0), n)).mean(0))
  pnp = _np(params)
  prob = np.exp(logsm(pnp['g']))
  reward = np.array([softplus(pnp['d'][4]) if v == 4 else softplus(-pnp['d'][v])
                     for v in range(V)])
  want = -2.0 * prob * (reward - prob @ reward)
  np.testing.assert_allclose(mean, want, atol=0.015)
  assert np.abs(want).max() > 0.1  # the check is not trivially near zero


def test_adversarial_baseline_regresses_on_the_reward():
  batch = {'input_ids': jnp.array([[CLS, 4, SEP]], jnp.int32),
           'input_mask': jnp.ones((1, 3), jnp.int32), 'segment_ids': jnp.zeros((1, 3), jnp.int32)}
  cfg = _cfg(mask_prob=0.15, max_pred=1, gen_weight=1.0)
  params = _params()  # the generator samples 4 = the original: R = softplus(d[4])
  _, (m, _) = registry.get_objective('adversarial').loss(
      params, batch, jax.random.key(0), model=FakeModel(), cfg=cfg, step=0, deterministic=True)
  r = softplus(_np(params)['d'][4])
  np.testing.assert_allclose(float(m['gen_reward']), r, rtol=1e-5)
  np.testing.assert_allclose(float(m['baseline_loss']), 0.5 * (0.3 - r) ** 2, rtol=1e-4)


# The variants that call the model differently from 'electra' (other methods or
# heads); the rest reuse its calls and are covered by the FakeModel tests.
VARIANT_OVERRIDES = {
    'bert_mlm': {'model.sharing': 'all', 'model.generator_fraction': 1.0},
    'replace_mlm': {'objective.disc_weight': 1.0},
    'all_tokens_mlm': {'objective.disc_weight': 1.0},
    'adversarial': {},
}


def test_variants_train_on_the_real_model():
  for name, overrides in VARIANT_OVERRIDES.items():
    c, model, params = _real(name, **overrides)
    cfg = objectives.ObjectiveConfig.from_config(c)
    obj = registry.get_objective(name)
    f = jax.jit(jax.value_and_grad(
        lambda p: obj.loss(p, _text_batch(c), jax.random.key(1), model=model, cfg=cfg, step=0)[0]))
    loss, grads = f(params)
    assert np.isfinite(float(loss)), name
    assert float(optax.global_norm(grads)) > 0, name
