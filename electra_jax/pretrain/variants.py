"""The paper's objective ablations, each a named `objectives.Objective`.

Selected with `config.objective.name` (`registry.OBJECTIVES` merges `VARIANTS`
with the default 'electra'); all share the model and the train step.

  bert_mlm           BERT baseline: MLM on the discriminator-sized tower, no
                     discriminator. Needs model.sharing=all and
                     generator_fraction=1.0 (generator == discriminator, so the
                     exported `discriminator_params` is the MLM encoder). BERT's
                     80/10/10 is objective.mask_token_prob=0.8,
                     random_token_prob=0.1.
  electra_15         ELECTRA with the discriminator loss only at the masked
                     positions (paper Table 5).
  replace_mlm        The generator's samples replace the masked positions (no
                     [MASK] left); the discriminator-sized model predicts the
                     originals there with an MLM head (model.discriminator_mlm_head).
  all_tokens_mlm     As replace_mlm, but every token is predicted through the
                     paper's copy mechanism: p(x_t) = D_t 1[x_t = input_t]
                     + (1 - D_t) softmax_t(x_t), D_t = sigmoid(-rtd_logit_t) the
                     discriminator head's "original" probability.
  uniform_generator  No learned generator: replacements are uniform over the vocab
                     (as the official `uniform_generator`, specials included).
  unigram_generator  No learned generator: replacements follow the data's unigram
                     distribution, drawn from the current batch (see `_unigram_sample`).
  two_stage          Generator-only MLM for objective.stage_steps steps; then the
                     discriminator is initialised from the generator (equal sizes)
                     and trained with the generator frozen.
  adversarial        The generator maximises the discriminator's loss by REINFORCE
                     with a learned baseline (paper Appendix F) instead of MLE.

Loss weights: the generator-side term uses objective.gen_weight and the
discriminator-side term objective.disc_weight (50 suits the binary loss; the
MLM-style discriminator losses of replace_mlm / all_tokens_mlm are usually run
with disc_weight=1, as the ablation configs do).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from electra_jax.pretrain import objectives
from electra_jax.pretrain.objectives import Objective

# Parameter subtrees of the Pretrainer by tower (see models/electra.py).
GENERATOR_PARTS = ('generator', 'generator_predictions', 'generator_embeddings',
                   'generator_baseline')
DISCRIMINATOR_PARTS = ('discriminator', 'discriminator_predictions', 'discriminator_embeddings',
                       'discriminator_embeddings_delta', 'discriminator_mlm_predictions')


def _require(model, flag: str, objective: str):
  if not getattr(model.cfg, flag):
    raise ValueError(f'objective {objective!r} needs model.{flag}=True '
                     f'(configs/pretrain.py:objective={objective} sets it)')


def _generator_mlm(params, inputs, rng, *, model, cfg, deterministic):
  """Generator logits at the masked slots [B, M, V], its MLM loss and accuracy (shares)."""
  b, masked = inputs.batch, inputs.masked
  positions = None if model.cfg.generator_head == 'full' else masked.positions
  logits = model.apply({'params': params}, masked.input_ids, b.input_mask, b.segment_ids,
                       positions, deterministic, method=model.generator_logits,
                       rngs={'dropout': rng})
  if positions is None:
    logits = jnp.take_along_axis(logits, masked.positions[..., None], axis=1)
  loss, acc = objectives.mlm_loss_and_accuracy(logits, masked.targets, inputs.slot_weights)
  return logits, loss, acc


def _replace(masked, sampled_BxM):
  """The corrupted input: every chosen position gets its sampled token."""
  return objectives.scatter_positions(masked.input_ids, masked.positions, sampled_BxM,
                                      masked.weights)


def _corrupt(params, inputs, rng, *, model, cfg, deterministic):
  """ELECTRA's first half: generator MLM on the masked input, and the input with its samples.

  Returns (batch, masked, gen_loss, gen_accuracy, corrupted ids [B, L], the
  dropout key left for the second model). Splits `rng` as electra_loss does.
  """
  k_gen, k_disc = jax.random.split(rng)
  gen_logits, loss, acc = _generator_mlm(params, inputs, k_gen, model=model, cfg=cfg,
                                         deterministic=deterministic)
  masked = inputs.masked
  sampled = objectives.sample_tokens(inputs.sample_keys, gen_logits, masked.targets,
                                     cfg.temperature, cfg.disallow_correct)
  return inputs.batch, masked, loss, acc, _replace(masked, sampled), k_disc


def _disc(params, ids, b, rng, *, model, deterministic):
  return model.apply({'params': params}, ids, b.input_mask, b.segment_ids, deterministic,
                     method=model.discriminator_logits, rngs={'dropout': rng})


def _rtd_aux(disc_logits_BxL, labels_BxL, weights_BxL):
  return {'disc_probs': jax.nn.sigmoid(disc_logits_BxL), 'disc_labels': labels_BxL,
          'disc_weights': weights_BxL}


def _no_rtd_aux(ids_BxL, input_ids_BxL, input_mask_BxL):
  """Evaluation outputs for objectives without a replaced-token detector.

  The evaluator (pretrain_eval.py) reads disc_probs / disc_labels /
  disc_weights from every objective; here they describe a constant
  "original" prediction (probability 0), so the RTD metrics of such a run are
  those of that trivial detector (AUC 0.5), not of a trained head.
  """
  labels = (ids_BxL != input_ids_BxL).astype(jnp.int32)
  return {'disc_probs': jnp.zeros(ids_BxL.shape, jnp.float32), 'disc_labels': labels,
          'disc_weights': input_mask_BxL}


def masked_position_mask(masked, like_BxL):
  """[B, L] int32: 1 at the chosen (masked) positions."""
  return objectives.scatter_positions(jnp.zeros_like(like_BxL), masked.positions,
                                      jnp.ones_like(masked.positions), masked.weights)


# --------------------------------------------------------------------------- BERT


def bert_mlm_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """MLM only: cross-entropy at the masked positions of the (generator ==
  discriminator) tower. L = MLM (gen_weight does not apply: it is the only term)."""
  del step
  if model.cfg.sharing != 'all':
    raise ValueError(f'objective bert_mlm trains the generator path only, so it needs '
                     f"model.sharing='all' and generator_fraction=1.0 for the fine-tuned "
                     f'encoder to be the MLM encoder (got sharing={model.cfg.sharing!r})')
  b, masked = inputs.batch, inputs.masked
  _, loss, acc = _generator_mlm(params, inputs, rng, model=model, cfg=cfg,
                                deterministic=deterministic)
  # disc_loss 0: there is no discriminator (the evaluator expects the key).
  metrics = {'loss': loss, 'gen_loss': loss, 'gen_accuracy': acc,
             'disc_loss': jnp.zeros([], jnp.float32)}
  return loss, (metrics, _no_rtd_aux(masked.input_ids, b.input_ids, b.input_mask))


# -------------------------------------------------------------------- ELECTRA 15%


def electra_15_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """ELECTRA with the discriminator's BCE averaged over the masked positions only."""
  del step
  b, masked, mlm_loss, mlm_acc, fake_ids, k_disc = _corrupt(
      params, inputs, rng, model=model, cfg=cfg, deterministic=deterministic)
  labels = (fake_ids != b.input_ids).astype(jnp.int32)
  disc_logits = _disc(params, fake_ids, b, k_disc, model=model, deterministic=deterministic)
  weights = masked_position_mask(masked, b.input_ids) * b.input_mask
  # The slots' normalised weights at their positions: the BCE's mean over the chosen
  # positions of the global batch (positions are distinct, so one slot per position).
  norm_weights = objectives.scatter_positions(jnp.zeros(weights.shape, jnp.float32),
                                              masked.positions, inputs.slot_weights,
                                              masked.weights)
  disc_loss, disc_metrics = objectives.disc_loss_and_metrics(disc_logits, labels, norm_weights)
  loss = cfg.gen_weight * mlm_loss + cfg.disc_weight * disc_loss
  metrics = {'loss': loss, 'gen_loss': mlm_loss, 'gen_accuracy': mlm_acc,
             'disc_loss': disc_loss, **disc_metrics}
  return loss, (metrics, _rtd_aux(disc_logits, labels, weights))


