"""electra_jax.hostmem: when the tuned allocator applies, the re-exec, and that it keeps pages mapped."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from electra_jax import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'
needs_glibc = pytest.mark.skipif(not GLIBC or not hostmem.applies({}),
                                 reason='glibc >= 2.26 on Linux only')


def _thp_mode() -> str:
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      return f.read().split('[')[1].split(']')[0]
  except (OSError, IndexError):
    return ''


def _run(code: str, env_update: dict) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', hostmem.OPT_OUT)}
  env.update(env_update)
  env['PYTHONPATH'] = REPO
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
  return out.stdout


def test_applies_respects_opt_out_and_user_tunables():
  assert not hostmem.applies({hostmem.OPT_OUT: 'system'})
  assert not hostmem.applies({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert hostmem.applies({}) == (GLIBC and hostmem.applies({hostmem.OPT_OUT: 'tuned'}))
  env = hostmem.tuned_environ({'A': '1'})
  assert env == {'A': '1', 'GLIBC_TUNABLES': hostmem.TUNABLES}


@needs_glibc
def test_reexec_runs_the_command_once_with_the_tunables():
  code = """
      import os
      from electra_jax import hostmem
      print('start', os.environ.get('GLIBC_TUNABLES'))
      hostmem.reexec_with_tuned_malloc()
      print('active', hostmem.active())
  """
  lines = _run(code, {}).split('\n')
  assert lines[:3] == ['start None', f'start {hostmem.TUNABLES}', 'active True'], lines
  lines = _run(code, {hostmem.OPT_OUT: 'system'}).split('\n')
  assert lines[:2] == ['start None', 'active False'], lines


@needs_glibc
def test_tuned_allocator_reuses_freed_large_blocks():
  """A freed 256 MiB block is faulted in again under the default glibc, not under ours."""
  code = """
      import ctypes
      import resource
      from electra_jax import hostmem
      hostmem.reexec_with_tuned_malloc()
      libc = ctypes.CDLL(None)
      libc.malloc.restype = ctypes.c_void_p
      libc.malloc.argtypes = [ctypes.c_size_t]
      libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
      libc.free.argtypes = [ctypes.c_void_p]
      def faults_of_one_block(size=256 << 20):  # as XLA:CPU allocates a step's temporaries
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        libc.memset(p, 1, size)
        libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
      faults_of_one_block()
      print(faults_of_one_block())
  """
  pages = (256 << 20) // os.sysconf('SC_PAGE_SIZE')
  tuned = int(_run(code, {}).split()[-1])
  system = int(_run(code, {hostmem.OPT_OUT: 'system'}).split()[-1])
  if _thp_mode() != 'always':  # with transparent huge pages everywhere: 2 MiB faults
    assert system > pages // 2, (system, pages)  # mmap'd afresh and faulted page by page
  assert tuned < pages // 100, (tuned, pages)  # the same pages again
