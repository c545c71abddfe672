r"""Memory of the pre-training step with gradient accumulation (train.grad_accum_steps).

    python benchmarks/bench_accum.py                       # ELECTRA-Small, 128 x 128, K = 1, 2, 4
    python benchmarks/bench_accum.py --size base --batch 256 --seq-len 512 --json out.json

Compiles the real jitted step (`electra_jax.pretrain.loop.make_train_step`, all
local devices, state donated) once per K and reads XLA's memory analysis of the
compiled step: temp_mb, the temporary buffers (activations kept for the
backward pass, gradients, workspace), is what accumulation shrinks; argument
and output bytes (the state and the batch) stay the same. Nothing is run, so
this measures the compiler's plan, which is what decides whether a step fits.
Prints a Markdown table; `--json` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

import jax  # noqa: E402

from bench_step import make_config, synthetic_batch  # noqa: E402
from electra_jax import sharding  # noqa: E402
from electra_jax.models import layers  # noqa: E402
from electra_jax.pretrain import loop  # noqa: E402

MB = 2 ** 20


def measure(size: str, batch: int, seq_len: int, accum_steps: int, dtype: str) -> dict:
  config = make_config(size, batch, seq_len, dtype=dtype)
  config.train.grad_accum_steps = accum_steps
  mesh = sharding.make_mesh(config.mesh)
  model = loop.build_model(config)
  tx, schedule = loop.build_optimizer(config)
  abstract = loop.abstract_train_state(config, model, tx, mesh)
  step = loop.make_train_step(config, model, tx, schedule, mesh,
                              jax.tree.map(lambda x: x.sharding, abstract))
  batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
                for k, v in synthetic_batch(config).items()}
  t = time.perf_counter()
  with layers.unrolled_threefry_on_cpu():
    compiled = step.lower(abstract, batch_spec, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  return dict(size=size, batch=batch, seq_len=seq_len, dtype=dtype,
              grad_accum_steps=accum_steps, microbatch=batch // accum_steps,
              devices=len(mesh.devices.flat), compile_s=time.perf_counter() - t,
              temp_mb=mem.temp_size_in_bytes / MB, argument_mb=mem.argument_size_in_bytes / MB,
              output_mb=mem.output_size_in_bytes / MB, platform=jax.devices()[0].platform)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='small', choices=['tiny', 'small', 'base', 'large'])
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'mixed'])
  p.add_argument('--accum', default='1,2,4', help='comma-separated grad_accum_steps values')
  p.add_argument('--json', help='write the rows to this file')
  a = p.parse_args()
  rows = []
  print('| size | batch x len | K | microbatch | XLA temp MB | vs K=1 | args MB | compile s |')
  print('|---|---|---|---|---|---|---|---|')
  for k in (int(x) for x in a.accum.split(',')):
    r = measure(a.size, a.batch, a.seq_len, k, a.dtype)
    rows.append(r)
    ratio = r['temp_mb'] / rows[0]['temp_mb']
    print(f"| {r['size']} | {r['batch']} x {r['seq_len']} | {k} | {r['microbatch']} | "
          f"{r['temp_mb']:.1f} | {ratio:.2f} | {r['argument_mb']:.1f} | {r['compile_s']:.1f} |",
          flush=True)
  if a.json:
    Path(a.json).write_text(json.dumps(rows, indent=1) + '\n')


if __name__ == '__main__':
  main()
