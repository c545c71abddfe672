"""electra_jax.hostmem: when the tuned allocator applies (pre-training, not fine-tuning), the
re-exec, that it keeps pages mapped, and that release_free_memory hands freed pages back."""

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


def _run(code: str, env_update: dict, *args: str) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', hostmem.OPT_OUT)}
  env.update(env_update)
  env['PYTHONPATH'] = REPO
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
  return out.stdout


def test_applies_respects_mode_default_and_user_tunables():
  assert not hostmem.applies({hostmem.OPT_OUT: 'system'})
  assert not hostmem.applies({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert hostmem.applies({}) == (GLIBC and hostmem.applies({hostmem.OPT_OUT: 'tuned'}))
  # auto (the default) follows the program: pre-training on, fine-tuning off (issue 18) ...
  assert hostmem.applies({hostmem.OPT_OUT: 'auto'}) == hostmem.applies({})
  assert not hostmem.applies({}, default=False)
  # ... and ELECTRA_JAX_MALLOC=tuned turns it on for fine-tuning too.
  assert hostmem.applies({hostmem.OPT_OUT: 'tuned'}, default=False) == hostmem.applies({})
  with pytest.raises(ValueError, match='ELECTRA_JAX_MALLOC=.fast.; expected one of auto'):
    hostmem.applies({hostmem.OPT_OUT: 'fast'})
  env = hostmem.tuned_environ({'A': '1'})
  assert env == {'A': '1', 'GLIBC_TUNABLES': hostmem.TUNABLES}


@needs_glibc
def test_reexec_runs_the_command_once_with_the_tunables():
  code = """
      import os, sys
      from electra_jax import hostmem
      print('start', os.environ.get('GLIBC_TUNABLES'))
      hostmem.reexec_with_tuned_malloc(default=sys.argv[1] == 'pretrain')
      print('active', hostmem.active())
  """
  lines = _run(code, {}, 'pretrain').split('\n')
  assert lines[:3] == ['start None', f'start {hostmem.TUNABLES}', 'active True'], lines
  lines = _run(code, {hostmem.OPT_OUT: 'system'}, 'pretrain').split('\n')
  assert lines[:2] == ['start None', 'active False'], lines
  lines = _run(code, {}, 'finetune').split('\n')  # fine-tuning: the system allocator ...
  assert lines[:2] == ['start None', 'active False'], lines
  lines = _run(code, {hostmem.OPT_OUT: 'tuned'}, 'finetune').split('\n')  # ... unless asked
  assert lines[:3] == ['start None', f'start {hostmem.TUNABLES}', 'active True'], lines


def test_fine_tuning_keeps_the_system_allocator_and_a_bad_mode_is_one_line():
  """The entry points' choice (cli.run), and ELECTRA_JAX_MALLOC=fast refused with exit 2."""
  code = """
      import os
      from electra_jax import cli
      cli.run(lambda argv: print('active', os.environ.get('GLIBC_TUNABLES') is not None),
              tuned_malloc=False)
  """
  assert _run(code, {}).split('\n')[0] == 'active False'
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env.update({hostmem.OPT_OUT: 'fast', 'PYTHONPATH': REPO})
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().startswith('error: ELECTRA_JAX_MALLOC='), out


def test_release_free_memory_returns_freed_pages():
  """malloc_trim after a big free in the heap's middle (what a compilation leaves behind)."""
  if not GLIBC:
    assert not hostmem.release_free_memory()
    return
  code = """
      import ctypes
      from electra_jax import hostmem
      hostmem.reexec_with_tuned_malloc()  # the tuned allocator: nothing is trimmed by itself
      libc = ctypes.CDLL(None)
      libc.malloc.restype = ctypes.c_void_p
      libc.malloc.argtypes = [ctypes.c_size_t]
      libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
      libc.free.argtypes = [ctypes.c_void_p]
      def rss_mb():
        return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20
      p = libc.malloc(256 << 20)
      libc.memset(p, 1, 256 << 20)
      keep = libc.malloc(1 << 10)  # holds the heap's top above the freed block
      libc.free(p)
      before = rss_mb()
      print(hostmem.release_free_memory(), before - rss_mb())
  """
  ran, released_mb = _run(code, {}).split()[-2:]
  assert ran == 'True' and int(released_mb) > 200, (ran, released_mb)


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
