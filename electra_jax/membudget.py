"""Will the step fit? XLA's memory analysis of each compiled step against the machine's memory.

    train_fn = membudget.Precompiled(train_fn, 'training step', host_bytes=data_bytes)
    state, metrics = train_fn(state, batch, rng)   # compiled ahead of time, then run

`Precompiled` wraps a jitted function: the first call with a new set of argument shapes
compiles it ahead of time (`lower(...).compile()`, the executable every later call with
those shapes runs: nothing is compiled twice), reads the executable's memory analysis and,
before it runs, prints one line when the estimate exceeds what the machine has:

    warning: the training step needs about 31.2 GB (XLA: arguments 0.2 + outputs 0.2 -
    donated 0.2 + temporaries 30.9 GB, x1 device; host data 0.1 GB) but 20.4 GB is
    available (MemAvailable 19.6 GB + this process 0.8 GB): expect to run out of memory ...

The estimate: arguments + outputs - aliased (donated) + temporaries of the executable, per
device, times the local devices where they share the host's memory (CPU), plus
`host_bytes` (the data the program holds, e.g. the tokenised dataset). Host memory
available: /proc/meminfo MemAvailable plus this process's own resident memory (which
already holds the arguments and the data). On GPU/TPU the device part is compared with
each device's `memory_stats()['bytes_limit']` instead. Estimates leave out the Python
heap, the libraries and the allocator's overhead, so a warning is a floor, not a bound.

After each compilation the heap's free pages go back to the system
(hostmem.release_free_memory): compiling frees hundreds of MB that would otherwise stay
resident under the first step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from electra_jax import hostmem
from electra_jax import runlog

log = logging.getLogger(__name__)
GB = 1e9


def available_host_bytes() -> int | None:
  """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def process_rss_bytes() -> int:
  """This process's resident memory now (0 where /proc is absent)."""
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError, IndexError):
    return 0


def device_limit_bytes(device) -> int | None:
  """The memory an accelerator lets XLA use (memory_stats()['bytes_limit']), or None."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (CPU: unimplemented on some versions)
    return None
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


@dataclasses.dataclass
class Estimate:
  """Bytes per device of one executable (XLA's memory analysis)."""
  arguments: int
  outputs: int
  aliased: int  # outputs written into donated arguments
  temporaries: int
  code: int = 0

  @property
  def per_device(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  @classmethod
  def of(cls, compiled) -> 'Estimate | None':
    try:
      m = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except  (a backend without the analysis)
      return None
    if m is None:
      return None
    return cls(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
               int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
               int(getattr(m, 'generated_code_size_in_bytes', 0) or 0))


def _gb(n: float) -> str:
  return f'{n / GB:.1f}'


def check(estimate: Estimate, what: str, devices, host_bytes: int = 0) -> str | None:
  """The one-line warning when `estimate` (per device, on `devices`) plus `host_bytes` does
  not fit the machine; None when it fits or nothing is known about the machine."""
  devices = list(devices)
  xla = (f'XLA: arguments {_gb(estimate.arguments)} + outputs {_gb(estimate.outputs)} - donated '
         f'{_gb(estimate.aliased)} + temporaries {_gb(estimate.temporaries)} GB')
  hint = ('expect to run out of memory; lower train.batch_size or train.seq_len, or set '
          '--config.model.recompute_activations=True or --config.model.remat=True')
  if devices and devices[0].platform != 'cpu':
    limit = device_limit_bytes(devices[0])
    if limit is not None and estimate.per_device > limit:
      return (f'warning: the {what} needs about {_gb(estimate.per_device)} GB per '
              f'{devices[0].platform.upper()} ({xla}) but the device has {_gb(limit)} GB: {hint}')
    device_total = 0  # lives on the device, not in host memory
  else:
    device_total = estimate.per_device * max(1, len(devices))
  available = available_host_bytes()
  if available is None:
    return None
  own = process_rss_bytes()
  need = device_total + host_bytes
  if need <= available + own:
    return None
  where = f', x{len(devices)} devices' if len(devices) > 1 and device_total else ''
  return (f'warning: the {what} needs about {_gb(need)} GB ({xla}{where}; host data '
          f'{_gb(host_bytes)} GB) but {_gb(available + own)} GB is available (MemAvailable '
          f'{_gb(available)} GB + this process {_gb(own)} GB): {hint}')


def _signature(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return (treedef,) + tuple((np.shape(x), getattr(x, 'dtype', type(x))) for x in leaves)


def _devices(args) -> list:
  for x in jax.tree.leaves(args):
    sharding = getattr(x, 'sharding', None)
    if sharding is not None:
      return sorted(sharding.addressable_devices, key=lambda d: d.id)
  return list(jax.local_devices())


class Precompiled:
  """A jitted function compiled ahead of time per argument signature, with a memory check.

  key_argnums: the arguments whose shapes can change between calls (the rest, e.g. a
  train state, are assumed fixed: cheaper than flattening them at every step).
  host_bytes: the host data to add to the estimate. Warnings go to the console (process 0)
  and the log; `warnings` keeps them.
  """

  def __init__(self, jitted: Callable, what: str, *, host_bytes: int = 0,
               key_argnums: tuple[int, ...] | None = None):
    self.jitted, self.what, self.host_bytes, self.key_argnums = jitted, what, host_bytes, key_argnums
    self.executables: dict[tuple, Any] = {}
    self.estimates: dict[tuple, Estimate | None] = {}
    self.warnings: list[str] = []

  def __call__(self, *args):
    keyed = args if self.key_argnums is None else tuple(args[i] for i in self.key_argnums)
    key = _signature(keyed)
    executable = self.executables.get(key)
    if executable is None:
      executable = self.jitted.lower(*args).compile()
      hostmem.release_free_memory()  # the compiler's freed memory: not under the step
      estimate = Estimate.of(executable)
      self.executables[key], self.estimates[key] = executable, estimate
      if estimate is not None:
        log.info('%s %s: XLA memory per device: arguments %d, outputs %d, aliased %d, '
                 'temporaries %d bytes', self.what, [np.shape(x) for x in jax.tree.leaves(keyed)],
                 estimate.arguments, estimate.outputs, estimate.aliased, estimate.temporaries)
        line = check(estimate, self.what, _devices(args), self.host_bytes)
        if line:
          self.warnings.append(line)
          log.warning('%s', line)
          runlog.console(line)
    return executable(*args)


def nbytes(tree) -> int:
  """Bytes of the numpy / jax arrays in `tree` (e.g. a dataset's feature arrays)."""
  return sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(tree))
