"""Pre-training FLOPs of one step for every objective (the x axis of the efficiency plots).

    from electra_jax.pretrain import objective_flops
    objective_flops.train_flops_per_step(config)        # float, one optimizer step
    objective_flops.steps_for_budget(config, 1e15)       # steps that spend a FLOP budget

Counted: the matrix multiplications (2 FLOPs per multiply-add) of one forward
pass, times 3 for forward + backward, over the whole batch:
  tower, per token and layer   2 * (4 H^2 + 2 H I) + 2 * 2 * L * H (scores, values)
                               (+ 2 E H once for the embedding projection if E != H)
  MLM head, per predicted slot 2 * (H E + E V)
  replaced-token head, per token 2 * (H^2 + H)
Which parts run depends on the objective (see `PARTS`): BERT runs one
(discriminator-sized) tower with an MLM head; ELECTRA a generator with its head
at the M masked slots plus the discriminator with the binary head on every
token; All-Tokens MLM adds an MLM head on every token; the fixed (uniform /
unigram) generators have no generator tower. Lookups, softmax, LayerNorm and
the optimizer are left out (a few percent). This is the paper's convention
(Appendix D counts FLOPs as 3x the forward matmuls) and the official
`flops_computation.py`'s, up to those small terms.
"""

from __future__ import annotations

from electra_jax.models import electra

# Parts run per step: (generator tower, generator MLM head slots, discriminator
# tower, RTD head, discriminator MLM head slots); slots are 'masked' or 'all'.
PARTS = {
    'electra':           dict(gen=True, gen_head='masked', disc=True, rtd=True, disc_mlm=None),
    'electra_15':        dict(gen=True, gen_head='masked', disc=True, rtd=True, disc_mlm=None),
    'two_stage':         dict(gen=True, gen_head='masked', disc=True, rtd=True, disc_mlm=None),
    'adversarial':       dict(gen=True, gen_head='masked', disc=True, rtd=True, disc_mlm=None),
    'bert_mlm':          dict(gen=True, gen_head='masked', disc=False, rtd=False, disc_mlm=None),
    'replace_mlm':       dict(gen=True, gen_head='masked', disc=True, rtd=False, disc_mlm='masked'),
    'all_tokens_mlm':    dict(gen=True, gen_head='masked', disc=True, rtd=True, disc_mlm='all'),
    'uniform_generator': dict(gen=False, gen_head=None, disc=True, rtd=True, disc_mlm=None),
    'unigram_generator': dict(gen=False, gen_head=None, disc=True, rtd=True, disc_mlm=None),
}


def tower_flops_per_token(tower, seq_len: int, embedding_size: int) -> float:
  """Forward FLOPs of one tower per token (layers + embedding projection)."""
  h, i = tower.hidden_size, tower.intermediate_size
  per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq_len * h
  proj = 2 * embedding_size * h if embedding_size != h else 0
  return tower.num_layers * per_layer + proj


def mlm_head_flops(hidden: int, embedding_size: int, vocab_size: int) -> float:
  return 2 * (hidden * embedding_size + embedding_size * vocab_size)


def forward_flops_per_sequence(config) -> dict:
  """Forward FLOPs of one sequence, by part, for config.objective.name."""
  name = config.objective.name
  if name not in PARTS:
    raise ValueError(f'objective {name!r} has no FLOP count; expected one of {sorted(PARTS)}')
  parts = PARTS[name]
  m = electra.ModelConfig.from_config(config.model)
  L, E, V = config.train.seq_len, m.embedding_size, m.vocab_size
  M = min(config.objective.max_predictions_per_seq, L)
  out = {}
  if parts['gen']:
    gen = m.generator
    out['generator'] = L * tower_flops_per_token(gen, L, E)
    slots = L if m.generator_head == 'full' else M
    out['generator_head'] = slots * mlm_head_flops(gen.hidden_size, E, V)
  if parts['disc']:
    disc = m.discriminator
    out['discriminator'] = L * tower_flops_per_token(disc, L, E)
    if parts['rtd']:
      out['rtd_head'] = L * 2 * (disc.hidden_size ** 2 + disc.hidden_size)
    if parts['disc_mlm']:
      slots = L if parts['disc_mlm'] == 'all' else M
      out['discriminator_mlm_head'] = slots * mlm_head_flops(disc.hidden_size, E, V)
  return out


def train_flops_per_step(config) -> float:
  """3 x forward FLOPs x batch size: one optimizer step."""
  return 3.0 * config.train.batch_size * sum(forward_flops_per_sequence(config).values())


def steps_for_budget(config, flops: float) -> int:
  """The number of steps whose training FLOPs are closest to `flops` (at least 1)."""
  return max(1, int(round(flops / train_flops_per_step(config))))
