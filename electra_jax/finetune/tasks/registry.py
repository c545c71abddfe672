"""Task name -> task object, for every downstream task the ELECTRA paper reports.

Every task object has the same interface (pure Python/NumPy; no JAX):

  name: str                      canonical name ('rte', 'squad1', 'chunk', ...)
  kind: str                      'classification' | 'regression' | 'span' | 'tagging'
  num_labels: int                classes (1 for regression/span; tag count for tagging)
  label_list: tuple[str, ...]    label strings (empty for regression/span)
  epochs: int                    the paper's default: RTE/STS-B 10, SQuAD 2, others 3
  main_metric: str               key of compute_metrics' dict used for model selection
  eval_splits: tuple[str, ...]   splits to evaluate on (MNLI: dev_matched, dev_mismatched)
  load_examples(source, split, data_dir) -> list[example]
  featurize(examples, tokenizer, max_seq_length, train) -> base.Features
  compute_metrics(predictions, features) -> dict[str, float]

GLUE tasks also have write_test_predictions(predictions, examples, out_dir, split).
See glue.py / squad.py / chunking.py for the shapes of `predictions` per kind.
"""

from __future__ import annotations

import dataclasses

from electra_jax.finetune.tasks import glue

_ALIASES = {'sst': 'sst2', 'sts': 'stsb', 'squadv1': 'squad1', 'squad11': 'squad1',
            'squadv11': 'squad1', 'squadv2': 'squad2', 'squad20': 'squad2',
            'squadv20': 'squad2', 'squad': 'squad2', 'conll2000': 'chunk', 'chunking': 'chunk',
            'mnlim': 'mnli', 'mnlimm': 'mnli'}


def _normalise(name: str) -> str:
  key = ''.join(c for c in name.lower() if c.isalnum())
  return _ALIASES.get(key, key)


def task_names() -> tuple[str, ...]:
  """Canonical names of all tasks."""
  return tuple(glue.GLUE_TASKS) + ('squad1', 'squad2', 'chunk')


def get_task(name: str, **overrides):
  """A fresh task object for `name` (case, '-', '_' and '.' ignored: 'SST-2', 'sts_b',
  'SQuAD1.1'), with dataclass fields replaced by `overrides` (e.g. doc_stride=128,
  n_best_size=20, max_answer_length=30 for SQuAD; epochs=... for any task)."""
  key = _normalise(name)
  if key in glue.GLUE_TASKS:
    task = glue.GLUE_TASKS[key]
  # SQuAD and chunking import lazily so GLUE users never pay for them.
  elif key in ('squad1', 'squad2'):
    from electra_jax.finetune.tasks import squad
    task = squad.SquadTask(version=int(key[-1]))
  elif key == 'chunk':
    from electra_jax.finetune.tasks import chunking
    task = chunking.ChunkingTask()
  else:
    raise ValueError(f'unknown task {name!r}, expected one of {task_names()}')
  fields = {f.name for f in dataclasses.fields(task)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'{task.name}: unknown task settings {unknown}, expected some of '
                     f'{sorted(fields)}')
  return dataclasses.replace(task, **overrides)  # A copy: callers may not mutate the table.
