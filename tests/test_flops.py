"""electra_jax.pretrain.flops against an independent count, written separately.

"6 x parameters x tokens" is wrong for ELECTRA: the shared word table (a large
share of Small's parameters) is a lookup, not a matmul, except in the
generator's LM head, which runs only at the M = max_predictions_per_seq
gathered positions. The formula below counts the matmul FLOPs of both towers
from the config alone (no ModelConfig, no PARTS table):

  per token, per layer (hidden H, FFN I, length L):
    Q, K, V and output projections   4 * 2 H^2
    FFN                              2 * 2 H I
    attention scores QK^T and PV     2 * 2 L H
  embedding projection (E != H)      2 E H per token
  discriminator head                 2 H^2 + 2 H per token
  generator head (at M positions)    2 Hg E + 2 E V per prediction slot
                                     (every token with generator_head=full)

times 3 for forward + backward. (It was benchmarks/flops.py, which
bench_step.py checked on every run.)
"""

import pytest

from configs import pretrain
from electra_jax.pretrain import flops


def _tower_forward(tokens: int, seq_len: int, hidden: int, inter: int, layers: int,
                   embedding: int) -> float:
  per_token = layers * (8 * hidden * hidden + 4 * hidden * inter + 4 * seq_len * hidden)
  if embedding != hidden:
    per_token += 2 * embedding * hidden
  return float(tokens) * per_token


def independent_train_flops(config) -> float:
  """Matmul FLOPs of forward + backward for one global batch of ELECTRA (the default objective)."""
  m, t = config.model, config.train
  B, L = int(t.batch_size), int(t.seq_len)
  E, V, H = m.embedding_size, m.vocab_size, m.hidden_size
  Hg = H if m.generator_fraction == 1.0 else int(round(H * m.generator_fraction))
  Ig = m.intermediate_size if m.generator_fraction == 1.0 else 4 * Hg
  M = min(int(config.objective.max_predictions_per_seq), L)
  slots = B * L if m.generator_head == 'full' else B * M
  fwd = _tower_forward(B * L, L, H, m.intermediate_size, m.num_layers, E)   # discriminator
  fwd += B * L * (2 * H * H + 2 * H)                                         # its head
  Lg = int(round(m.num_layers * m.generator_layers))                        # generator depth
  fwd += _tower_forward(B * L, L, Hg, Ig, Lg, E)                            # generator
  fwd += slots * (2 * Hg * E + 2 * E * V)                                   # its LM head
  return 3.0 * fwd


@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large'])
@pytest.mark.parametrize('generator_head', ['masked', 'full'])
@pytest.mark.parametrize('batch,seq_len', [(32, 128), (8, 512)])
@pytest.mark.parametrize('generator_layers', [1.0, 0.5])
def test_train_flops_match_the_independent_formula(size, generator_head, batch, seq_len,
                                                   generator_layers):
  c = pretrain.get_config(f'size={size}')
  c.train.batch_size, c.train.seq_len = batch, seq_len
  c.model.generator_head = generator_head
  c.model.generator_layers = generator_layers
  assert flops.train_flops_per_step(c) == pytest.approx(independent_train_flops(c), rel=1e-9)


def test_small_at_the_benchmark_shape():
  """ELECTRA-Small, 32 x 128: 287.5 GFLOP/step (benchmarks/README.md)."""
  c = pretrain.get_config('size=small')
  c.train.batch_size, c.train.seq_len = 32, 128
  assert flops.train_flops_per_step(c) / 1e9 == pytest.approx(287.5, abs=0.1)
