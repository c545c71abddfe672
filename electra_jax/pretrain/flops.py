"""Parameter counts per tower and the training FLOPs of one step, for every objective.

    python -m electra_jax.pretrain.flops --config=configs/pretrain.py:small

    param_counts(ModelConfig)            # total, discriminator (+ embeddings), generator
    train_flops_per_step(config)         # float, one optimizer step of config.objective.name
    steps_for_budget(config, 1e15)       # steps that spend a FLOP budget (the sweeps' x axis)

Counted: the matrix multiplications (2 FLOPs per multiply-add) of one forward
pass, times 3 for forward + backward, over the whole batch:
  tower, per token and layer   2 * (4 H^2 + 2 H I) + 2 * 2 * L * H (scores, values)
                               (+ 2 E H once for the embedding projection if E != H)
  MLM head, per predicted slot 2 * (H E + E V)
  replaced-token head, per token 2 * (H^2 + H)
Each tower at its own sizes (the generator's width from model.generator_fraction,
its depth from model.generator_layers). Which parts run depends on the objective
(see `PARTS`): ELECTRA runs a generator with its head at the M = max_predictions_per_seq masked slots (every
token with model.generator_head=full) plus the discriminator with the binary
head on every token; BERT runs one (discriminator-sized) tower with an MLM
head; All-Tokens MLM adds an MLM head on every token; the fixed (uniform /
unigram) generators have no generator tower. Embedding lookups, softmax,
LayerNorm and the optimizer are left out (a few percent at most). This is the
paper's convention (Appendix D counts FLOPs as 3x the forward matmuls) and the
official `flops_computation.py`'s, up to those small terms. tests/test_flops.py
checks it against an independent formula and tests/test_model.py against XLA's
own count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from electra_jax import cli
from electra_jax.models import electra


def _size(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_counts(model_config: electra.ModelConfig, seq_len: int = 8) -> dict:
  """Parameter counts: total (each shared array once), discriminator and generator alone.

  The discriminator count includes the embeddings (as the paper's 14M / 110M /
  335M do); the generator count includes them too and its LM head.
  """
  model = electra.Pretrainer(model_config)
  z = jnp.zeros((1, seq_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), z, z + 1, z, z[:, :2], True))['params']
  shapes = jax.tree.map(lambda x: getattr(x, 'value', x), shapes,
                        is_leaf=lambda x: hasattr(x, 'value'))
  sharing = model_config.sharing
  disc = electra.discriminator_params(shapes, sharing)
  if sharing == 'gdes':  # the folded-in deltas have the same shapes as the tables
    disc = {'embeddings': shapes['discriminator_embeddings_delta'],
            'discriminator': shapes['discriminator']}
  gen = electra.generator_params(shapes, sharing)
  return {
      'total': _size(shapes),
      'discriminator': _size(disc) + _size(shapes['discriminator_predictions']),
      'discriminator_encoder': _size(disc),
      'generator': _size(gen),
  }


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


def summary(config) -> dict:
  mc = electra.ModelConfig.from_config(config.model)
  counts = param_counts(mc)
  flops = train_flops_per_step(config)
  return {**{f'params_{k}': v for k, v in counts.items()}, 'train_flops_per_step': flops,
          'batch_size': config.train.batch_size, 'seq_len': config.train.seq_len}


def define_flags():
  cli.define_config('configs/pretrain.py:small')


def main(argv):
  cli.no_positional(argv)
  cfg = cli.get_config(example='configs/pretrain.py:small')
  for k, v in summary(cfg).items():
    print(f'{k:28s} {v:,.0f}' if isinstance(v, (int, float)) else f'{k:28s} {v}')


if __name__ == '__main__':
  cli.run(main, define_flags)
