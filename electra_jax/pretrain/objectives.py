"""Masking, sampling and the ELECTRA loss, all pure functions run inside the jitted step.

Everything follows google-research/electra (pretrain_helpers.py,
run_pretraining.py) as summarised in docs/reference.md; constants come from
`config.objective` and `config.tokens`. Variants of the objective (the paper's
ablations, variants.py) have the same signature as `electra_loss`; registry.py
names them all.

An objective runs in two parts, so that a global batch can be split into
microbatches (train.grad_accum_steps) without changing what is computed:

  inputs = prepare_inputs(batch, k_inputs, cfg)   # the whole global batch, model-free:
      # masking, per-example sampling keys, and loss weights normalised over the
      # whole batch (each term's weights sum to 1 over the global batch)
  loss, (metrics, aux) = electra_loss(params, inputs_mb, k_dropout, ...)   # any row subset

The loss of a microbatch is its share of the global batch's loss, so the
shares add up over microbatches to exactly the one-batch loss (and gradient).
A metric is likewise a share, or a `Ratio` whose numerator and denominator are
summed over microbatches before dividing (`finalize`). `Objective.loss` runs
both parts on one whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


# Every objective's name: the default 'electra' (here) and the paper's ablations
# (variants.py). registry.py maps each to its implementation and checks this list.
NAMES = ('electra', 'bert_mlm', 'electra_15', 'replace_mlm', 'all_tokens_mlm',
         'uniform_generator', 'unigram_generator', 'two_stage', 'adversarial')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Typed view of `config.objective` plus the special-token ids."""
  mask_prob: float
  max_predictions_per_seq: int
  mask_token_prob: float
  random_token_prob: float
  temperature: float
  disallow_correct: bool
  gen_weight: float
  disc_weight: float
  vocab_size: int
  pad_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  name: str = 'electra'
  stage_steps: int = 0  # two_stage: generator-only steps before the discriminator stage

  @classmethod
  def from_config(cls, config) -> 'ObjectiveConfig':
    o, t = config.objective, config.tokens
    if not 0.0 < o.mask_prob < 1.0:
      raise ValueError(f'objective.mask_prob={o.mask_prob}; expected a value in (0, 1)')
    if o.mask_token_prob + o.random_token_prob > 1.0:
      raise ValueError(f'objective.mask_token_prob + random_token_prob = '
                       f'{o.mask_token_prob + o.random_token_prob}; expected <= 1')
    if o.max_predictions_per_seq < 1 or o.max_predictions_per_seq > config.train.seq_len:
      raise ValueError(f'objective.max_predictions_per_seq={o.max_predictions_per_seq}; expected '
                       f'1..train.seq_len ({config.train.seq_len}); the official value is '
                       f'int((mask_prob + 0.005) * seq_len)')
    if o.name not in NAMES:
      raise ValueError(f'objective.name={o.name!r}; expected one of {sorted(NAMES)}')
    return cls(mask_prob=o.mask_prob, max_predictions_per_seq=o.max_predictions_per_seq,
               mask_token_prob=o.mask_token_prob, random_token_prob=o.random_token_prob,
               temperature=o.temperature, disallow_correct=o.disallow_correct,
               gen_weight=o.gen_weight, disc_weight=o.disc_weight,
               vocab_size=config.model.vocab_size, pad_id=t.pad_id, cls_id=t.cls_id,
               sep_id=t.sep_id, mask_id=t.mask_id, name=o.name,
               stage_steps=o.stage_steps)


def example_keys(rng, batch_size: int):
  """[B, 2] uint32: key data of fold_in(rng, b) for each row b of the global batch.

  A row's draws depend on its index in the global batch only, not on which
  microbatch it is computed in.
  """
  fold = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(rng, i)))
  return fold(jnp.arange(batch_size, dtype=jnp.uint32))


class Masked(NamedTuple):
  """Result of `mask_inputs`; M = max_predictions_per_seq."""
  input_ids: jax.Array     # [B, L] with [MASK] (or random / kept tokens) at the chosen positions
  positions: jax.Array     # [B, M] int32; unused slots point at 0 with weight 0
  weights: jax.Array       # [B, M] float32, 1 for a real prediction slot
  targets: jax.Array       # [B, M] int32 original tokens at `positions`


