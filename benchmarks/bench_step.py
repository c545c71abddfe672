r"""electra_jax train-step throughput, MFU, memory and compile time.

One configuration (printed as a table row, `--json` for the record):
    python benchmarks/bench_step.py --size small --batch 32 --seq-len 128
    python benchmarks/bench_step.py --size small --dtype bfloat16 --attention xla --remat

A sweep (each configuration in its own subprocess, so peak RSS is per config):
    python benchmarks/bench_step.py --sweep variants   # Small 32x128: dtype x attention x head x remat
    python benchmarks/bench_step.py --sweep sizes      # tiny / small / base at 128 and 512

The step is `electra_jax.pretrain.loop.make_train_step` (jitted, sharded over the
local devices, state donated), run on fixed synthetic batches: uniform random
word-piece ids with [CLS] first and [SEP] last, all tokens real (as the
issue's peer measurement). Masking and Gumbel sampling run inside the step.
Reported per configuration:
  compile_s      lower + compile of the step;
  step_s         median wall time of a step (metrics fetched to the host);
  seq/s, tok/s   batch / step_s and batch * seq_len / step_s;
  GFLOP/s, MFU   useful training FLOPs (electra_jax.pretrain.flops, cross-checked
                 by tests/test_flops.py) per second, over the matmul peak
                 of the same dtype measured in the same process before and
                 after the timing (the larger of the two, so MFU is not
                 flattered by a load spike during the peak measurement);
  xla_gflop      XLA's cost-analysis FLOPs of the compiled step (all ops);
  rss_mb         peak resident memory of the process (ru_maxrss);
  xla_temp_mb    XLA's temporary buffer size for the step (memory_analysis).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import pretrain  # noqa: E402
from electra_jax import hostmem  # noqa: E402
from electra_jax import sharding  # noqa: E402
from electra_jax.pretrain import loop  # noqa: E402
from electra_jax.models import layers  # noqa: E402
from electra_jax.pretrain import flops  # noqa: E402
import matmul_peak  # noqa: E402


PRECISIONS = ('float32', 'bfloat16', 'mixed')


def peak_dtype(dtype: str) -> str:
  """The matmul peak an MFU is measured against: that of the matmuls' operand dtype."""
  return 'float32' if dtype == 'float32' else 'bfloat16'


def add_step_args(p: argparse.ArgumentParser) -> None:
  """The step's shape and variant flags (read by `config_from_args`), shared by the scripts here."""
  p.add_argument('--size', default='small', choices=['tiny', 'small', 'base', 'large'])
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--dtype', default='float32', choices=PRECISIONS,
                 help='mixed: float32 with bfloat16 matmuls (model.matmul_dtype)')
  p.add_argument('--attention', default='einsum', choices=['einsum', 'xla', 'cudnn'])
  p.add_argument('--head', default='masked', choices=['masked', 'full'])
  p.add_argument('--remat', action='store_true')
  p.add_argument('--recompute-activations', action='store_true',
                 help='model.recompute_activations=True (fine-tuning\'s default; pre-training '
                      'keeps GELU, LayerNorm and dropout for the backward pass)')


def config_from_args(a: argparse.Namespace):
  return make_config(a.size, a.batch, a.seq_len, dtype=a.dtype, attention_impl=a.attention,
                     remat=a.remat, generator_head=a.head,
                     recompute_activations=a.recompute_activations)


def make_config(size: str, batch: int, seq_len: int, *, dtype: str = 'float32',
                attention_impl: str = 'einsum', remat: bool = False,
                generator_head: str = 'masked', recompute_activations: bool = False):
  """The real pretrain config at `size`, with the benchmark's batch shape and variant."""
  c = pretrain.get_config(f'size={size}')
  c.train.batch_size = batch
  c.train.seq_len = seq_len  # a FieldReference: max_predictions_per_seq follows
  if dtype not in PRECISIONS:
    raise ValueError(f'dtype {dtype!r}; expected one of {PRECISIONS}')
  # mixed: float32 everywhere except the matmuls (bf16 operands, float32 accumulation).
  c.model.dtype = 'float32' if dtype == 'mixed' else dtype
  c.model.matmul_dtype = 'bfloat16' if dtype == 'mixed' else ''
  c.model.attention_impl = attention_impl
  if attention_impl != 'einsum':  # jax.nn.dot_product_attention has no attention dropout
    c.model.attention_dropout_rate = 0.0
  c.model.remat = remat
  c.model.recompute_activations = recompute_activations
  c.model.generator_head = generator_head
  return c


