"""Guards of a run directory: one run per workdir, refused starts that change nothing.

    workdir = check_workdir(path)              # a usable --workdir; creates nothing
    with RunStart(workdir) as start:           # creates + locks the workdir (process 0)
      check_resume_config(workdir, config)     # refuses a config the checkpoints cannot take
      ...validate, build data, restore...      # a failure here removes what the start created
      start.started()                          # from here on the run owns the directory
      ...train...

Lock: `WORKDIR/.lock`, held with `fcntl.flock` for the life of the run. The kernel drops it
when the process dies, SIGKILL included, so a dead run never leaves a stale lock; the file
itself (the holder's PID, host and command) is removed on a clean exit and overwritten by the
next holder otherwise. A second start on the same workdir is refused with one line naming the
holder. Locks are re-entrant within a process (the fine-tuning program locks the workdir that
finetune_and_evaluate locks again). Multi-host runs lock on process 0 only; every process
learns the outcome. A filesystem without flock gets a warning and no guard.

Resume: every checkpoint records the config it was written under (its meta item; the
workdir's `config.json` is the same, written once a start has succeeded). A new start
compares its config with the newest checkpoint's before anything is written; only the keys
of `RESUMABLE_KEYS` may differ (they change neither the model, the optimizer state, the data
and its order, nor the random draws). Anything else is refused, listing each key as
`old -> new`, with the way out: the original command, or another --workdir.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

LOCK_NAME = '.lock'
CONFIG_NAME = 'config.json'

# Pre-training keys that may change when a run resumes. Everything else fixes the parameter
# shapes, the optimizer, the examples and their order or the random draws, which the
# checkpoints hold or the data position assumes. train.num_steps may grow or shrink: the
# learning-rate schedule is then recomputed over the new length (the steps after the resume
# differ from those of a run started with it). train.init_from is only read by a fresh run.
# train.grad_accum_steps, like model.remat, model.recompute_activations and the mesh, changes
# how a step runs, not what it computes (but for float rounding, and for grad_accum_steps
# the dropout masks, which are drawn per microbatch).
RESUMABLE_KEYS = (
    'train.num_steps', 'train.grad_accum_steps', 'train.log_every', 'train.eval_every', 'train.eval_batches',
    'train.eval_batch_size', 'train.checkpoint_every', 'train.keep_checkpoints',
    'train.nan_policy', 'train.max_skipped_fraction', 'train.skip_window', 'train.init_from',
    'data.num_workers', 'data.num_shards', 'data.max_undecodable_fraction',
    'data.max_truncated_fraction', 'model.remat', 'model.recompute_activations', 'mesh.data',
    'mesh.fsdp',
)


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked (busy, a file, or holding another run)."""


# ----------------------------------------------------------------------------- the workdir


def check_workdir(workdir) -> Path:
  """The workdir as a Path, checked usable: its parent exists, it is not a file, writable.

  Creates nothing, so a start refused later leaves no empty directory behind.
  """
  workdir = Path(workdir).expanduser()
  parent = workdir.absolute().parent
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file; expected a directory (a new one, or '
                       'the workdir of the run to resume)')
  if not parent.is_dir():
    raise FileNotFoundError(f'workdir parent {parent} does not exist; create it first or pass '
                            'another --workdir')
  target = workdir if workdir.is_dir() else parent
  if not os.access(target, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir {workdir}: {target} is not writable; pass a workdir you '
                       'can write to')
  return workdir


def has_checkpoints(workdir) -> bool:
  d = Path(workdir) / 'checkpoints'
  return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())


# ----------------------------------------------------------------------------- the lock


def _process():
  """(index, count) of this process in a multi-host run; (0, 1) without JAX loaded."""
  if 'jax' not in sys.modules:
    return 0, 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


def _holder_line(what: str) -> str:
  argv = list(getattr(sys, 'orig_argv', None) or sys.argv)
  argv[0] = os.path.basename(argv[0])
  cmd = ' '.join(argv)
  if len(cmd) > 160:
    cmd = cmd[:157].rstrip() + '...'
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  return json.dumps({'what': what, 'pid': os.getpid(), 'host': socket.gethostname(),
                     'since': now, 'command': cmd})


def _describe_holder(text: str) -> str:
  try:
    h = json.loads(text)
    return (f'a {h.get("what", "run")} (PID {h["pid"]} on host {h["host"]}, since {h["since"]}'
            + (f': {h["command"]}' if h.get('command') else '') + ')')
  except (ValueError, KeyError, TypeError):
    return 'another process (that has not yet written its PID)'


