r"""Fine-tuning time per epoch with and without length-bucketed batching, side by side.

    python benchmarks/bench_finetune_epoch.py --glue /path/to/glue \
        --vocab /path/to/bert-base-uncased-vocab.txt --size small --tasks sst2,mrpc

For each task: the real featurized training set (the first --examples rows), the
real model at --size (random initialisation: speed does not depend on the weights)
and the loop's own jitted, donated train step. Each variant ("before": every batch
at train.seq_len; "after": train.length_buckets=4, the default) first runs one
step per distinct batch shape (compilation, timed apart), then the two alternate in
blocks of --block steps of their own seeded epoch order, --rounds times, so a busy
machine slows both alike. Reported per variant: median seconds per step, the
epoch's mean padded length, the full training set's time per epoch (steps per
epoch x mean step time over the measured blocks), the dev set's prediction time,
and the speed-up. Dev metrics need real fine-tuning from a pre-trained model and
are not measured here (tests/test_bucketing.py checks that bucketed evaluation
gives the full-length outputs).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import finetune as finetune_config  # noqa: E402
from electra_jax import sharding  # noqa: E402
from electra_jax.finetune import inference  # noqa: E402
from electra_jax.finetune import loop  # noqa: E402
from electra_jax.finetune.tasks import base  # noqa: E402
from electra_jax.io import weights  # noqa: E402
from electra_jax.models import electra  # noqa: E402
from electra_jax.models import heads  # noqa: E402


def bench_task(name, args):
  c = finetune_config.get_config(f'task={name},size={args.size}')
  c.data.update(dict(vocab=args.vocab, data_dir=args.glue))
  task = loop.build_task(c)
  tok = weights.load_tokenizer(args.vocab, None, True)
  train = loop.load_features(task, c, tok, 'train', True, args.examples)
  full_n = len(loop.load_features(task, c, tok, 'train', True, 0))
  dev = loop.load_features(task, c, tok, task.eval_splits[0], False, 0)
  model = loop.build_model(electra.ModelConfig.from_config(
      dict(c.model, vocab_size=tok.vocab_size)), task, c)
  t = c.train
  mesh = sharding.make_mesh(c.mesh)
  steps_per_epoch = full_n // t.batch_size
  params_shape = nn.meta.unbox(jax.eval_shape(
      functools.partial(loop._init_params, model, t.seq_len), jax.random.key(0)))
  tx, schedule = loop.make_optimizer(c, params_shape, model.cfg.num_layers, steps_per_epoch)
  state, shardings, _, _ = loop.create_state(model, tx, mesh, t.seq_len, jax.random.key(0))
  train_fn, predict_fn = loop.make_steps(model, tx, schedule, mesh, shardings)
  keys = inference.INPUT_KEYS + heads.LABEL_KEYS[task.kind]
  arrays = {k: train.arrays[k] for k in keys}
  rng = jax.random.key(1)
  variants = {'before': (t.seq_len,), 'after': base.bucket_lengths(t.seq_len, 4)}
  batches, compile_s, times, pos = {}, {}, {v: [] for v in variants}, {v: 0 for v in variants}
  for v, buckets in variants.items():
    batches[v] = list(base.train_batches(arrays, t.batch_size, 0, 0, buckets=buckets))
    t0 = time.perf_counter()
    for length in sorted({b['input_ids'].shape[1] for b in batches[v]}):
      b = next(b for b in batches[v] if b['input_ids'].shape[1] == length)
      state, m = train_fn(state, sharding.global_batch(b, mesh), rng)
      jax.block_until_ready(m)
    compile_s[v] = time.perf_counter() - t0
  for _ in range(args.rounds):
    for v in variants:
      for _ in range(args.block):
        b = batches[v][pos[v] % len(batches[v])]
        pos[v] += 1
        t0 = time.perf_counter()
        state, m = train_fn(state, sharding.global_batch(b, mesh), rng)
        jax.block_until_ready(m)
        times[v].append(time.perf_counter() - t0)
  rows = {}
  for v, buckets in variants.items():
    mean_len = np.mean([b['input_ids'].shape[1] for b in batches[v]])
    inference.predict(predict_fn, state.params, dev, t.eval_batch_size, mesh, buckets=buckets)
    t0 = time.perf_counter()
    inference.predict(predict_fn, state.params, dev, t.eval_batch_size, mesh, buckets=buckets)
    dev_s = time.perf_counter() - t0
    rows[v] = dict(buckets=buckets, median_step_s=statistics.median(times[v]),
                   epoch_s=steps_per_epoch * statistics.mean(times[v]), mean_len=mean_len,
                   compile_s=compile_s[v], dev_s=dev_s)
  return dict(task=name, full_examples=full_n, steps_per_epoch=steps_per_epoch,
              measured_steps=args.block * args.rounds, rows=rows)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--glue', required=True)
  p.add_argument('--vocab', required=True)
  p.add_argument('--size', default='small')
  p.add_argument('--tasks', default='sst2,mrpc')
  p.add_argument('--examples', type=int, default=4000, help='training rows featurized for '
                 'the measured epoch order (the first N)')
  p.add_argument('--block', type=int, default=10)
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args()
  print(f'devices: {jax.devices()}; size {args.size}; {args.block} x {args.rounds} steps per '
        'variant, alternating', flush=True)
  print('| task | variant | bucket lengths | mean batch length | median s/step | epoch (s) | '
        'dev predict (s) | compile (s) | speed-up per epoch |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in args.tasks.split(','):
    r = bench_task(name, args)
    before, after = r['rows']['before'], r['rows']['after']
    for v, row in r['rows'].items():
      speedup = f'{before["epoch_s"] / after["epoch_s"]:.2f}x' if v == 'after' else ''
      print(f'| {name} ({r["full_examples"]} rows, {r["steps_per_epoch"]} steps) | {v} | '
            f'{",".join(map(str, row["buckets"]))} | {row["mean_len"]:.1f} | '
            f'{row["median_step_s"]:.3f} | {row["epoch_s"]:.0f} | {row["dev_s"]:.1f} | '
            f'{row["compile_s"]:.1f} | {speedup} |', flush=True)


if __name__ == '__main__':
  main()
