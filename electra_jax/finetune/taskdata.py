"""The fine-tuning task from its config, and its features read from disk.

build_task(config) -> the registry's task; load_features(task, config, tokenizer, split,
train) -> its featurized split; write_test_predictions -> the GLUE leaderboard files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from electra_jax.finetune import inference
from electra_jax.finetune.tasks import base as task_base
from electra_jax.finetune.tasks import registry

log = logging.getLogger(__name__)

# Local on-disk source name of each task family (config.data.source='local').
_LOCAL_SOURCE = {'classification': 'tsv', 'regression': 'tsv', 'span': 'json',
                 'tagging': 'conll'}



# config.task keys of a SQuAD task (SquadTask fields of the same names).
SQUAD_SETTINGS = ('doc_stride', 'max_query_length', 'n_best_size', 'max_answer_length',
                  'qa_na_threshold')


def build_task(config):
  """The registry's task, with SQuAD's window / n-best / threshold settings from config.task."""
  task = registry.get_task(config.task.name)
  if task.kind == 'span':
    task = registry.get_task(config.task.name, **{k: config.task.get(k) for k in SQUAD_SETTINGS
                                                  if k in config.task})
  return task


def task_source(task, config) -> tuple[str, str]:
  """(reader source name, data_dir) for config.data; clear error when data_dir is needed."""
  src = config.data.source
  if src == 'tfds':
    return 'tfds', config.data.data_dir
  if src != 'local':
    raise ValueError(f"config.data.source={src!r}; expected 'local' or 'tfds'")
  if not config.data.data_dir:
    raise ValueError(f'task {task.name} reads local files: set --config.data.data_dir (e.g. the '
                     f'GLUE root, the SQuAD folder or the CoNLL-2000 folder), or use '
                     f'--config.data.source=tfds')
  return _LOCAL_SOURCE[task.kind], config.data.data_dir


def split_list(value: str) -> list[str]:
  return [s.strip() for s in value.split(',') if s.strip()]


def load_features(task, config, tokenizer, split: str, train: bool,
                  max_examples: int = 0) -> task_base.Features:
  """Reads one split and featurizes it (logging how many examples were truncated)."""
  source, data_dir = task_source(task, config)
  examples = task.load_examples(source, split, data_dir)
  if max_examples:
    examples = examples[:max_examples]
  feats = task.featurize(examples, tokenizer, config.train.seq_len, train)
  log.info('%s/%s: %d examples -> %d features; %d truncated (train.seq_len=%d)', task.name,
           split, len(examples), len(feats), feats.num_truncated, config.train.seq_len)
  return feats


def write_test_predictions(task, config, tokenizer, predict_fn, params, mesh, workdir: Path):
  """GLUE leaderboard files for config.data.test_splits into workdir/test_predictions."""
  if not hasattr(task, 'write_test_predictions') or not config.data.test_splits:
    return []
  test_splits = [s for s in task.splits if s.startswith('test')]
  explicit = config.data.test_splits != 'auto'
  if explicit:
    test_splits = split_list(config.data.test_splits)
  files = []
  for split in test_splits:
    try:
      feats = load_features(task, config, tokenizer, split, False)
    except FileNotFoundError as e:
      if explicit:
        raise
      log.warning('no %s/%s data, no leaderboard file: %s', task.name, split, e)
      continue
    outputs = inference.predict(predict_fn, params, feats, config.train.eval_batch_size, mesh,
                      buckets=task_base.bucket_lengths(config.train.seq_len,
                                                       config.train.length_buckets))
    if jax.process_index() != 0:  # every process predicts (a collective); process 0 writes
      continue
    path = task.write_test_predictions(inference.task_predictions(task, outputs), feats.examples,
                                       workdir / 'test_predictions', split)
    log.info('wrote %s (%d rows)', path, len(feats.examples))
    files.append(path)
  return files