class WorkdirLock:
  """An exclusive `fcntl.flock` on WORKDIR/.lock (see the module docstring)."""

  _held: dict[str, list] = {}  # realpath of the lock file -> [fd, depth]

  def __init__(self, workdir, what: str = 'run'):
    self.path = Path(workdir) / LOCK_NAME
    self.what = what
    self._key = None

  def acquire(self) -> 'WorkdirLock':
    key = os.path.realpath(self.path)
    if key in self._held:  # this process holds it already (re-entrant)
      self._held[key][1] += 1
      self._key = key
      return self
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
          # A filesystem without flock (e.g. Lustre mounted without -o flock): run unguarded.
          if os.fstat(fd).st_size == 0:
            with contextlib.suppress(OSError):
              os.unlink(self.path)
          os.close(fd)
          print(f'warning: cannot lock {self.path} ({os.strerror(e.errno)}); nothing stops '
                'a second run from using this workdir at the same time', file=sys.stderr,
                flush=True)
          self._held[key] = [None, 1]
          self._key = key
          return self
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          os.close(fd)
          raise
        holder = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
        os.close(fd)
        raise WorkdirError(
            f'workdir {self.path.parent} is in use by {_describe_holder(holder)}; wait for it '
            'to end or stop it, or pass another --workdir') from None
      # The holder before us may have removed the file between our open and our lock: only a
      # lock on the file that is at the path now counts.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_line(self.what) + '\n').encode(), 0)
    self._held[key] = [fd, 1]
    self._key = key
    return self

  def release(self) -> None:
    key, self._key = self._key, None
    if key is None or key not in self._held:
      return
    entry = self._held[key]
    entry[1] -= 1
    if entry[1] > 0:
      return
    del self._held[key]
    fd = entry[0]
    if fd is None:  # never locked (see acquire)
      return
    try:
      if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
        os.unlink(self.path)  # while still holding it: the next start makes a new one
    except OSError:
      pass
    os.close(fd)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _agree(ok: bool, what: str) -> None:
  """Multi-host: every process learns whether process 0 could do `what`."""
  index, count = _process()
  if count == 1:
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  everyone_ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
  if not everyone_ok and index != 0:
    raise WorkdirError(f'process 0 could not {what}; see its error')


class RunStart:
  """Creates (if needed) and locks a workdir; undoes the creation if the start fails.

  Until `started()` is called, an exception leaves the workdir as it was: the lock file, a
  `checkpoints/` left empty and the workdir itself are removed when this start created them
  (only empty directories are ever removed). The lock is held until the `with` block ends.
  Nested starts on the same workdir share one state; a start on a sub-directory (a seed of
  a multi-seed run) that has started marks its locked parents started too. `on_started(fn)`
  runs `fn` once the start has succeeded (e.g. to open a log file in the workdir).
  """

  _states: dict[str, dict] = {}  # realpath of the workdir -> shared state of its starts

  def __init__(self, workdir, what: str = 'run'):
    self.workdir = Path(workdir)
    self.what = what
    self._lock = WorkdirLock(self.workdir, what)
    self._key = None

  @property
  def _state(self) -> dict:
    return self._states[self._key]

  def __enter__(self) -> 'RunStart':
    index, _ = _process()
    ok = True
    try:
      if index == 0:
        created = not self.workdir.exists()
        self.workdir.mkdir(exist_ok=True)
        self._key = os.path.realpath(self.workdir)
        state = self._states.setdefault(self._key, {
            'created': created, 'existing': set(os.listdir(self.workdir)), 'started': False,
            'callbacks': [], 'depth': 0})
        state['depth'] += 1
        try:
          self._lock.acquire()
        except BaseException:
          self._finish(undo=True, release=False)
          raise
    except BaseException:
      ok = False
      _agree(False, f'lock {self.workdir}')
      raise
    _agree(ok, f'lock {self.workdir}')
    return self

  def on_started(self, fn) -> None:
    if self._key is None:
      return
    if self._state['started']:
      fn()
    else:
      self._state['callbacks'].append(fn)

  def started(self) -> None:
    """The start succeeded: from now on the run's files stay, whatever happens."""
    if self._key is None:
      return
    for key, state in list(self._states.items()):
      if (key == self._key or self._key.startswith(key.rstrip(os.sep) + os.sep)) and not state['started']:
        state['started'] = True
        callbacks, state['callbacks'] = state['callbacks'], []
        for fn in callbacks:
          fn()

  def _finish(self, undo: bool, release: bool = True) -> None:
    state = self._state
    state['depth'] -= 1
    if release:
      self._lock.release()
    if state['depth'] > 0:
      return
    del self._states[self._key]
    if not undo:
      return
    for name in ('checkpoints', 'tensorboard'):
      p = self.workdir / name
      if name not in state['existing'] and p.is_dir():
        with contextlib.suppress(OSError):
          p.rmdir()  # only when empty
    if state['created']:
      with contextlib.suppress(OSError):
        self.workdir.rmdir()  # only when empty

  def __exit__(self, exc_type, exc, tb):
    if self._key is None:
      return
    self._finish(undo=exc_type is not None and not self._state['started'])


