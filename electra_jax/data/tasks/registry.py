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

from electra_jax.data.tasks import glue

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


def get_task(name: str):
  """Task object for `name` (case, '-', '_' and '.' ignored: 'SST-2', 'sts_b', 'SQuAD1.1')."""
  key = _normalise(name)
  if key in glue.GLUE_TASKS:
    return glue.GLUE_TASKS[key]
  # SQuAD and chunking import lazily so GLUE users never pay for them.
  if key in ('squad1', 'squad2'):
    from electra_jax.data.tasks import squad
    return squad.SquadTask(version=int(key[-1]))
  if key == 'chunk':
    from electra_jax.data.tasks import chunking
    return chunking.ChunkingTask()
  raise ValueError(f'unknown task {name!r}, expected one of {task_names()}')