def synthetic_batch(config, seed: int = 0) -> dict:
  """[B, L] int32 numpy batch: [CLS] random-word-pieces... [SEP], all real tokens."""
  B, L = int(config.train.batch_size), int(config.train.seq_len)
  t = config.tokens
  rng = np.random.default_rng(seed)
  lo = max(t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) + 1  # past the special tokens
  ids = rng.integers(lo, config.model.vocab_size, size=(B, L), dtype=np.int32)
  ids[:, 0], ids[:, -1] = t.cls_id, t.sep_id
  return {'input_ids': ids, 'input_mask': np.ones((B, L), np.int32),
          'segment_ids': np.zeros((B, L), np.int32)}


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


class JaxStep:
  """The jitted electra_jax train step, compiled once: `step(batch) -> loss`.

  With `fast_rng` the step (not the init) is compiled inside
  layers.unrolled_threefry_on_cpu() (same random bits, several times faster
  on CPU; see the README).
  """

  def __init__(self, config, seed: int = 0, fast_rng: bool = True):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh)
    self.model = loop.build_model(config)
    tx, schedule = loop.build_optimizer(config)
    self.state, shardings = loop.create_train_state(config, self.model, tx, self.mesh,
                                                     jax.random.key(seed))
    jax.block_until_ready(self.state)
    self.rng = jax.random.key(seed + 1)
    fn = loop.make_train_step(config, self.model, tx, schedule, self.mesh, shardings)
    batch = self._device_batch(synthetic_batch(config))
    t = time.perf_counter()
    with layers.unrolled_threefry_on_cpu() if fast_rng else contextlib.nullcontext():
      self.compiled = fn.lower(self.state, batch, self.rng).compile()
    self.compile_s = time.perf_counter() - t
    hostmem.release_free_memory()  # as the training loop does after compiling (membudget)
    cost = _first(self.compiled.cost_analysis()) or {}
    self.xla_flops = float(cost.get('flops', float('nan')))
    mem = self.compiled.memory_analysis()
    self.xla_temp_bytes = float(getattr(mem, 'temp_size_in_bytes', float('nan')))
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))

  def _device_batch(self, batch: dict) -> dict:
    return sharding.global_batch(batch, self.mesh)

  def step(self, batch: dict) -> float:
    """One step on a host (numpy) batch; returns the loss (so the step has finished)."""
    self.state, metrics = self.compiled(self.state, self._device_batch(batch), self.rng)
    return float(metrics['loss'])


def time_steps(step_fn, batch, warmup: int, steps: int) -> list[float]:
  for _ in range(warmup):
    step_fn(batch)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step_fn(batch)
    times.append(time.perf_counter() - t)
  return times


def useful_flops(config) -> float:
  """Useful training FLOPs of one step (electra_jax.pretrain.flops; tests/test_flops.py checks it)."""
  return flops.train_flops_per_step(config)


@dataclasses.dataclass
class Variant:
  size: str = 'small'
  batch: int = 32
  seq_len: int = 128
  dtype: str = 'float32'
  attention: str = 'einsum'
  remat: bool = False
  head: str = 'masked'
  recompute: bool = False  # model.recompute_activations

  def config(self):
    return make_config(self.size, self.batch, self.seq_len, dtype=self.dtype,
                       attention_impl=self.attention, remat=self.remat, generator_head=self.head,
                       recompute_activations=self.recompute)

  def args(self) -> list[str]:
    a = ['--size', self.size, '--batch', str(self.batch), '--seq-len', str(self.seq_len),
         '--dtype', self.dtype, '--attention', self.attention, '--head', self.head]
    return (a + (['--remat'] if self.remat else [])
            + (['--recompute-activations'] if self.recompute else []))