def candidate_mask(input_ids, input_mask, cfg: ObjectiveConfig):
  """[B, L] bool: positions that may be masked (not [CLS], [SEP], [MASK] or padding)."""
  return (input_mask.astype(bool) & (input_ids != cfg.cls_id) & (input_ids != cfg.sep_id)
          & (input_ids != cfg.mask_id) & (input_ids != cfg.pad_id))


def scatter_positions(ids_BxL, positions_BxM, values_BxM, weights_BxM):
  """ids with ids[b, positions[b, m]] = values[b, m] wherever weights[b, m] > 0."""
  B, L = ids_BxL.shape
  # Slots without a prediction are sent out of bounds and dropped.
  pos = jnp.where(weights_BxM > 0, positions_BxM, L)
  rows = jnp.broadcast_to(jnp.arange(B)[:, None], pos.shape)
  return ids_BxL.at[rows, pos].set(values_BxM.astype(ids_BxL.dtype), mode='drop')


def mask_inputs(rng, input_ids, input_mask, cfg: ObjectiveConfig) -> Masked:
  """Dynamic masking, as the official `pretrain_helpers.mask`.

  num_to_predict = max(1, min(M, round(num_tokens * mask_prob))) where
  num_tokens counts all real tokens ([CLS]/[SEP] too). Positions are drawn
  uniformly without replacement among the candidates (Gumbel top-k; the
  official code samples with replacement, so duplicates make it mask slightly
  fewer). Of those, `mask_token_prob` become [MASK], `random_token_prob` a
  uniform random token, and the rest keep the original token.
  """
  B, L = input_ids.shape
  M = min(cfg.max_predictions_per_seq, L)
  k_pos, k_kind, k_rand = jax.random.split(rng, 3)
  cand_BxL = candidate_mask(input_ids, input_mask, cfg)
  num_tokens_B = jnp.sum(input_mask, axis=-1).astype(jnp.float32)
  num_to_predict_B = jnp.maximum(1, jnp.minimum(M, jnp.round(num_tokens_B * cfg.mask_prob)))
  num_to_predict_B = jnp.minimum(num_to_predict_B, jnp.sum(cand_BxL, -1))  # short sequences
  scores_BxL = jnp.where(cand_BxL, jax.random.uniform(k_pos, (B, L)), -1.0)
  top_scores_BxM, positions_BxM = jax.lax.top_k(scores_BxL, M)
  weights_BxM = ((jnp.arange(M)[None, :] < num_to_predict_B[:, None])
                 & (top_scores_BxM >= 0)).astype(jnp.float32)
  positions_BxM = jnp.where(weights_BxM > 0, positions_BxM, 0).astype(jnp.int32)
  targets_BxM = jnp.take_along_axis(input_ids, positions_BxM, axis=1)

  u_BxM = jax.random.uniform(k_kind, (B, M))
  random_ids_BxM = jax.random.randint(k_rand, (B, M), 0, cfg.vocab_size, dtype=input_ids.dtype)
  new_BxM = jnp.where(u_BxM < cfg.mask_token_prob, cfg.mask_id,
                      jnp.where(u_BxM < cfg.mask_token_prob + cfg.random_token_prob,
                                random_ids_BxM, targets_BxM))
  masked_ids = scatter_positions(input_ids, positions_BxM, new_BxM, weights_BxM)
  return Masked(masked_ids, positions_BxM, weights_BxM, targets_BxM.astype(jnp.int32))


# Vocabulary entries per block in `sample_tokens`: two levels
# of ~sqrt(V) (30522 -> 239 blocks of 128) keep both levels small.
VOCAB_BLOCK = 128


