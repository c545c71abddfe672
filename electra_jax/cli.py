"""One pattern for every `python -m electra_jax.*` program.

    from electra_jax import cli

    def define_flags():                  # called only when the module runs as a program
      cli.define_config('configs/pretrain.py:tiny')     # --config=FILE.py:ARG, --config.a.b=V
      flags.DEFINE_string('workdir', None, 'Run directory.', required=True)
      cli.define_distributed()           # --multihost, --coordinator_address, ...

    def main(argv):
      cli.no_positional(argv)
      cli.init_distributed()
      ...                                # raise ValueError / FileNotFoundError for bad inputs

    if __name__ == '__main__':
      cli.run(main, define_flags, tuned_malloc=True)

What every program gets from `run`: absl flags spelt with underscores and
`--help`; the glibc allocator re-exec of electra_jax.hostmem where it helps
(pre-training; fine-tuning on request); and errors the user can act on as one
line, `error: ...`, on stderr, with exit status 1 (bad inputs: ValueError, FileNotFoundError,
FloatingPointError, ...) or 2 (bad flags: an unknown flag, a bad value, a
misspelt `--config.` key, a config file that rejects its argument). Tracebacks
are for bugs; `--debug` (or ELECTRA_JAX_DEBUG=1) shows them for user errors too.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
# Config keys renamed by issue 16: a misspelt-key error points at the new name.
RENAMED = {'init_checkpoint': 'train.init_from', 'max_seq_length': 'train.seq_len'}
# Errors that mean "the input is wrong", not "the code is wrong": one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               FloatingPointError, ImportError, PermissionError, IsADirectoryError)
DEBUG_ENV = 'ELECTRA_JAX_DEBUG'  # =1: tracebacks for user errors too (as --debug)


class UsageError(ValueError):
  """A bad command line (exit status 2)."""


def error(message: str, status: int = 1):
  """Prints `error: message` (one line) to stderr and exits with `status`."""
  line = ' '.join(str(message).split('\n')).strip()
  print(f'error: {line}', file=sys.stderr, flush=True)
  sys.exit(status)


# ----------------------------------------------------------------------------- flags


def define_config(example: str, name: str = 'config', lock: bool = True):
  """--config=FILE.py:ARG (a config file with get_config(arg)) and --config.a.b=V overrides."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.DEFINE_config_file(
      name, None, f'Config file and its argument, e.g. {example}; override any value with '
      f'--{name}.KEY=VALUE (e.g. --{name}.seed=1).', lock_config=lock)


def define_distributed() -> None:
  """Multi-host flags (see init_distributed)."""
  flags.DEFINE_bool('multihost', False,
                    'Call jax.distributed.initialize() and let it detect the cluster (TPU pod '
                    'slices, SLURM). Also turned on by the env ELECTRA_JAX_MULTIHOST=1.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0 (env JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (hosts).')
  flags.DEFINE_integer('process_id', None, "This process's index.")
  flags.DEFINE_integer('heartbeat_timeout', None,
                       'Seconds without a heartbeat after which JAX declares a process dead and '
                       'ends every process of the run (default: JAX\'s, 100). A stalled host is '
                       'only noticed this way: a dead one usually fails the next collective.')


def init_distributed() -> None:
  """jax.distributed.initialize() when the flags (define_distributed) or the environment ask."""
  import jax  # pylint: disable=g-import-not-at-top
  explicit = {k: FLAGS[k].value for k in ('coordinator_address', 'num_processes', 'process_id')
              if k in FLAGS and FLAGS[k].value is not None}
  heartbeat = {}
  if 'heartbeat_timeout' in FLAGS and FLAGS.heartbeat_timeout is not None:
    if FLAGS.heartbeat_timeout <= 0:
      raise UsageError(f'--heartbeat_timeout={FLAGS.heartbeat_timeout}: expected a positive '
                       'number of seconds')
    heartbeat['heartbeat_timeout_seconds'] = FLAGS.heartbeat_timeout
  auto = ('multihost' in FLAGS and FLAGS.multihost) or os.environ.get(
      'ELECTRA_JAX_MULTIHOST') == '1'
  if explicit or auto or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    if jax.config.jax_cpu_collectives_implementation is None:
      # CPU processes (a rehearsal on one machine) reduce over gloo (newer jax's default).
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**explicit, **heartbeat)
    logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def get_config(name: str = 'config', example: str = ''):
  """The loaded --config, or a UsageError naming the flag (absent, or its file failed to load)."""
  value = FLAGS[name].value
  if value is None:
    raise UsageError(f'--{name} is required' + (f', e.g. --{name}={example}' if example else ''))
  try:
    value.keys()  # a file that failed to load raises here (config_flags defers the error)
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    why = [l for l in lines if l.startswith('[Errno')] or lines[-1:]
    raise UsageError(f'--{name}={FLAGS[name].config_filename}: {why[0]}') from None
  return value