# ----------------------------------------------------------------------------- resume


def flatten(d: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def read_run_config(workdir) -> dict | None:
  """The flattened config.json of a workdir; None when there is none or it is unreadable."""
  path = Path(workdir) / CONFIG_NAME
  if not path.is_file():
    return None
  try:
    return flatten(json.loads(path.read_text(encoding='utf-8')))
  except (ValueError, UnicodeDecodeError):
    return None


def recorded_config(workdir) -> tuple[dict | None, int | None]:
  """(flattened config, step) that the newest readable checkpoint was written under.

  Checkpoints record their run's config in their meta item (`config`). (None, None) when
  the newest readable one does not: it was written by an older version.
  """
  ck = Path(workdir) / 'checkpoints'
  steps = sorted((int(p.name) for p in ck.iterdir() if p.name.isdigit() and p.is_dir()),
                 reverse=True) if ck.is_dir() else []
  for step in steps:
    try:
      meta = json.loads((ck / str(step) / 'meta' / 'metadata').read_text(encoding='utf-8'))
    except (OSError, ValueError, UnicodeDecodeError):
      continue  # a corrupt checkpoint (the restore falls back past it): try the previous one
    if isinstance(meta, dict) and isinstance(meta.get('config'), dict):
      return flatten(meta['config']), step
    break
  return None, None


def config_changes(old: dict, new: dict, allowed=RESUMABLE_KEYS) -> tuple[list, list]:
  """(refused, allowed) lists of (key, old, new) between two flattened configs.

  Keys only one side has (a config written by an older or newer version) are neither.
  """
  refused, ok = [], []
  for k in sorted(set(old) & set(new)):
    if old[k] != new[k]:
      (ok if k in allowed else refused).append((k, old[k], new[k]))
  return refused, ok


def _fmt(changes, limit: int = 8) -> str:
  parts = [f'{k}: {o!r} -> {n!r}' for k, o, n in changes[:limit]]
  if len(changes) > limit:
    parts.append(f'and {len(changes) - limit} more')
  return '; '.join(parts)


def check_resume_config(workdir, config, allowed=RESUMABLE_KEYS) -> list:
  """Refuses a config that differs from the one the workdir's checkpoints were written under.

  Returns the allowed changes (key, old, new) so the caller can report them. Writes nothing.
  A workdir without checkpoints takes any config (the run starts afresh). Checkpoints of an
  older version record no config; their workdir's config.json may then be one that a
  refused start of that version overwrote, so differences from it are only warned about and
  the checkpoints' own checks decide (parameter shapes, vocab hash, data position).
  """
  workdir = Path(workdir)
  if not has_checkpoints(workdir):
    return []
  new = flatten(json.loads(config.to_json()))
  old, step = recorded_config(workdir)
  if old is None:
    legacy = read_run_config(workdir)
    refused, ok = config_changes(legacy, new, allowed) if legacy is not None else ([], [])
    if refused:
      print(f'warning: this config differs from {workdir / CONFIG_NAME} in {_fmt(refused)}; '
            'the checkpoints were written by an older version that did not record their '
            'config (and may have overwritten config.json on a refused start), so the '
            'checkpoints\' shapes, vocab and data position are checked instead',
            file=sys.stderr, flush=True)
    return ok
  refused, ok = config_changes(old, new, allowed)
  if refused:
    raise WorkdirError(
        f'the checkpoints in {workdir} were trained with another config (recorded in checkpoint '
        f'{step}; see {workdir / CONFIG_NAME}); {len(refused)} key(s) differ (checkpoints -> '
        f'now): {_fmt(refused)}. Nothing in {workdir} was changed. To resume, run the original '
        'command again (without these changes); to train with the new settings, pass a new '
        '--workdir')
  return ok


def describe_changes(changes) -> str:
  return _fmt(changes, limit=len(changes))


# ----------------------------------------------------------------------------- logs


def truncate_jsonl(path, max_step: int) -> int:
  """Drops the records of `path` after `max_step` (and lines cut short by a kill).

  A run that resumes from the checkpoint at step S (or falls back to an older one) redoes
  the steps after S; their old records are removed so that every step is logged once, as
  the run that produced the checkpoints saw it. Returns how many records were dropped.
  """
  path = Path(path)
  if not path.is_file():
    return 0
  keep, dropped = [], 0
  for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
    if not line.strip():
      continue
    try:
      step = int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      dropped += 1
      continue
    if step <= max_step:
      keep.append(line)
    else:
      dropped += 1
  if dropped:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(''.join(l + '\n' for l in keep), encoding='utf-8')
    os.replace(tmp, path)
  return dropped