# ---------------------------------------------------------- Replace / All-Tokens MLM


def replace_mlm_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """MLM on generator-replaced inputs: the discriminator-sized model sees the
  corrupted sequence (no [MASK]) and predicts the original tokens at the chosen
  positions. L = gen_weight * generator MLM + disc_weight * discriminator MLM."""
  del step
  _require(model, 'discriminator_mlm_head', 'replace_mlm')
  b, masked, gen_loss, gen_acc, fake_ids, k_disc = _corrupt(
      params, inputs, rng, model=model, cfg=cfg, deterministic=deterministic)
  mlm_logits_BxMxV, _ = model.apply({'params': params}, fake_ids, b.input_mask, b.segment_ids,
                                    masked.positions, deterministic,
                                    method=model.discriminator_mlm_logits,
                                    rngs={'dropout': k_disc})
  disc_loss, disc_acc = objectives.mlm_loss_and_accuracy(mlm_logits_BxMxV, masked.targets,
                                                         inputs.slot_weights)
  loss = cfg.gen_weight * gen_loss + cfg.disc_weight * disc_loss
  metrics = {'loss': loss, 'gen_loss': gen_loss, 'gen_accuracy': gen_acc,
             'disc_loss': disc_loss, 'disc_mlm_accuracy': disc_acc,
             'replaced_fraction': objectives.share(fake_ids != b.input_ids,
                                                   inputs.token_weights)}
  return loss, (metrics, _no_rtd_aux(fake_ids, b.input_ids, b.input_mask))


