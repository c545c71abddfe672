"""Checkpoints of a pre-training or fine-tuning run, resume with fallback, preemption, and
the params export.

Layout of a workdir:
  checkpoints/<step>/state   the TrainState (orbax StandardSave, sharded arrays)
  checkpoints/<step>/loader  JSON: every host's data-loader position (`loader.get_state()`)
  checkpoints/<step>/meta    JSON: the run's base RNG key data, step, process count, vocab hash
  checkpoints.corrupt/       checkpoints that failed to restore, moved aside for inspection
  export/                    {discriminator,generator,pretrainer}.msgpack, model_config.json,
                             vocab.txt

    ckpt = Checkpointer(workdir, keep=3, abstract_state=abstract)
    restored = ckpt.restore_latest()      # None on a fresh workdir; falls back past corrupt ones
    ckpt.save(step, state, loader_state, rng)
    ckpt.close()                          # waits for the async save in flight
    with Preemption(ckpt) as p: ... p.requested(step)   # SIGTERM/SIGINT -> save and stop

For fine-tuning and conversion:
    model_config, params = load_exported('RUN/export')             # ElectraModel params
    model_config, params = load_pretraining_checkpoint('RUN')      # from the latest checkpoint
`model_config` is {'model': config.model, 'tokens': config.tokens, ...} as plain dicts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from jax.experimental import multihost_utils

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'checkpoints.corrupt'
EXPORT_DIR = 'export'
EXPORT_TOWERS = ('discriminator', 'generator', 'pretrainer')


class CheckpointMismatch(ValueError):
  """The checkpoint is intact but holds parameters of other shapes than the config asks for."""


@dataclasses.dataclass
class Restored:
  """What a checkpoint brings back: state at `step`, this host's loader position, base key."""
  step: int
  state: Any
  loader_state: dict
  rng: jax.Array
  meta: dict


