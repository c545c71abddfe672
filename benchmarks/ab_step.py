r"""Before/after of each optimisation, in one process, alternating: the README's numbers.

    python benchmarks/ab_step.py --size small --batch 32 --seq-len 128 --rounds 5 \
        --variants baseline threefry sampling mlm_loss all

Each variant is the current code with some optimisations switched back to
what the code did before them (by patching the function or lowering rule
while that variant's step is traced and compiled; a compiled step keeps what
it was built with):
  threefry  jax.random draws lowered on CPU without the rolled loop
            (electra_jax.models.layers.use_unrolled_threefry_on_cpu);
  sampling  two-level Gumbel-max sampling (electra_jax.pretrain.objectives.sample_tokens)
            instead of one Gumbel draw per vocabulary entry;
  mlm_loss  the MLM loss's fused softmax - one_hot backward and the accuracy
            from the logsumexp's max (objectives.nll_and_hit) instead of
            log_softmax + take_along_axis autodiff and a jnp.argmax.
`baseline` has none, `all` has every one, a name alone has only that one,
`all-NAME` all but that one. All
variants step on the same batch, in an order rotated every round; reported
are median step times and speed-ups over `baseline`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_step  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from electra_jax import hostmem  # noqa: E402
from electra_jax.pretrain import objectives  # noqa: E402
from electra_jax.models import layers  # noqa: E402

OPTIMISATIONS = ('threefry', 'sampling', 'mlm_loss')


def _gumbel_per_entry(keys_Bx2, logits_BxMxV, targets_BxM, temperature, disallow_correct):
  """sample_tokens as it was: one Gumbel draw per vocabulary entry (per-example keys, as now)."""
  logits = jax.lax.stop_gradient(logits_BxMxV).astype(jnp.float32) / temperature
  if disallow_correct:
    logits = jnp.where(jax.nn.one_hot(targets_BxM, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  gumbel = jax.vmap(lambda k: jax.random.gumbel(jax.random.wrap_key_data(k), logits.shape[1:],
                                                jnp.float32))(keys_Bx2)
  return jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32)


def _mlm_loss_autodiff(logits_BxMxV, targets_BxM, weights_BxM):
  """mlm_loss_and_accuracy as it was: log_softmax + take_along_axis, jnp.argmax accuracy."""
  logp = jax.nn.log_softmax(logits_BxMxV.astype(jnp.float32), axis=-1)
  nll_BxM = -jnp.take_along_axis(logp, targets_BxM[..., None], axis=-1)[..., 0]
  acc_BxM = (jnp.argmax(logits_BxMxV, -1) == targets_BxM).astype(jnp.float32)
  return objectives.share(nll_BxM, weights_BxM), objectives.share(acc_BxM, weights_BxM)


@contextlib.contextmanager
def switched_off(names):
  """Reverts the named optimisations while a step is built inside the block."""
  saved = (objectives.sample_tokens, objectives.mlm_loss_and_accuracy)
  try:
    if 'threefry' not in names:
      layers.use_unrolled_threefry_on_cpu(True)
    if 'sampling' in names:
      objectives.sample_tokens = _gumbel_per_entry
    if 'mlm_loss' in names:
      objectives.mlm_loss_and_accuracy = _mlm_loss_autodiff
    yield
  finally:
    objectives.sample_tokens, objectives.mlm_loss_and_accuracy = saved
    layers.use_unrolled_threefry_on_cpu(False)


def main():
  p = argparse.ArgumentParser(description='A/B of the step optimisations, alternating.')
  bench_step.add_step_args(p)
  p.add_argument('--variants', nargs='+', default=['baseline', 'all'],
                 help=f'baseline | all | one of {OPTIMISATIONS} | all-NAME (all but one)')
  p.add_argument('--rounds', type=int, default=4)
  a = p.parse_args()
  cfg = bench_step.config_from_args(a)
  batch = bench_step.synthetic_batch(cfg)
  runners = {}
  for v in a.variants:
    on = (set(OPTIMISATIONS) if v == 'all' else set() if v == 'baseline'
          else set(OPTIMISATIONS) - {v[4:]} if v.startswith('all-') else {v})
    if not on <= set(OPTIMISATIONS) or (v.startswith('all-') and v[4:] not in OPTIMISATIONS):
      raise ValueError(f'variant {v!r}; expected baseline, all, all-NAME or one of {OPTIMISATIONS}')
    with switched_off(set(OPTIMISATIONS) - on):
      runners[v] = bench_step.JaxStep(cfg, fast_rng=False)
    runners[v].step(batch)  # warm-up
    # Sanity check that the switch took: the rolled threefry shows up as while loops.
    loops = runners[v].compiled.as_text().count(' while(')
    print(f'built {v}: compile {runners[v].compile_s:.1f} s, {loops} while loops in the HLO',
          flush=True)
  times = {v: [] for v in runners}
  names = list(runners)
  for r in range(a.rounds):
    for v in names[r % len(names):] + names[:r % len(names)]:
      t = time.perf_counter()
      runners[v].step(batch)
      times[v].append(time.perf_counter() - t)
    print(f'round {r}: ' + ', '.join(f'{v} {times[v][-1]:.2f}s' for v in names), flush=True)
  base = statistics.median(times[names[0]])
  print(f'\n{a.size} {a.batch}x{a.seq_len} {a.dtype} {a.attention}\n'
        '| variant | median step s | seq/s | speed-up vs ' + names[0] + ' |\n|---|---|---|---|')
  for v in names:
    med = statistics.median(times[v])
    print(f'| {v} | {med:.3f} | {a.batch / med:.2f} | {base / med:.2f}x |')


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  main()