def copy_mechanism_nll(mlm_logits_BxLxV, rtd_logits_BxL, input_ids_BxL, targets_BxL):
  """-log p(target) with p = D 1[target = input] + (1 - D) softmax(target).

  D = sigmoid(-rtd_logit) is the probability that the input token is the
  original (the discriminator head's logit means "replaced"). Computed in log
  space: log p = logaddexp(log D, log(1-D) + log softmax) where the target is
  the input token, log(1-D) + log softmax elsewhere. Returns [B, L].
  """
  logp_BxLxV = jax.nn.log_softmax(mlm_logits_BxLxV.astype(jnp.float32), axis=-1)
  logp_t = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  log_copy = jax.nn.log_sigmoid(-rtd_logits_BxL)
  log_gen = jax.nn.log_sigmoid(rtd_logits_BxL) + logp_t
  return -jnp.where(targets_BxL == input_ids_BxL, jnp.logaddexp(log_copy, log_gen), log_gen)


def all_tokens_mlm_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """All-Tokens MLM with the copy mechanism on generator-replaced inputs: every
  non-pad token's original is predicted. L = gen_weight * generator MLM
  + disc_weight * mean copy-mechanism NLL over non-pad tokens."""
  del step
  _require(model, 'discriminator_mlm_head', 'all_tokens_mlm')
  b, masked, gen_loss, gen_acc, fake_ids, k_disc = _corrupt(
      params, inputs, rng, model=model, cfg=cfg, deterministic=deterministic)
  mlm_logits_BxLxV, rtd_BxL = model.apply({'params': params}, fake_ids, b.input_mask,
                                          b.segment_ids, None, deterministic,
                                          method=model.discriminator_mlm_logits,
                                          rngs={'dropout': k_disc})
  nll_BxL = copy_mechanism_nll(mlm_logits_BxLxV, rtd_BxL, fake_ids, b.input_ids)
  disc_loss = objectives.share(nll_BxL, inputs.token_weights)
  labels = (fake_ids != b.input_ids).astype(jnp.int32)
  _, rtd_metrics = objectives.disc_loss_and_metrics(rtd_BxL, labels, inputs.token_weights)
  loss = cfg.gen_weight * gen_loss + cfg.disc_weight * disc_loss
  metrics = {'loss': loss, 'gen_loss': gen_loss, 'gen_accuracy': gen_acc,
             'disc_loss': disc_loss, **rtd_metrics}
  return loss, (metrics, _rtd_aux(rtd_BxL, labels, b.input_mask))


