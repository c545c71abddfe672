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

Where they apply (issue 18, benchmarks/README.md "Host memory"): pre-training
only. Its step has one shape, so the heap settles at one step's worth and every
later step reuses it. Fine-tuning runs several shapes (length buckets, the
evaluation batch) and compiles between them; with one arena that is never
trimmed and no mmap'd blocks, the freed blocks of one shape could not hold the
next and the heap grew to 2-3x what the system allocator needs (MRPC, Small:
5.95 GB against 2.60 GB; SQuAD in issue 18: 19.9 against 6.0 GB), for no speed
gain. So fine-tuning keeps the system allocator.

glibc reads GLIBC_TUNABLES only when a process starts, so the entry points
(`electra_jax.main`, the benchmarks) call `reexec_with_tuned_malloc()` first: it
re-runs the same command line once with the variable set. ELECTRA_JAX_MALLOC
picks: `auto` (the default: tuned where the program asks for it, i.e.
pre-training), `tuned` (everywhere that calls reexec_with_tuned_malloc, fine-tuning
too) or `system` (never). A GLIBC_TUNABLES of your own is left as it is. Other C
libraries (musl, macOS) are left alone.

`release_free_memory()` hands the heap's free pages back to the system
(malloc_trim): called after each XLA compilation (electra_jax.membudget), whose
freed memory would otherwise stay resident under the step that follows.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
            'glibc.malloc.trim_threshold=1099511627776')  # 1 TiB: never trim
OPT_OUT = 'ELECTRA_JAX_MALLOC'


MODES = ('auto', 'tuned', 'system')


def mode(environ=None) -> str:
  """ELECTRA_JAX_MALLOC: auto (default) | tuned | system; ValueError for anything else."""
  environ = os.environ if environ is None else environ
  value = environ.get(OPT_OUT, '') or 'auto'
  if value not in MODES:
    raise ValueError(f'{OPT_OUT}={value!r}; expected one of {", ".join(MODES)}')
  return value


def applies(environ=None, default: bool = True) -> bool:
  """Whether the tuned allocator should be (re)started for this process.

  default: what `auto` means for this program (True: pre-training; False: fine-tuning).
  """
  environ = os.environ if environ is None else environ
  wanted = {'auto': default, 'tuned': True, 'system': False}[mode(environ)]
  if not wanted or 'GLIBC_TUNABLES' in environ:
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


def reexec_with_tuned_malloc(default: bool = True) -> None:
  """Re-run this command line once with the tuned allocator; a no-op where it does not apply.

  Call it first thing in an entry point, before jax starts any thread. default: whether
  ELECTRA_JAX_MALLOC=auto (the default) means tuned for this program (see applies).
  """
  if not applies(default=default):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv keeps the interpreter's own options (-m module, -u, -X ...).
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], tuned_environ())


def release_free_memory() -> bool:
  """malloc_trim(0): returns the free pages of every malloc arena to the system.

  glibc only (True when it ran). Under the tuned allocator too: the trim threshold
  stops automatic trimming, not this call.
  """
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return False
  import ctypes  # pylint: disable=g-import-not-at-top
  try:
    libc = ctypes.CDLL(None)
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim(0)
  except (OSError, AttributeError):
    return False
  return True
