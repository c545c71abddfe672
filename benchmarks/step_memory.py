r"""What fills the fine-tuning train step's memory: XLA's memory analysis, compile only.

Builds the train step as `electra_jax.finetune` does (configs/finetune.py, the task's head,
the optimizer with layer-wise LR decay, the donated sharded state: loop.build_model,
loop.make_optimizer, loop.make_steps), lowers and compiles it for one batch shape on one
device and prints `compiled.memory_analysis()`. Nothing runs, no data or vocab is read:
the vocabulary is --vocab-size tokens (30522 = BERT uncased).

    python benchmarks/step_memory.py --task mrpc --size small --batch 32 --seq-len 128
    python benchmarks/step_memory.py --task squad1 --seq-len 384 --buffers 25
    python benchmarks/step_memory.py --set model.remat=True --set model.dropout_rate=0

--buffers N also dumps the compiled program (into a temporary folder, or --dump-to) and
lists what is live at its memory peak (XLA's live-range report), grouped by shape and by
the JAX operation that made each value (layer numbers folded): the N largest groups.
The dump flags must be set before JAX starts, so the script sets XLA_FLAGS itself (adding
to any already set).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
from pathlib import Path

MB = 1e6


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--task', default='mrpc', help='configs/finetune.py task (default mrpc)')
  p.add_argument('--size', default='small', help='tiny | small | base | large')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--vocab-size', type=int, default=30522)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override, e.g. model.remat=True (repeatable)')
  p.add_argument('--unrolled-threefry', action='store_true',
                 help='compile with the unrolled threefry lowering (layers.unrolled_threefry_on_cpu, '
                      'as pre-training does)')
  p.add_argument('--buffers', type=int, default=0,
                 help='dump the buffer assignment and list the N largest live buffers at the peak')
  p.add_argument('--dump-to', help='folder for the XLA dump (default: a temporary one)')
  p.add_argument('--steps', type=int, default=0,
                 help='also run this many steps (after one untimed) on random data and '
                      'report the median seconds per step')
  p.add_argument('--json', help='also write the numbers to this file')
  a = p.parse_args(argv)
  if a.steps < 0:
    p.error(f'--steps={a.steps}; expected 0 or more')
  for name in ('batch', 'seq_len', 'vocab_size'):
    if getattr(a, name) <= 0:
      p.error(f'--{name.replace("_", "-")}={getattr(a, name)}; expected a positive integer')
  for s in a.set:
    if '=' not in s:
      p.error(f'--set {s!r}; expected KEY=VALUE, e.g. model.remat=True')
  return a


def _value(text: str):
  try:
    return json.loads(text.lower() if text.lower() in ('true', 'false') else text)
  except ValueError:
    return text


def build_step(a):
  """(compiled executable, number of parameters, run(steps) -> seconds per step) of the
  fine-tuning train step."""
  import contextlib
  import functools
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from configs import finetune as finetune_config
  from electra_jax import sharding
  from electra_jax import state as state_lib
  from electra_jax.finetune import loop
  from electra_jax.models import electra
  from electra_jax.models import heads
  from electra_jax.models import layers

  config = finetune_config.get_config(f'task={a.task},size={a.size}')
  config.train.batch_size, config.train.seq_len = a.batch, a.seq_len
  for s in a.set:
    key, value = s.split('=', 1)
    node = config
    *path, last = key.split('.')
    for k in path:
      node = node[k]
    if last not in node:
      raise SystemExit(f'--set {s!r}: the config has no key {key!r}')
    node[last] = type(node[last])(_value(value)) if node[last] is not None else _value(value)
  task = loop.build_task(config)
  model_dict = dict(config.model)
  model_dict['vocab_size'] = a.vocab_size
  model_cfg = electra.ModelConfig.from_config(model_dict)
  model = loop.build_model(model_cfg, task, config)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])

  init_fn = functools.partial(loop._init_params, model, a.seq_len)  # pylint: disable=protected-access
  params_shape = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.key(0)))
  num_steps = 1000  # the schedule's length does not change the program's buffers
  tx, schedule = loop.make_optimizer(config, params_shape, model_cfg.num_layers, num_steps)
  abstract = state_lib.abstract(init_fn, tx, mesh)
  train_fn, _ = loop.make_steps(model, tx, schedule, mesh, state_lib.shardings_of(abstract))

  batch_sh = sharding.batch_sharding(mesh)
  # The batch the training loop feeds (tasks/base.py train_batches): int32 features and
  # labels (float32 for regression) and float32 row weights.
  batch = {}
  for k in ('input_ids', 'input_mask', 'segment_ids') + heads.LABEL_KEYS[task.kind] + ('weights',):
    shape = (a.batch, a.seq_len) if k in ('input_ids', 'input_mask', 'segment_ids', 'labels',
                                           'label_weights') else (a.batch,)
    dtype = (jnp.float32 if k == 'weights'
             or (k == 'label' and task.kind == 'regression') else jnp.int32)
    batch[k] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh))
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  # As finetune/loop.py compiles it: JAX's own (rolled) threefry lowering on CPU, unless
  # --unrolled-threefry (as pre-training compiles its step).
  ctx = layers.unrolled_threefry_on_cpu() if a.unrolled_threefry else contextlib.nullcontext()
  with ctx:
    compiled = train_fn.lower(abstract, batch, rng).compile()
  n_params = sum(int(x.size) for x in jax.tree.leaves(params_shape))

  def run(steps: int) -> list[float]:
    """Seconds of each of `steps` steps (after one untimed), random state and batch."""
    import time
    import numpy as np
    state, _, _, _ = loop.create_state(model, tx, mesh, a.seq_len, jax.random.key(0))
    rs = np.random.RandomState(0)
    feed = {k: (rs.randint(0, 2, v.shape) if k != 'input_ids'
                else rs.randint(0, a.vocab_size, v.shape)).astype(v.dtype)
            for k, v in batch.items()}
    feed['input_mask'][:] = 1
    feed['weights'][:] = 1
    key = jax.random.key(1)
    state, metrics = compiled(state, feed, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, feed, key)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    return times

  return compiled, n_params, run


# --------------------------------------------------------------------------- the peak


def _dump_file(dump_dir: Path, suffix: str) -> Path:
  files = sorted(dump_dir.glob(f'*jit_train_step*{suffix}'), key=lambda p: p.stat().st_mtime)
  if not files:
    raise SystemExit(f'no *jit_train_step*{suffix} in {dump_dir}')
  return files[-1]


def peak_values(dump_dir: Path) -> list[dict]:
  """The values live at the program's memory peak (XLA's live-range report: arguments and
  temporaries), each with its bytes, shape and the JAX operation that made it."""
  report = _dump_file(dump_dir, 'cpu_after_optimizations-live-range.txt').read_text()
  block = report.split('(peak):', 1)[1].split('Stack trace', 1)[0]
  live = [(m.group(1), int(m.group(2)))
          for m in re.finditer(r'^\s+(\S+?)\{[^}]*\}: (\d+) bytes', block, re.M)]
  made_by = {}
  for line in _dump_file(dump_dir, 'cpu_after_optimizations.txt').open():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+?) ', line)
    if m:
      op = re.search(r'op_name="([^"]*)"', line)
      made_by[m.group(1)] = (m.group(2).split('{')[0], op.group(1) if op else '')
  return [dict(name=n, bytes=b, shape=made_by.get(n, ('?', ''))[0], op=made_by.get(n, ('', '?'))[1])
          for n, b in live]


def group_by_op(values: list[dict]) -> list[tuple[str, str, int, int]]:
  """(shape, op with layer numbers folded into layer_N, count, bytes), largest first."""
  groups, counts = collections.Counter(), collections.Counter()
  for v in values:
    op = re.sub(r'layer_\d+', 'layer_N', v['op'])
    key = (v['shape'], op.replace('jit(train_step)/', ''))
    groups[key] += v['bytes']
    counts[key] += 1
  return [(shape, op, counts[(shape, op)], n) for (shape, op), n in groups.most_common()]


def main(argv=None):
  a = parse_args(argv)
  dump = None
  if a.buffers:
    dump = Path(a.dump_to or tempfile.mkdtemp(prefix='step_memory_'))
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' --xla_dump_to={dump}'
                               ' --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*')
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  compiled, n_params, run = build_step(a)
  import resource
  from electra_jax import hostmem
  from electra_jax import membudget
  compile_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  hostmem.release_free_memory()  # as membudget.Precompiled does after each compilation
  after_compile = membudget.process_rss_bytes()
  m = compiled.memory_analysis()
  out = dict(task=a.task, size=a.size, batch=a.batch, seq_len=a.seq_len, params=n_params,
             overrides=a.set, unrolled_threefry=a.unrolled_threefry,
             arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
             aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
             generated_code=m.generated_code_size_in_bytes, compile_peak_rss=compile_peak,
             rss_after_compile=after_compile)
  print(f'{a.task} size={a.size} {a.batch}x{a.seq_len} ({n_params / 1e6:.1f}M params) '
        f'{" ".join(a.set)}{" unrolled threefry" if a.unrolled_threefry else ""}')
  for k in ('arguments', 'outputs', 'aliased', 'temporaries', 'generated_code'):
    print(f'  {k:15s} {out[k] / MB:9.1f} MB')
  print(f'  process RSS: peak {compile_peak / MB:.0f} MB by the end of the compilation, '
        f'{after_compile / MB:.0f} MB after it (free heap pages returned)')
  if dump is not None:
    values = peak_values(dump)
    total = sum(v['bytes'] for v in values)
    print(f'{len(values)} values live at the peak, {total / MB:.1f} MB (arguments included); '
          f'the {a.buffers} largest groups (XLA dump in {dump}):')
    groups = group_by_op(values)
    for shape, op, count, n in groups[:a.buffers]:
      print(f'  {n / MB:8.1f} MB {count:4d} x {shape:22s} {op[-110:]}')
    out['peak_groups'] = [dict(shape=s_, op=o, count=c, bytes=n) for s_, o, c, n in groups]
  if a.steps:
    import statistics
    times = run(a.steps)
    out['step_s'] = times
    print(f'  step time      {statistics.median(times):9.3f} s (median of {a.steps}; '
          f'{" ".join(f"{t:.3f}" for t in times)})')
  if a.json:
    Path(a.json).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
  main()
