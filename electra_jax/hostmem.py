"""Host-memory allocator settings for XLA:CPU steps (glibc malloc tunables).

XLA:CPU allocates a step's temporary buffers (1.5 GB for ELECTRA-Small at
32 x 128) with malloc at every execution and frees them at the end. glibc
serves such large blocks with a fresh mmap and returns them with munmap, so
every step faults in and zeroes every page again: measured 404k minor faults
and 0.72 s of system time per Small step (2.97 s), on the critical path.

`TUNABLES` keep freed memory in the process instead: one malloc arena
(`arena_max=1`, so all threads share the heap that keeps the memory), no
mmap'd blocks (`mmap_max=0`) and no trimming of the heap's top
(`trim_threshold`). The next step reuses the same pages: 0 faults per step,
0.02 s of system time, and the Small step takes 2.5-2.6 s instead of 2.8-3.0 s
(benchmarks/README.md, optimisation 6). The cost: the process keeps its peak
heap until it exits, which a training process does anyway (the peak itself
was lower: 3.1 GB against 3.7 GB).

glibc reads GLIBC_TUNABLES only when a process starts, so the entry points
(`electra_jax.main`, `electra_jax.finetune`, the benchmarks) call
`reexec_with_tuned_malloc()` first: it re-runs the same command line once
with the variable set. Set ELECTRA_JAX_MALLOC=system to keep the default
allocator (or set GLIBC_TUNABLES yourself: it is then left as it is).
Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
            'glibc.malloc.trim_threshold=1099511627776')  # 1 TiB: never trim
OPT_OUT = 'ELECTRA_JAX_MALLOC'


def applies(environ=None) -> bool:
  """Whether the tuned allocator should be (re)started for this process."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, 'tuned') == 'system' or 'GLIBC_TUNABLES' in environ:
    return False
  if sys.platform != 'linux':
    return False
  libc, version = platform.libc_ver()
  if libc != 'glibc':
    return False
  try:
    major, minor = (int(x) for x in version.split('.')[:2])
  except ValueError:
    return False
  return (major, minor) >= (2, 26)  # the first glibc with tunables


def tuned_environ(environ=None) -> dict:
  """A copy of `environ` with the tunables set (what the re-exec runs with)."""
  env = dict(os.environ if environ is None else environ)
  env['GLIBC_TUNABLES'] = TUNABLES
  return env


def active() -> bool:
  """Whether this process runs with our tunables (reported by benchmarks)."""
  return os.environ.get('GLIBC_TUNABLES') == TUNABLES


def reexec_with_tuned_malloc() -> None:
  """Re-run this command line once with the tuned allocator; a no-op where it does not apply.

  Call it first thing in an entry point, before jax starts any thread.
  """
  if not applies():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv keeps the interpreter's own options (-m module, -u, -X ...).
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], tuned_environ())
