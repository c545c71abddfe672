"""Metric writers: one JSON object per line (metrics.jsonl, eval.jsonl) and TensorBoard.

    writer = MetricsWriter(workdir)             # process 0 writes; the others are no-ops
    writer.write(step, {'loss': 1.2, ...})                    # -> metrics.jsonl, tb 'train/loss'
    writer.write(step, {'eval_loss': 1.3, ...}, split='eval') # -> eval.jsonl, tb 'eval/loss'
    writer.close()

Files are appended to, so a resumed run continues the same logs; `read_jsonl`
keeps the last record of each step, so the steps a killed run logged after its
last checkpoint (and logs again after resuming) appear once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np

FILES = {'train': 'metrics.jsonl', 'eval': 'eval.jsonl'}


def _jsonable(v):
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # 'nan' / 'inf': JSON has no such numbers
  return v


class MetricsWriter:
  """Appends scalars to workdir/{metrics,eval}.jsonl and TensorBoard event files."""

  def __init__(self, workdir, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.active = jax.process_index() == 0
    self._files = {}
    self._tb = None
    if not self.active:
      return
    for split, name in FILES.items():
      self._files[split] = open(self.workdir / name, 'a', encoding='utf-8')  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.workdir / 'tensorboard'))

  def write(self, step: int, scalars: dict, split: str = 'train') -> None:
    if not self.active:
      return
    record = {'step': int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
    f = self._files[split]
    f.write(json.dumps(record) + '\n')
    f.flush()
    if self._tb is not None:
      prefix = 'eval_' if split == 'eval' else ''
      for k, v in scalars.items():
        v = _jsonable(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          name = k[len(prefix):] if prefix and k.startswith(prefix) else k
          self._tb.add_scalar(f'{split}/{name}', v, int(step))

  def flush(self) -> None:
    for f in self._files.values():
      f.flush()
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