# ------------------------------------------------------ generators without learning


def _uniform_sample(rng, b, masked, cfg):
  return jax.random.randint(rng, masked.positions.shape, 0, cfg.vocab_size, jnp.int32)


def _unigram_sample(rng, b, masked, cfg):
  """Tokens drawn from the unigram distribution of the data, via the batch.

  Drawing a position uniformly among all candidate tokens of the batch (real,
  non-special) and taking its token is an exact draw from the corpus's unigram
  distribution when batches are random samples of the corpus: no frequency
  table, no I/O, nothing to keep in sync with the tokenizer or data source. The
  draws of one step share the batch, so they lean slightly towards the topics
  of its documents (a larger batch dilutes this). The pool is the whole global
  batch (drawn in `prepare_inputs`, before any split into microbatches).
  """
  cand_N = objectives.candidate_mask(b.input_ids, b.input_mask, cfg).reshape(-1)
  logits_N = jnp.where(cand_N, 0.0, -jnp.inf)
  idx_BxM = jax.random.categorical(rng, logits_N, shape=masked.positions.shape)
  return b.input_ids.reshape(-1)[idx_BxM].astype(jnp.int32)


def fixed_generator_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """Discriminator-only training on replacements from a fixed distribution, drawn
  with the inputs (`prepare_inputs(..., sampler=...)`, on the whole global batch)."""
  del step
  b = inputs.batch
  fake_ids = _replace(inputs.masked, inputs.replacements)
  labels = (fake_ids != b.input_ids).astype(jnp.int32)
  disc_logits = _disc(params, fake_ids, b, rng, model=model, deterministic=deterministic)
  disc_loss, disc_metrics = objectives.disc_loss_and_metrics(disc_logits, labels,
                                                             inputs.token_weights)
  loss = cfg.disc_weight * disc_loss
  # No generator: its MLM metrics are reported as 0 (the evaluator expects the keys).
  zero = jnp.zeros([], jnp.float32)
  return loss, ({'loss': loss, 'gen_loss': zero, 'gen_accuracy': zero, 'disc_loss': disc_loss,
                 **disc_metrics}, _rtd_aux(disc_logits, labels, b.input_mask))


def _mask_parts(params, parts, value):
  """Tree of multipliers: `value` on the named top-level subtrees, 1 elsewhere."""
  return {k: jax.tree.map(lambda x: jnp.asarray(value, jnp.float32) if k in parts
                          else jnp.ones([], jnp.float32), v) for k, v in params.items()}


def freeze_generator_mask(params, step, cfg):
  """No learned generator: its own weights get no update (weight decay included)."""
  del step, cfg
  return _mask_parts(params, GENERATOR_PARTS, 0.0)


# --------------------------------------------------------------------- two-stage


def stage_steps(cfg) -> int:
  """objective.stage_steps (must be > 0 for two_stage)."""
  n = cfg.stage_steps
  if n <= 0:
    raise ValueError(f'objective.stage_steps={n}; two_stage expects > 0 generator-only steps')
  return int(n)