def no_positional(argv, what: str = 'only flags') -> None:
  if len(argv) > 1:
    raise UsageError(f'unexpected arguments {argv[1:]}; expected {what} (see --help)')


def require(**values) -> None:
  """UsageError naming the first flag given no value, e.g. require(workdir=FLAGS.workdir)."""
  for name, value in values.items():
    if value is None or value == '':
      raise UsageError(f'--{name} is required (see --help)')


# ----------------------------------------------------------------------------- running


def _flag_error(e: Exception, argv) -> str:
  """One line from a flags parsing error, naming the flag and value."""
  if isinstance(e, AttributeError):  # ConfigDict: a misspelt --config.a.b key
    text = str(e).strip('\'"').replace('\\n', '\n').replace("\\'", "'")
    key = text.split('\n')[0].strip('\'"')
    hint = re.search(r'Did you mean "([^"]+)"', text)
    given = [a.split('=')[0] for a in argv[1:] if a.startswith('--') and '.' in a.split('=')[0]
             and a.split('=')[0].split('.')[-1] == key]
    where = given[0] if given else f'key {key!r}'
    if key in RENAMED:
      return f'{where}: no such config key {key!r}; it is now --config.{RENAMED[key]}'
    return (f'{where}: no such config key {key!r}'
            + (f'; did you mean {hint.group(1)!r}?' if hint else ''))
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  # A config file that raised: its message is the last line of the quoted traceback.
  last = [l for l in lines if re.match(r'^\w+(Error|Exception): ', l)]
  if last and len(lines) > 1:
    head = lines[0].split(': ')[0]
    return f'{head}: {last[-1].split(": ", 1)[1]}'
  return ' '.join(lines)


def _parser(argv):
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError) as e:
    error(f'{_flag_error(e, argv)} (see --help)', 2)
  return argv


def run(main: Callable, define_flags: Callable | None = None, *,
        tuned_malloc: bool | None = None) -> None:
  """Runs `main(argv)` as a program: flags, host memory, one-line errors (module docstring).

  tuned_malloc: True = the glibc tunables of electra_jax.hostmem by default (pre-training);
  False = the system allocator unless ELECTRA_JAX_MALLOC=tuned asks for them (fine-tuning);
  None = a program without training steps (never).
  """
  if tuned_malloc is not None:
    from electra_jax import hostmem  # pylint: disable=g-import-not-at-top
    try:  # before any step runs: see electra_jax/hostmem.py
      hostmem.reexec_with_tuned_malloc(default=tuned_malloc)
    except ValueError as e:  # a bad ELECTRA_JAX_MALLOC
      error(e, 2)
  if define_flags is not None:
    before = set(FLAGS)
    define_flags()
    main_module = sys.argv[0]  # the module absl's --help describes
    for name in sorted(set(FLAGS) - before):  # cli's own (--config, distributed) shown too
      FLAGS.register_key_flag_for_module(main_module, FLAGS[name])

  if 'debug' not in FLAGS:
    flags.DEFINE_bool('debug', False, 'Show the traceback of an error as well (also: the '
                      f'environment variable {DEBUG_ENV}=1).')

  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if FLAGS.debug or os.environ.get(DEBUG_ENV, '') not in ('', '0'):
        raise
      error(e, 2 if isinstance(e, UsageError) else 1)
    except Exception as e:  # pylint: disable=broad-except
      exit_if_multiprocess(e)
      raise

  app.run(guarded, flags_parser=_parser)


# Words of the errors a collective or the coordination service raises when a peer is gone.
_PEER_LOST = ('Gloo', 'onnection', 'peer', 'heartbeat', 'UNAVAILABLE', 'arrier')


def exit_if_multiprocess(e: Exception) -> None:
  """In a multi-process run: reports `e` as one `error:` line and exits with status 1 now.

  A failed collective usually means another process died. Leaving normally would run
  jax.distributed's shutdown barrier at exit, which waits for every process, the dead
  one too, until the coordination service gives up on it (its heartbeat timeout, 100 s
  by default). Anything but a lost peer keeps its traceback. One process: returns.
  """
  if 'jax' not in sys.modules:  # failed before any JAX work
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  text = str(e).strip()
  peer = isinstance(e, jax.errors.JaxRuntimeError) and any(w in text for w in _PEER_LOST)
  if not peer:
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
  first = text.splitlines()[0][:500] if text else ''
  print(f'error: process {jax.process_index()} of {jax.process_count()} stopped: '
        f'{type(e).__name__}: {first}'
        + ('. Another process has probably died or stalled: see its log' if peer else '')
        + '. Run the same command on every host again (pre-training resumes from its last '
        'checkpoint).', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access