def _vocab_blocks(x_BxMxV, fill):
  """[..., V] -> [..., K, C] with C = min(VOCAB_BLOCK, V), the tail padded with `fill`."""
  V = x_BxMxV.shape[-1]
  C = min(VOCAB_BLOCK, V)
  K = -(-V // C)
  x = jnp.pad(x_BxMxV, [(0, 0)] * (x_BxMxV.ndim - 1) + [(0, K * C - V)], constant_values=fill)
  return x.reshape(*x.shape[:-1], K, C)


def sample_tokens(keys_Bx2, logits_BxMxV, targets_BxM, temperature: float,
                  disallow_correct: bool):
  """Exact sample from softmax(logits / temperature) by two-level Gumbel-max, under stop-gradient.

  keys_Bx2: one key per row (`example_keys`), so a row's samples do not depend
  on the other rows it is computed with. The vocabulary is split into K blocks
  of C entries: a block is drawn by Gumbel-max over the blocks' logsumexp, then
  an entry of that block by Gumbel-max over its C logits. P(i) = (Z_k / Z)(exp(x_i)
  / Z_k) = softmax(x)_i, the same law as one Gumbel per entry, with K + C draws
  per slot instead of V (239 + 128 against 30522: the per-entry draws and their
  two logs were the step's largest cost on CPU). With `disallow_correct` the
  original token can never be drawn.
  """
  logits = jax.lax.stop_gradient(logits_BxMxV).astype(jnp.float32) / temperature
  if disallow_correct:
    vocab_ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    logits = jnp.where(vocab_ids == targets_BxM[..., None], -jnp.inf, logits)
  blocks_BxMxKxC = _vocab_blocks(logits, -jnp.inf)
  C = blocks_BxMxKxC.shape[-1]
  # Block logsumexp; an all -inf block (padding, a disallowed lone entry) gets -inf.
  m_BxMxK = jnp.max(blocks_BxMxKxC, -1)
  m_safe = jnp.where(jnp.isfinite(m_BxMxK), m_BxMxK, 0.0)
  block_logits_BxMxK = m_safe + jnp.log(jnp.sum(jnp.exp(blocks_BxMxKxC - m_safe[..., None]), -1))

  M, K = block_logits_BxMxK.shape[1:]

  def gumbels(key_data):  # one row's noise: [M, K] for the blocks, [M, C] for the entries
    k_block, k_entry = jax.random.split(jax.random.wrap_key_data(key_data))
    return jax.random.gumbel(k_block, (M, K)), jax.random.gumbel(k_entry, (M, C))

  g_block_BxMxK, g_entry_BxMxC = jax.vmap(gumbels)(keys_Bx2)
  kb = jnp.argmax(block_logits_BxMxK + g_block_BxMxK, -1)
  inner_BxMxC = jnp.take_along_axis(blocks_BxMxKxC, kb[..., None, None], axis=-2)[..., 0, :]
  j = jnp.argmax(inner_BxMxC + g_entry_BxMxC, -1)
  return (kb * C + j).astype(jnp.int32)


def normalized(w):
  """w / sum(w): weights that sum to 1 over the (global) batch they are computed on."""
  w = w.astype(jnp.float32)
  return w / jnp.maximum(jnp.sum(w), 1e-6)


def share(x, norm_weights):
  """This row subset's share of the batch mean: sum(x * w) with `normalized` weights."""
  return jnp.sum(x.astype(jnp.float32) * norm_weights)


class Ratio(NamedTuple):
  """A metric whose denominator depends on the model (e.g. precision): numerator and
  denominator are each summed over microbatches, then divided (`finalize`)."""
  num: jax.Array
  den: jax.Array


def per_step(x) -> Ratio:
  """A metric with one value per step (e.g. the stage of two_stage): the same in every microbatch."""
  return Ratio(jnp.asarray(x, jnp.float32), jnp.ones([], jnp.float32))


def finalize(metrics: dict) -> dict:
  """Summed metric shares -> values: a Ratio becomes num / den (0 when den is 0)."""
  out = {}
  for k, v in metrics.items():
    if isinstance(v, Ratio):
      v = v.num / jnp.where(v.den == 0, 1.0, v.den)
    out[k] = v
  return out


def _nll_and_hit_fwd(logits_BxMxV, targets_BxM):
  m_BxM = jnp.max(logits_BxMxV, -1)
  lse_BxM = m_BxM + jnp.log(jnp.sum(jnp.exp(logits_BxMxV - m_BxM[..., None]), -1))
  target_BxM = jnp.take_along_axis(logits_BxMxV, targets_BxM[..., None], axis=-1)[..., 0]
  hit_BxM = (target_BxM >= m_BxM).astype(jnp.float32)
  return (lse_BxM - target_BxM, hit_BxM), (logits_BxMxV, targets_BxM, lse_BxM)


def _nll_and_hit_bwd(res, g):
  logits_BxMxV, targets_BxM, lse_BxM = res
  g_nll_BxM, _ = g  # the hit indicator has no gradient
  vocab_ids = jnp.arange(logits_BxMxV.shape[-1], dtype=targets_BxM.dtype)
  # d nll / d logits = softmax - one_hot(target): one fused pass over [B, M, V].
  onehot = (vocab_ids == targets_BxM[..., None]).astype(logits_BxMxV.dtype)
  grad = g_nll_BxM[..., None] * (jnp.exp(logits_BxMxV - lse_BxM[..., None]) - onehot)
  return grad, None


@jax.custom_vjp
def nll_and_hit(logits_BxMxV, targets_BxM):
  """-log softmax(logits)[target] and 1.0 where the target has the largest logit.

  The backward pass is softmax - one_hot written as one elementwise pass (the
  autodiff of a take_along_axis is a scatter into a zero [B, M, V] array plus
  a separate pass). `hit` uses the max that the logsumexp needs anyway, so the
  accuracy costs no argmax; it counts a target tied with the maximum as a hit
  (jnp.argmax would pick the first of the tied entries).
  """
  return _nll_and_hit_fwd(logits_BxMxV, targets_BxM)[0]


nll_and_hit.defvjp(_nll_and_hit_fwd, _nll_and_hit_bwd)


def mlm_loss_and_accuracy(logits_BxMxV, targets_BxM, norm_weights_BxM):
  """Cross-entropy and accuracy over the real prediction slots, as shares of the batch
  mean (`norm_weights`: the slot weights `normalized` over the global batch)."""
  nll_BxM, hit_BxM = nll_and_hit(logits_BxMxV.astype(jnp.float32), targets_BxM.astype(jnp.int32))
  return share(nll_BxM, norm_weights_BxM), share(hit_BxM, norm_weights_BxM)


def disc_loss_and_metrics(logits_BxL, labels_BxL, norm_weights_BxL):
  """Sigmoid cross-entropy over the tokens with weight > 0 and RTD metrics, as shares
  (`norm_weights`: `normalized` over the global batch; precision and recall are Ratios)."""
  labels = labels_BxL.astype(jnp.float32)
  w = norm_weights_BxL
  counted = (w > 0).astype(jnp.float32)
  # log(1 + exp(-|x|)) form: stable for any logit.
  bce = jnp.maximum(logits_BxL, 0) - logits_BxL * labels + jnp.log1p(jnp.exp(-jnp.abs(logits_BxL)))
  pred = (logits_BxL > 0).astype(jnp.float32)
  tp = jnp.sum(pred * labels * counted)
  metrics = {
      'disc_accuracy': share((pred == labels).astype(jnp.float32), w),
      'disc_precision': Ratio(tp, jnp.sum(pred * counted)),
      'disc_recall': Ratio(tp, jnp.sum(labels * counted)),
      'replaced_fraction': share(labels, w),
  }
  return share(bce, w), metrics


class Batch(NamedTuple):
  input_ids: jax.Array    # [B, L] int32
  input_mask: jax.Array   # [B, L] int32, 1 = real token
  segment_ids: jax.Array  # [B, L] int32


def as_batch(batch: dict) -> Batch:
  return Batch(batch['input_ids'], batch['input_mask'], batch['segment_ids'])


class Inputs(NamedTuple):
  """What `prepare_inputs` draws for a global batch; every leaf is split along axis 0."""
  batch: Batch                 # the original rows
  masked: Masked               # `mask_inputs` on the whole global batch
  slot_weights: jax.Array      # [B, M] float32: masked.weights normalised over the global batch
  token_weights: jax.Array     # [B, L] float32: input_mask normalised over the global batch
  sample_keys: jax.Array       # [B, 2] uint32: each row's sampling key (`example_keys`)
  replacements: jax.Array | None = None  # [B, M] int32: fixed generators' tokens (variants.py)


def prepare_inputs(batch: dict, rng, cfg: ObjectiveConfig, sampler=None) -> Inputs:
  """The model-free part of a step, on the whole global batch (see the module docstring).

  `sampler(rng, batch, masked, cfg) -> [B, M]` draws replacement tokens for the
  objectives without a learned generator.
  """
  b = as_batch(batch)
  k_mask, k_sample, k_replace = jax.random.split(rng, 3)
  masked = mask_inputs(k_mask, b.input_ids, b.input_mask, cfg)
  return Inputs(b, masked, normalized(masked.weights), normalized(b.input_mask),
                example_keys(k_sample, b.input_ids.shape[0]),
                None if sampler is None else sampler(k_replace, b, masked, cfg))


def electra_loss(params, inputs: Inputs, rng, *, model, cfg: ObjectiveConfig, step=0,
                 deterministic=False):
  """Replaced-token detection: L = gen_weight * MLM + disc_weight * BCE.

  `inputs`: prepare_inputs' output, or any row subset of it; `rng`: the
  dropout key. Returns (loss, (metrics, aux)), loss and metrics as shares
  (module docstring); aux holds per-token outputs used by evaluation
  (discriminator probabilities, labels, weights). `step` is unused here;
  staged variants (two-stage training) read it.
  """
  del step
  b, masked = inputs.batch, inputs.masked
  k_gen_drop, k_disc_drop = jax.random.split(rng)

  positions = None if model.cfg.generator_head == 'full' else masked.positions
  gen_logits = model.apply({'params': params}, masked.input_ids, b.input_mask, b.segment_ids,
                           positions, deterministic, method=model.generator_logits,
                           rngs={'dropout': k_gen_drop})
  if positions is None:  # full head: keep the masked slots only for the loss
    gen_logits = jnp.take_along_axis(gen_logits, masked.positions[..., None], axis=1)
  mlm_loss, mlm_acc = mlm_loss_and_accuracy(gen_logits, masked.targets, inputs.slot_weights)

  sampled_BxM = sample_tokens(inputs.sample_keys, gen_logits, masked.targets, cfg.temperature,
                              cfg.disallow_correct)
  fake_ids = scatter_positions(masked.input_ids, masked.positions, sampled_BxM, masked.weights)
  # A correctly generated token counts as real: label 1 only where it differs.
  labels_BxL = (fake_ids != b.input_ids).astype(jnp.int32)
  disc_logits = model.apply({'params': params}, fake_ids, b.input_mask, b.segment_ids,
                            deterministic, method=model.discriminator_logits,
                            rngs={'dropout': k_disc_drop})
  disc_loss, disc_metrics = disc_loss_and_metrics(disc_logits, labels_BxL, inputs.token_weights)

  loss = cfg.gen_weight * mlm_loss + cfg.disc_weight * disc_loss
  metrics = {'loss': loss, 'gen_loss': mlm_loss, 'gen_accuracy': mlm_acc,
             'disc_loss': disc_loss, **disc_metrics}
  aux = {'disc_probs': jax.nn.sigmoid(disc_logits), 'disc_labels': labels_BxL,
         'disc_weights': b.input_mask}
  return loss, (metrics, aux)


def step_keys(rng):
  """(inputs key, dropout key) of a step's (or an evaluation batch's) key."""
  return tuple(jax.random.split(rng))


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named training objective.

  prepared_loss(params, inputs, rng, *, model, cfg, step, deterministic) -> (loss, (metrics, aux))
      on `prepare(batch, rng, cfg)`'s Inputs or any row subset of them (a
      microbatch); loss and metrics are that subset's shares (module docstring).
  prepare(batch, rng, cfg) -> Inputs, the model-free draws on the whole global batch.
  prepare_params(params, step, cfg) -> params, applied inside the step before
      the loss; what it returns is what gets updated (e.g. copying the
      generator into the discriminator when a stage starts).
  update_mask(params, step, cfg) -> tree of 0/1 multipliers on the optimizer's
      updates (e.g. freezing the generator, weight decay included).
  """
  prepared_loss: Callable[..., tuple]
  prepare: Callable[..., Inputs] = prepare_inputs
  prepare_params: Callable[..., Any] | None = None
  update_mask: Callable[..., Any] | None = None

  def loss(self, params, batch: dict, rng, *, model, cfg: ObjectiveConfig, step=0,
           deterministic=False):
    """(loss, (metrics, aux)) of one whole batch: prepare, prepared_loss, `finalize`.

    What the train step computes with train.grad_accum_steps=1 and evaluation
    uses: `rng` is split by `step_keys` into the inputs key and the dropout
    key, and the dropout key is folded with microbatch index 0.
    """
    k_inputs, k_dropout = step_keys(rng)
    inputs = self.prepare(batch, k_inputs, cfg)
    loss, (metrics, aux) = self.prepared_loss(params, inputs, jax.random.fold_in(k_dropout, 0),
                                              model=model, cfg=cfg, step=step,
                                              deterministic=deterministic)
    return loss, (finalize(metrics), aux)


ELECTRA = Objective(electra_loss)  # the default; every objective by name: pretrain/registry.py