def two_stage_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """Stage 1 (step < n): gen_weight * MLM. Stage 2: disc_weight * BCE.

  Both terms are computed in both stages (the generator still samples in
  stage 2); only the selected one is optimised.
  """
  loss_all, (metrics, aux) = objectives.electra_loss(params, inputs, rng, model=model, cfg=cfg,
                                                     step=step, deterministic=deterministic)
  del loss_all
  first = step < stage_steps(cfg)
  loss = jnp.where(first, cfg.gen_weight * metrics['gen_loss'],
                   cfg.disc_weight * metrics['disc_loss'])
  metrics = {**metrics, 'loss': loss, 'stage': objectives.per_step(jnp.where(first, 1.0, 2.0))}
  return loss, (metrics, aux)


def two_stage_prepare(params, step, cfg):
  """At step n, copy the generator's tower (and, without sharing, its embeddings)
  into the discriminator. The discriminator's head keeps its own initialisation."""
  if 'generator' not in params:
    raise ValueError("two_stage needs a separate generator tower: model.sharing must not be 'all'")
  g, d = params['generator'], params['discriminator']
  if jax.tree.map(jnp.shape, g) != jax.tree.map(jnp.shape, d):
    raise ValueError('two_stage initialises the discriminator from the generator, so they need '
                     'equal sizes: set model.generator_fraction=1.0 and generator_layers=1.0')
  switch = step == stage_steps(cfg)
  pick = lambda src, dst: jax.tree.map(lambda s, t: jnp.where(switch, s, t), src, dst)
  out = dict(params)
  out['discriminator'] = pick(g, d)
  if 'generator_embeddings' in params:  # sharing='none'
    out['discriminator_embeddings'] = pick(params['generator_embeddings'],
                                           params['discriminator_embeddings'])
  return out


def two_stage_update_mask(params, step, cfg):
  """Stage 1 trains the generator parts only; stage 2 the discriminator parts only.

  Shared embeddings (sharing='embeddings' / 'gdes' base) train with the active
  tower: they are the generator's in stage 1 and the discriminator's in stage 2.
  """
  first = (step < stage_steps(cfg)).astype(jnp.float32)
  out = {}
  for k, v in params.items():
    if k in GENERATOR_PARTS:
      m = first
    elif k in DISCRIMINATOR_PARTS:
      m = 1.0 - first
    else:  # the shared embeddings
      m = jnp.ones([], jnp.float32)
    out[k] = jax.tree.map(lambda _, m=m: m, v)
  return out


# ------------------------------------------------------------------ adversarial


def reinforce_terms(gen_logits_BxMxV, sampled_BxM, reward_BxM, baseline_BxM, norm_weights_BxM,
                    temperature: float = 1.0):
  """REINFORCE surrogate and baseline regression loss.

  surrogate = -mean_w[ sg(R - b) * log p(sampled) ], p = softmax(logits / T),
  whose gradient is the single-sample estimator -(R - b) grad log p(sampled) of
  -grad E[R] (unbiased for any b that does not depend on the sample).
  baseline_loss = mean_w[ 0.5 (b - sg(R))^2 ]. Returns (surrogate, baseline_loss) as
  shares of the means (`norm_weights`: slot weights normalised over the global batch).
  """
  logp = jax.nn.log_softmax(gen_logits_BxMxV.astype(jnp.float32) / temperature, axis=-1)
  logp_s = jnp.take_along_axis(logp, sampled_BxM[..., None], axis=-1)[..., 0]
  reward = jax.lax.stop_gradient(reward_BxM)
  advantage = reward - jax.lax.stop_gradient(baseline_BxM)
  surrogate = -objectives.share(advantage * logp_s, norm_weights_BxM)
  baseline_loss = objectives.share(0.5 * jnp.square(baseline_BxM - reward), norm_weights_BxM)
  return surrogate, baseline_loss


