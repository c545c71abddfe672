"""Parameter counts per tower and the training FLOPs of one step.

    python -m electra_jax.pretrain.flops --config=configs/pretrain.py:small

FLOPs count the matrix multiplications (2 per multiply-add) of one forward
pass of both towers, times 3 for forward + backward: the QKV / output / FFN
projections on every token, attention scores and weighted values (2 * L * H
each per token), the embedding projection, the discriminator head on every
token, and the generator head (dense + vocabulary matmul) only at the
`max_predictions_per_seq` masked positions. Embedding lookups, softmax,
LayerNorm and the optimizer are not counted (they are a few percent at most).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from electra_jax.models import electra
from electra_jax.models import encoder


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


def tower_forward_flops_per_token(t: encoder.TowerConfig, embedding_size: int, seq_len: int) -> int:
  h, i = t.hidden_size, t.intermediate_size
  per_layer = 2 * (3 * h * h + h * h + 2 * h * i) + 2 * 2 * seq_len * h
  proj = 2 * embedding_size * h if embedding_size != h else 0
  return t.num_layers * per_layer + proj


def train_flops_per_step(model_config: electra.ModelConfig, batch_size: int, seq_len: int,
                         max_predictions: int, generator_head: str | None = None) -> float:
  """Matmul FLOPs of one training step (forward + backward, both towers)."""
  c = model_config
  head = generator_head or c.generator_head
  tokens = batch_size * seq_len
  disc = tokens * (tower_forward_flops_per_token(c.discriminator, c.embedding_size, seq_len)
                   + 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size)
  gen_cfg = c.discriminator if c.sharing == 'all' else c.generator
  head_positions = batch_size * (max_predictions if head == 'masked' else seq_len)
  gen = (tokens * tower_forward_flops_per_token(gen_cfg, c.embedding_size, seq_len)
         + head_positions * (2 * gen_cfg.hidden_size * c.embedding_size
                             + 2 * c.embedding_size * c.vocab_size))
  return 3.0 * (disc + gen)


def summary(config) -> dict:
  mc = electra.ModelConfig.from_config(config.model)
  counts = param_counts(mc)
  flops = train_flops_per_step(mc, config.train.batch_size, config.train.seq_len,
                               config.objective.max_predictions_per_seq)
  return {**{f'params_{k}': v for k, v in counts.items()}, 'train_flops_per_step': flops,
          'batch_size': config.train.batch_size, 'seq_len': config.train.seq_len}


def main(argv):
  del argv
  cfg = _CONFIG.value
  for k, v in summary(cfg).items():
    print(f'{k:28s} {v:,.0f}' if isinstance(v, (int, float)) else f'{k:28s} {v}')


if __name__ == '__main__':
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Pre-training config file.')
  app.run(main)
