"""Run logs: JSON lines (metrics.jsonl, eval.jsonl), TensorBoard, and the cache directory.

    writer = MetricsWriter(workdir)             # process 0 writes; the others are no-ops
    writer.write(step, {'loss': 1.2, ...})                    # -> metrics.jsonl, tb 'train/loss'
    writer.write(step, {'eval_loss': 1.3, ...}, split='eval') # -> eval.jsonl, tb 'eval/loss'
    writer.close()
    JsonlWriter(path).write({'step': 3, 'epoch': 1, 'train': {...}})   # any record
    TensorBoard(workdir).write(step, {'accuracy': 0.9}, 'dev')         # tb 'dev/accuracy'
    read_jsonl(path)                            # the records, one per step, in step order
    cache_dir(flag_value)                       # --cache_dir, else $ELECTRA_JAX_CACHE, else
                                                # ~/.cache/electra_jax

Files are appended to, so a resumed run continues the same logs. A resumed run first
drops the records after the step it resumes from (electra_jax.rundir.truncate_jsonl), so
the steps a killed run logged after its last checkpoint, or those of checkpoints it fell
back past, appear once; `read_jsonl` also keeps only the last record of each step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import sys

import numpy as np

FILES = {'train': 'metrics.jsonl', 'eval': 'eval.jsonl'}
CACHE_ENV = 'ELECTRA_JAX_CACHE'


def cache_dir(override=None) -> Path:
  """Where built data, vocabularies and shards are cached: `override` (the --cache_dir flag),
  else $ELECTRA_JAX_CACHE, else ~/.cache/electra_jax."""
  return Path(override or os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'electra_jax')


def _jsonable(v):
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # 'nan' / 'inf': JSON has no such numbers
  return v


class JsonlWriter:
  """Appends one JSON object per line to `path` (flushed at once, so a kill loses no line)."""

  def __init__(self, path):
    self.path = Path(path)
    self._f = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115

  def write(self, record: dict) -> None:
    self._f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + '\n')
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def summary_writer(logdir: Path, **kwargs):
  """tensorboardX.SummaryWriter(logdir), without importing torch.

  tensorboardX imports torch whenever it is installed (the hf and test extras install it),
  only to recognise torch tensors; we write Python floats. That import costs every run
  about 2.4 s and 180 MB of peak RSS (fine-tuning ELECTRA-Small: more than its whole gap to
  the PyTorch peer). So torch is hidden while tensorboardX is imported, and only then; a
  later `import torch` works as usual.
  """
  if 'tensorboardX' not in sys.modules and 'torch' not in sys.modules:
    sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX allows
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      del sys.modules['torch']
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(str(logdir), **kwargs)


class TensorBoard:
  """Scalars into workdir/tensorboard as `prefix/name` (process 0 writes; elsewhere a no-op)."""

  def __init__(self, workdir):
    import jax  # pylint: disable=g-import-not-at-top
    self._tb = None
    if jax.process_index() == 0:
      self._tb = summary_writer(Path(workdir) / 'tensorboard')

  def write(self, step: int, scalars: dict, prefix: str) -> None:
    if self._tb is None:
      return
    for k, v in scalars.items():
      v = _jsonable(v)
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f'{prefix}/{k}', v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class MetricsWriter:
  """Appends scalars to workdir/{metrics,eval}.jsonl and TensorBoard event files."""

  def __init__(self, workdir, tensorboard: bool = True, purge_step: int | None = None):
    """purge_step: a resumed run's first step; TensorBoard hides older events from that on."""
    import jax  # pylint: disable=g-import-not-at-top
    self.workdir = Path(workdir)
    self.active = jax.process_index() == 0
    self._files = {}
    self._tb = None
    if not self.active:
      return
    for split, name in FILES.items():
      self._files[split] = JsonlWriter(self.workdir / name)
    if tensorboard:
      self._tb = summary_writer(self.workdir / 'tensorboard',
                                purge_step=purge_step if purge_step and purge_step > 1 else None)

  def write(self, step: int, scalars: dict, split: str = 'train') -> None:
    if not self.active:
      return
    self._files[split].write({'step': int(step), **scalars})
    if self._tb is not None:
      prefix = 'eval_' if split == 'eval' else ''
      for k, v in scalars.items():
        v = _jsonable(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          name = k[len(prefix):] if prefix and k.startswith(prefix) else k
          self._tb.add_scalar(f'{split}/{name}', v, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    for f in self._files.values():
      f.close()
    self._files = {}
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path) -> list[dict]:
  """Records of a metrics file in step order, the last one written for each step."""
  by_step: dict[int, dict] = {}
  path = Path(path)
  if not path.exists():
    return []
  for line in path.read_text(encoding='utf-8').splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    by_step[int(rec['step'])] = rec
  return [by_step[s] for s in sorted(by_step)]


def console(line: str, bar=None) -> None:
  """Prints `line` on process 0 only, above `bar` (a tqdm bar) when one is showing."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  if bar is not None and not bar.disable:
    bar.write(line)
  else:
    print(line, flush=True)