def _bce_per_token(logits_BxL, labels_BxL):
  labels = labels_BxL.astype(jnp.float32)
  return (jnp.maximum(logits_BxL, 0) - logits_BxL * labels
          + jnp.log1p(jnp.exp(-jnp.abs(logits_BxL))))


def adversarial_loss(params, inputs, rng, *, model, cfg, step=0, deterministic=False):
  """Adversarial ELECTRA: the generator maximises the discriminator's loss.

  Reward at a masked slot = the discriminator's BCE at that position on the
  corrupted sequence (paper Appendix F: -log D if the sample equals the
  original, else -log(1 - D), D = P(original)). The baseline b is a learned
  dense layer on the generator's hidden states (model.generator_baseline_head).
  L = gen_weight * (surrogate + baseline_loss) + disc_weight * BCE; the MLM
  loss is reported but not trained on.
  """
  del step
  _require(model, 'generator_baseline_head', 'adversarial')
  if cfg.disallow_correct:
    raise ValueError('objective adversarial needs objective.disallow_correct=False: the '
                     'estimator uses the probabilities the samples were drawn from')
  b, masked = inputs.batch, inputs.masked
  k_gen, k_disc = jax.random.split(rng)
  positions = None if model.cfg.generator_head == 'full' else masked.positions
  gen_logits, baseline = model.apply({'params': params}, masked.input_ids, b.input_mask,
                                     b.segment_ids, positions, deterministic,
                                     method=model.generator_logits_and_baseline,
                                     rngs={'dropout': k_gen})
  if positions is None:
    gen_logits = jnp.take_along_axis(gen_logits, masked.positions[..., None], axis=1)
    baseline = jnp.take_along_axis(baseline, masked.positions, axis=1)
  mlm_loss, mlm_acc = objectives.mlm_loss_and_accuracy(gen_logits, masked.targets,
                                                       inputs.slot_weights)
  sampled = objectives.sample_tokens(inputs.sample_keys, gen_logits, masked.targets,
                                     cfg.temperature, False)
  fake_ids = _replace(masked, sampled)
  labels = (fake_ids != b.input_ids).astype(jnp.int32)
  disc_logits = _disc(params, fake_ids, b, k_disc, model=model, deterministic=deterministic)
  disc_loss, disc_metrics = objectives.disc_loss_and_metrics(disc_logits, labels,
                                                             inputs.token_weights)
  reward_BxM = jnp.take_along_axis(_bce_per_token(disc_logits, labels), masked.positions, axis=1)
  surrogate, baseline_loss = reinforce_terms(gen_logits, sampled, reward_BxM, baseline,
                                             inputs.slot_weights, cfg.temperature)
  loss = cfg.gen_weight * (surrogate + baseline_loss) + cfg.disc_weight * disc_loss
  metrics = {'loss': loss, 'gen_loss': mlm_loss, 'gen_accuracy': mlm_acc,
             'gen_reward': objectives.share(reward_BxM, inputs.slot_weights),
             'baseline_loss': baseline_loss, 'disc_loss': disc_loss, **disc_metrics}
  return loss, (metrics, _rtd_aux(disc_logits, labels, b.input_mask))


VARIANTS: dict[str, Objective] = {
    'bert_mlm': Objective(bert_mlm_loss),
    'electra_15': Objective(electra_15_loss),
    'replace_mlm': Objective(replace_mlm_loss),
    'all_tokens_mlm': Objective(all_tokens_mlm_loss),
    'uniform_generator': Objective(
        fixed_generator_loss, functools.partial(objectives.prepare_inputs, sampler=_uniform_sample),
        update_mask=freeze_generator_mask),
    'unigram_generator': Objective(
        fixed_generator_loss, functools.partial(objectives.prepare_inputs, sampler=_unigram_sample),
        update_mask=freeze_generator_mask),
    'two_stage': Objective(two_stage_loss, prepare_params=two_stage_prepare,
                           update_mask=two_stage_update_mask),
    'adversarial': Objective(adversarial_loss),
}
