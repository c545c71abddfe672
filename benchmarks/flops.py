r"""Useful training FLOPs of one ELECTRA step (the numerator of MFU).

    python benchmarks/flops.py --size small --batch 32 --seq-len 128

"6 x parameters x tokens" is wrong for ELECTRA: the shared word table (a
large share of Small's parameters) is a lookup, not a matmul, except in the
generator's LM head, which runs only at the M = max_predictions_per_seq
gathered positions. So we count the matmul FLOPs of both towers:

  per token, per layer (hidden H, FFN I, length L):
    Q, K, V and output projections   4 * 2 H^2
    FFN                              2 * 2 H I
    attention scores QK^T and PV     2 * 2 L H
  embedding projection (E != H)      2 E H per token
  discriminator head                 2 H^2 + 2 H per token
  generator head (at M positions)    2 Hg E + 2 E V per prediction slot
                                     (every token with generator_head=full)

and multiply the forward total by 3 (backward = 2x forward). Remat's extra
forward is not useful work and is not counted. Softmax, LayerNorm, GELU,
masking, sampling and the optimizer are O(params + B L H) and left out.
`electra_jax.pretrain.flops.train_flops_per_step` (the lead's, written separately)
must agree; `bench_step.py` uses it and reports XLA's own count
(`compiled.cost_analysis()['flops']`), which includes the non-matmul work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _tower_forward(tokens: int, seq_len: int, hidden: int, inter: int, layers: int,
                   embedding: int) -> float:
  per_token = layers * (8 * hidden * hidden + 4 * hidden * inter + 4 * seq_len * hidden)
  if embedding != hidden:
    per_token += 2 * embedding * hidden
  return float(tokens) * per_token


def train_flops_per_step(config) -> float:
  """Matmul FLOPs of forward + backward for one global batch of `config.train`."""
  m, t = config.model, config.train
  B, L = int(t.batch_size), int(t.seq_len)
  E, V, H = m.embedding_size, m.vocab_size, m.hidden_size
  Hg = H if m.generator_fraction == 1.0 else int(round(H * m.generator_fraction))
  Ig = m.intermediate_size if m.generator_fraction == 1.0 else 4 * Hg
  M = min(int(config.objective.max_predictions_per_seq), L)
  slots = B * L if m.generator_head == 'full' else B * M
  fwd = _tower_forward(B * L, L, H, m.intermediate_size, m.num_layers, E)   # discriminator
  fwd += B * L * (2 * H * H + 2 * H)                                         # its head
  fwd += _tower_forward(B * L, L, Hg, Ig, m.num_layers, E)                  # generator
  fwd += slots * (2 * Hg * E + 2 * E * V)                                   # its LM head
  return 3.0 * fwd


def lead_flops(config):
  """electra_jax.pretrain.flops.train_flops_per_step for the same config (an independent count)."""
  from electra_jax.pretrain import flops  # pylint: disable=g-import-not-at-top
  from electra_jax.models import electra  # pylint: disable=g-import-not-at-top
  mc = electra.ModelConfig.from_config(config.model)
  return float(flops.train_flops_per_step(
      mc, int(config.train.batch_size), int(config.train.seq_len),
      min(int(config.objective.max_predictions_per_seq), int(config.train.seq_len))))


def main():
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import bench_step  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description='Training FLOPs per step of an ELECTRA config.')
  p.add_argument('--size', default='small')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--generator-head', default='masked', choices=['masked', 'full'])
  a = p.parse_args()
  c = bench_step.make_config(a.size, a.batch, a.seq_len, generator_head=a.generator_head)
  ours, lead = train_flops_per_step(c), lead_flops(c)
  print(f'{a.size} {a.batch}x{a.seq_len} head={a.generator_head}: {ours / 1e9:.1f} GFLOP/step '
        f'(benchmarks/flops.py)' + f', {lead / 1e9:.1f} (electra_jax/pretrain/flops.py)')


if __name__ == '__main__':
  main()