def _gather_json(obj) -> list:
  """Every process's JSON-able `obj`, in process order (identity on one process)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  everyone = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode()) for row, n in
          zip(everyone.reshape(len(lengths.ravel()), -1), lengths.ravel())]


class Checkpointer:
  """orbax CheckpointManager over (state, loader, meta) with corrupt-checkpoint fallback.

  `abstract_state` is the TrainState as jax.ShapeDtypeStruct leaves carrying their
  NamedShardings; restores always use it, so arrays come back in the run's layout.
  """

  def __init__(self, workdir, keep: int, abstract_state, async_save: bool = True):
    self.workdir = Path(workdir)
    self.directory = self.workdir / CHECKPOINT_DIR
    self.abstract_state = abstract_state
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory.absolute(), options=self._options,
                                 item_names=('state', 'loader', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, loader_state: dict, rng, extra_meta: dict | None = None,
           force: bool = False) -> bool:
    """Starts an async save of `state` (after `step` steps). Returns False if it exists already.

    The device->host copy finishes before this returns, so the caller may donate
    `state` to the next step right away; the file writes go on in the background.
    """
    if step in self._manager.all_steps():
      return False
    loaders = _gather_json(loader_state)
    meta = {'step': int(step), 'process_count': jax.process_count(),
            'rng_key_data': np.asarray(jax.random.key_data(rng)).tolist(),
            'rng_impl': str(jax.random.key_impl(rng)), 'saved_at': time.time(),
            **(extra_meta or {})}
    return self._manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            loader=ocp.args.JsonSave({'process_count': jax.process_count(), 'states': loaders}),
            meta=ocp.args.JsonSave(meta)),
        force=force)

  def check_structure(self, step: int) -> None:
    """Raises CheckpointMismatch when the saved parameters do not fit `abstract_state`.

    Reads only the checkpoint's metadata. A checkpoint whose metadata cannot be read is left
    to the restore, which reports it as corrupt.
    """
    from etils import epath  # pylint: disable=g-import-not-at-top
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    try:
      md = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory.absolute() / str(step) / 'state'))
      tree = md.tree if hasattr(md, 'tree') else md
      saved = {'/'.join(map(str, k)): tuple(v.shape) for k, v in
               traverse_util.flatten_dict(dict(tree['params'])).items()}
    except Exception:  # noqa: BLE001 -- unreadable: the restore says what is wrong
      return
    want = {'/'.join(map(str, k)): tuple(v.shape) for k, v in
            traverse_util.flatten_dict(dict(self.abstract_state.params)).items()}
    if saved == want:
      return
    diffs = [f'{k}: {saved[k]} in the checkpoint, {want[k]} for the config'
             for k in sorted(set(saved) & set(want)) if saved[k] != want[k]]
    diffs += [f'{k} only in the checkpoint' for k in sorted(set(saved) - set(want))]
    diffs += [f'{k} only in the config' for k in sorted(set(want) - set(saved))]
    raise CheckpointMismatch(
        f'the checkpoint at step {step} in {self.directory} holds a model of another shape than '
        f'the config: {len(diffs)} parameter(s) differ ({"; ".join(diffs[:3])}'
        f'{"; ..." if len(diffs) > 3 else ""}). The checkpoints are intact and were left as they '
        'are: resume with the config they were trained with, or pass another --workdir')

  def _restore_step(self, step: int) -> Restored:
    self.check_structure(step)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self.abstract_state),
        loader=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    meta, loader = dict(out['meta']), dict(out['loader'])
    states = loader['states']
    if loader['process_count'] != jax.process_count():
      # Fine when every host saved the same (global) position; a per-host one cannot be mapped.
      if any(s != states[0] for s in states):
        raise ValueError(f'checkpoint {step} was written by {loader["process_count"]} processes '
                         f'with per-host data positions but this run has {jax.process_count()}; '
                         'resume with the same number of hosts')
      states = [states[0]] * jax.process_count()
    rng = jax.random.wrap_key_data(np.asarray(meta['rng_key_data'], np.uint32),
                                   impl=meta['rng_impl'])
    state_step = int(jax.device_get(out['state'].step))
    if state_step != step:
      raise ValueError(f'checkpoint directory {step} holds a state at step {state_step}')
    return Restored(step=step, state=out['state'],
                    loader_state=states[jax.process_index()], rng=rng, meta=meta)

  def restore_latest(self) -> Restored | None:
    """Restores the newest checkpoint that loads; None when there is none at all.

    A checkpoint that fails to load (corrupt or partial files) is reported and the
    previous one is tried. Once an older one loads, the newer broken ones are moved
    to checkpoints.corrupt/ so the run can save those steps again. If none loads,
    raises (it never silently restarts from scratch over existing checkpoints).
    """
    steps = self.all_steps()
    failed: list[tuple[int, str]] = []
    for step in reversed(steps):
      try:
        restored = self._restore_step(step)
      except CheckpointMismatch:
        raise  # a config change, not corruption: nothing is moved
      except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds
        msg = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
        logging.error('checkpoint at step %d in %s is corrupt or partial (%s); trying the '
                      'previous one', step, self.directory, msg[:500])
        print(f'WARNING: checkpoint at step {step} is corrupt or partial ({msg[:200]}); '
              'falling back to the previous one', flush=True)
        failed.append((step, msg))
        continue
      if failed:
        self._move_aside([s for s, _ in failed])
      return restored
    if failed:
      raise ValueError(f'none of the {len(failed)} checkpoints in {self.directory} could be '
                       f'restored (newest step {failed[0][0]}: {failed[0][1][:300]}); fix or '
                       'move them away to start afresh')
    return None

  def _move_aside(self, steps: list[int]) -> None:
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      dest_root = self.workdir / CORRUPT_DIR
      dest_root.mkdir(exist_ok=True)
      for step in steps:
        src = self.directory / str(step)
        dest = dest_root / f'{step}-{int(time.time())}'
        shutil.move(str(src), str(dest))
        logging.warning('moved corrupt checkpoint %s to %s', src, dest)
    multihost_utils.sync_global_devices('electra_jax.io.checkpoint.move_aside')
    self._manager.close()
    self._manager = self._open()

  def reached_preemption(self, step: int) -> bool:
    """True on every host once JAX's preemption notifier has agreed to stop at `step`."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class Preemption:
  """Turns SIGTERM/SIGINT into a stop request the loop polls between steps.

  One process: our own handlers set a flag. Several processes must all stop at
  the same step, so there SIGTERM is left to JAX's preemption notifier (the
  coordination service agrees on a sync step, asked through orbax's
  `reached_preemption`), and only SIGINT is caught here; every host polls the
  agreed answer, never its own local flag.
  """

  def __init__(self, ckpt):
    self.signal = None
    self._ckpt = ckpt
    self._old = {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.signal = signal.Signals(signum).name

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (identical on every host)."""
    if not self._multi:
      return self.signal is not None
    if self._ckpt.reached_preemption(step):
      self.signal = self.signal or 'preemption'
      return True
    return False

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


# ----------------------------------------------------------------------------- export


def _to_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                      if isinstance(x, jax.Array) and not x.is_fully_addressable
                      else np.asarray(x), tree)


def export_params(export_dir, towers: dict, model_config: dict, vocab_tokens: list[str] | None):
  """Writes each tower's params as msgpack, plus model_config.json and vocab.txt.

  towers: name -> param tree, e.g. {'discriminator': ElectraModel params, 'generator':
  generator params, 'pretrainer': the whole pre-training tree (with both heads)}.
  All hosts must call this (gathering sharded params); only process 0 writes.
  """
  towers = {k: _to_numpy(v) for k, v in towers.items()}
  if jax.process_index() != 0:
    return
  export_dir = Path(export_dir)
  tmp = export_dir.with_name(export_dir.name + '.tmp')
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  for name, params in towers.items():
    (tmp / f'{name}.msgpack').write_bytes(serialization.msgpack_serialize(params))
  (tmp / 'model_config.json').write_text(json.dumps(model_config, indent=1, sort_keys=True) + '\n')
  if vocab_tokens is not None:
    (tmp / 'vocab.txt').write_text(''.join(t + '\n' for t in vocab_tokens), encoding='utf-8')
  # Replace the old export only once the new one is complete.
  if export_dir.exists():
    shutil.rmtree(export_dir)
  tmp.rename(export_dir)


def load_exported(path, which: str = 'discriminator') -> tuple[dict, dict]:
  """(model_config dict, params) from an export dir written by `export_params`.

  which: 'discriminator' (ElectraModel params: {'embeddings', 'discriminator'}),
  'generator' ({'embeddings', 'generator', 'generator_predictions'}) or 'pretrainer'
  (the full Pretrainer tree, both heads included). Arrays are numpy.
  model_config: {'model': {...config.model}, 'tokens': {...config.tokens}, 'step': int,
  'vocab_hash': str, 'lowercase': bool}; the vocab is `path/vocab.txt`.
  """
  path = Path(path)
  if which not in EXPORT_TOWERS:
    raise ValueError(f'which={which!r}; expected one of {EXPORT_TOWERS}')
  cfg_file, params_file = path / 'model_config.json', path / f'{which}.msgpack'
  for f in (cfg_file, params_file):
    if not f.is_file():
      raise FileNotFoundError(f'{f} not found; expected an export dir written by '
                              'electra_jax.main (RUN/export)')
  try:
    model_config = json.loads(cfg_file.read_text(encoding='utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{cfg_file} is truncated or corrupt ({type(e).__name__}: {e}); export the '
                     'run again (electra_jax.main --export_only)') from None
  params = read_msgpack(params_file)
  return model_config, params


def read_msgpack(path) -> dict:
  """A flax msgpack file as a nested dict of numpy arrays; a cut or garbled file names itself."""
  path = Path(path)
  try:
    params = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # noqa: BLE001 -- msgpack raises ValueError, TypeError, ExtraData, ...
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ValueError(f'{path} is truncated or corrupt ({first}); export or convert it again') from None
  if not isinstance(params, dict):
    raise ValueError(f'{path} holds a {type(params).__name__}, not a parameter tree; export or '
                     'convert it again')
  return params