def run_one(v: Variant, warmup: int, steps: int, peak_seconds: float,
            peak_sizes=(1024, 2048)) -> dict:
  config = v.config()
  load_before = os.getloadavg()[0]
  peak_before = matmul_peak.measure_peak(peak_dtype(v.dtype), peak_sizes, peak_seconds)['peak_gflops']
  runner = JaxStep(config)
  batch = synthetic_batch(config)
  times = time_steps(runner.step, batch, warmup, steps)
  peak_after = matmul_peak.measure_peak(peak_dtype(v.dtype), peak_sizes, peak_seconds)['peak_gflops']
  step_s = statistics.median(times)
  flops = useful_flops(config)
  peak = max(peak_before, peak_after)
  return {**dataclasses.asdict(v), 'compile_s': runner.compile_s, 'step_s': step_s,
          'step_s_all': times, 'seq_per_s': v.batch / step_s,
          'tok_per_s': v.batch * v.seq_len / step_s, 'gflop_per_step': flops / 1e9,
          'xla_gflop_per_step': runner.xla_flops / 1e9, 'gflops': flops / step_s / 1e9,
          'peak_gflops': peak, 'peak_gflops_before_after': [peak_before, peak_after],
          'mfu': flops / step_s / 1e9 / peak,
          'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'xla_temp_mb': runner.xla_temp_bytes / 2**20, 'params': runner.num_params,
          'backend': jax.default_backend(), 'device': str(jax.devices()[0]),
          'load_average': [load_before, os.getloadavg()[0]],
          'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}


HEADER = ('| size | B x L | dtype | attention | head | remat | compile s | step s | seq/s | tok/s '
          '| GFLOP/s | peak | MFU | RSS MB | XLA temp MB |\n|' + '---|' * 15)


def _remat(r: dict) -> str:
  """The remat column: 'layers' (model.remat), 'activations' (model.recompute_activations)."""
  parts = [n for n, on in (('layers', r['remat']), ('activations', r.get('recompute'))) if on]
  return ' + '.join(parts) or 'no'


def row(r: dict) -> str:
  return (f"| {r['size']} | {r['batch']}x{r['seq_len']} | {r['dtype']} | {r['attention']} "
          f"| {r['head']} | {_remat(r)} | {r['compile_s']:.1f} "
          f"| {r['step_s']:.3f} | {r['seq_per_s']:.2f} | {r['tok_per_s']:.0f} "
          f"| {r['gflops']:.1f} | {r['peak_gflops']:.0f} | {100 * r['mfu']:.1f}% "
          f"| {r['rss_mb']:.0f} | {r['xla_temp_mb']:.0f} |")


def sweep_variants(name: str) -> list[Variant]:
  if name == 'variants':  # Small 32 x 128: each axis from the float32 einsum baseline
    out = [Variant()]
    out += [Variant(dtype='mixed'), Variant(dtype='bfloat16'), Variant(attention='xla'),
            Variant(dtype='bfloat16', attention='xla'), Variant(head='full'), Variant(remat=True),
            Variant(recompute=True)]
    return out
  if name == 'sizes':
    return [Variant('tiny', 32, 128), Variant('tiny', 8, 512), Variant('small', 32, 128),
            Variant('small', 8, 512), Variant('base', 8, 128), Variant('base', 2, 512),
            Variant('small', 32, 128, 'mixed'), Variant('small', 8, 512, 'mixed'),
            Variant('base', 8, 128, 'mixed'), Variant('base', 2, 512, 'mixed')]
  raise ValueError(f'sweep {name!r}; expected variants or sizes')


def run_sweep(name: str, warmup: int, steps: int, peak_seconds: float, out_json: str | None,
              peak_sizes=(1024, 2048)):
  print(HEADER, flush=True)
  results = []
  for v in sweep_variants(name):
    cmd = [sys.executable, __file__, *v.args(), '--warmup', str(warmup), '--steps', str(steps),
           '--peak-seconds', str(peak_seconds), '--peak-sizes', *map(str, peak_sizes),
           '--json', '/dev/stdout', '--quiet']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
      print(f'| {v.size} | {v.batch}x{v.seq_len} | {v.dtype} | {v.attention} | {v.head} '
            f'| {v.remat} | failed: {proc.stderr.strip().splitlines()[-1][:120]} |', flush=True)
      continue
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    results.append(r)
    print(row(r), flush=True)
  if out_json:
    with open(out_json, 'w') as f:
      json.dump(results, f, indent=1)


def main():
  p = argparse.ArgumentParser(description='electra_jax train-step benchmark.')
  add_step_args(p)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--peak-seconds', type=float, default=1.5)
  p.add_argument('--peak-sizes', type=int, nargs='+', default=[1024, 2048])
  p.add_argument('--sweep', choices=['variants', 'sizes'])
  p.add_argument('--json', help='write the result(s) as JSON to this path')
  p.add_argument('--quiet', action='store_true')
  a = p.parse_args()
  if a.sweep:
    run_sweep(a.sweep, a.warmup, a.steps, a.peak_seconds, a.json, a.peak_sizes)
    return
  v = Variant(a.size, a.batch, a.seq_len, a.dtype, a.attention, a.remat, a.head,
              a.recompute_activations)
  r = run_one(v, a.warmup, a.steps, a.peak_seconds, a.peak_sizes)
  if not a.quiet:
    print(HEADER)
    print(row(r))
  if a.json:
    with open(a.json, 'w') as f:
      f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  main()
