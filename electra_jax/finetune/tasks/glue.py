"""GLUE tasks: readers (local TSVs in the download_glue_data.py layout, or TFDS `glue/*`),
featurization to fixed-shape arrays, metrics and the leaderboard test-set writer.

Both sources give identical `PairExample`s for the same split: text_a/text_b as in the
file, label as an index into `label_list` (float for STS-B, None when unlabeled) and
`idx` = the row's position in the split (the `index` column for test files), which is
TFDS's `idx` feature.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from electra_jax.finetune.tasks import metrics
from electra_jax.finetune.tasks import base

# TSV split name -> TFDS split name.
_TFDS_SPLITS = {'train': 'train', 'dev': 'validation', 'test': 'test',
                'dev_matched': 'validation_matched', 'dev_mismatched': 'validation_mismatched',
                'test_matched': 'test_matched', 'test_mismatched': 'test_mismatched'}


@dataclasses.dataclass(frozen=True)
class PairExample:
  """One GLUE example. label: index into label_list, float (STS-B) or None (test)."""
  guid: str
  idx: int
  text_a: str
  text_b: str | None
  label: int | float | None


@dataclasses.dataclass(frozen=True)
class _Columns:
  """Header column names of a task's TSV files (None: single sentence / no such column)."""
  text_a: str
  text_b: str | None
  label: str
  test_index: str = 'index'


@dataclasses.dataclass
class GlueTask:
  """A GLUE task. See electra_jax.finetune.tasks.registry for the common task interface."""
  name: str
  dir_name: str                 # folder under the GLUE root, and leaderboard file stem
  tfds_name: str                # TFDS config: glue/<tfds_name>
  tfds_text: tuple[str, str | None]
  columns: _Columns
  label_list: tuple[str, ...]   # label strings as in the TSVs (TFDS ClassLabel order)
  main_metric: str
  metric_names: tuple[str, ...]
  epochs: int = 3
  double_unordered: bool = False
  splits: tuple[str, ...] = ('train', 'dev', 'test')
  eval_splits: tuple[str, ...] = ('dev',)
  headerless: bool = False      # CoLA train/dev: source, label, label_notation, sentence

  @property
  def kind(self) -> str:
    return 'regression' if not self.label_list else 'classification'

  @property
  def num_labels(self) -> int:
    return len(self.label_list) if self.label_list else 1

  # ------------------------------------------------------------------------- reading

  def load_examples(self, source: str, split: str, data_dir: str | Path) -> list[PairExample]:
    """Examples of `split` from source 'tsv' (data_dir: GLUE root, or the task's folder)
    or 'tfds' (data_dir: TFDS data_dir holding glue/<config>; never downloads)."""
    if split not in self.splits:
      raise ValueError(f'{self.name}: unknown split {split!r}, expected one of {self.splits}')
    if source == 'tsv':
      return self._load_tsv(split, Path(data_dir))
    if source == 'tfds':
      return self._load_tfds(split, data_dir)
    raise ValueError(f"unknown source {source!r}, expected 'tsv' or 'tfds'")

  def tsv_path(self, split: str, data_dir: Path) -> Path:
    file = 'diagnostic/diagnostic.tsv' if split == 'ax' else f'{split}.tsv'
    for root in (data_dir / self.dir_name, data_dir):
      if (root / file).exists():
        return root / file
      if split == 'ax' and (root.parent / file).exists():
        return root.parent / file
    raise FileNotFoundError(f'{self.name}: no {file} under {data_dir / self.dir_name} or '
                            f'{data_dir}')

  def _load_tsv(self, split: str, data_dir: Path) -> list[PairExample]:
    path = self.tsv_path(split, data_dir)
    unlabeled = split.startswith('test') or split == 'ax'
    # utf-8-sig drops the BOM that MRPC's header carries.
    with open(path, encoding='utf-8-sig', newline='') as f:
      lines = f.read().split('\n')
    if lines and lines[-1] == '':
      lines.pop()
    headerless = self.headerless and not unlabeled
    if headerless:
      ncols, header, first = 4, None, 0
      col = {'label': 1, 'text_a': 3, 'text_b': None}
    else:
      header = lines[0].rstrip('\r').split('\t') if lines else []
      ncols, first = len(header), 1
      names = {'text_a': self.columns.text_a, 'text_b': self.columns.text_b,
               'label': None if unlabeled else self.columns.label,
               'index': self.columns.test_index if unlabeled else None}
      if split == 'ax':
        names.update(text_a='sentence1', text_b='sentence2')
      col = {}
      for key, cname in names.items():
        if cname is None:
          col[key] = None
        elif cname not in header:
          raise ValueError(f'{path}:1: header has no column {cname!r} (header: {header})')
        else:
          col[key] = header.index(cname)
    examples = []
    for lineno in range(first, len(lines)):
      row = lines[lineno].rstrip('\r').split('\t')
      where = f'{path}:{lineno + 1}'
      if len(row) != ncols:
        raise ValueError(f'{where}: expected {ncols} tab-separated columns, got {len(row)}')
      if unlabeled:
        try:
          idx = int(row[col['index']])
        except ValueError:
          raise ValueError(f'{where}: index {row[col["index"]]!r} is not an integer') from None
        label = None
      else:
        idx = len(examples)
        label = self._parse_label(row[col['label']], where)
      text_b = row[col['text_b']] if col['text_b'] is not None else None
      examples.append(PairExample(f'{split}-{idx}', idx, row[col['text_a']], text_b, label))
    return examples

  def _parse_label(self, raw: str, where: str) -> int | float:
    if self.kind == 'regression':
      try:
        value = float(raw)
      except ValueError:
        raise ValueError(f'{where}: label {raw!r} is not a number') from None
      if not 0.0 <= value <= 5.0:
        raise ValueError(f'{where}: label {raw!r} outside the score range [0, 5]')
      return value
    if raw not in self.label_list:
      raise ValueError(f'{where}: label {raw!r} not in {self.name} labels {list(self.label_list)}')
    return self.label_list.index(raw)

  def _load_tfds(self, split: str, data_dir) -> list[PairExample]:
    import tensorflow_datasets as tfds  # Heavy import, only for this source.
    name = 'glue/ax' if split == 'ax' else f'glue/{self.tfds_name}'
    tfds_split = 'test' if split == 'ax' else _TFDS_SPLITS[split]
    try:
      ds = tfds.load(name, split=tfds_split, data_dir=str(data_dir) if data_dir else None,
                     download=False, shuffle_files=False)
    except Exception as e:  # TFDS raises AssertionError/DatasetNotFoundError/... when absent.
      raise FileNotFoundError(f'TFDS dataset {name} split {tfds_split} not found in data_dir '
                              f'{data_dir} (download=False): {str(e).splitlines()[0]}') from None
    key_a, key_b = ('premise', 'hypothesis') if split == 'ax' else self.tfds_text
    unlabeled = split.startswith('test') or split == 'ax'
    examples = []
    for rec in tfds.as_numpy(ds):
      idx = int(rec['idx'])
      text_b = rec[key_b].decode('utf-8') if key_b else None
      raw = rec['label'].item()
      if unlabeled or (self.kind == 'classification' and raw == -1):
        label = None
      elif self.kind == 'regression':
        label = float(raw)
      else:
        if not 0 <= raw < len(self.label_list):
          raise ValueError(f'{name}/{tfds_split} idx {idx}: label {raw} not in '
                           f'0..{len(self.label_list) - 1}')
        label = int(raw)
      examples.append(PairExample(f'{split}-{idx}', idx, rec[key_a].decode('utf-8'), text_b,
                                  label))
    examples.sort(key=lambda e: e.idx)  # TFDS shards interleave; idx is the file order.
    if self.kind == 'regression':
      # TFDS stores STS-B scores as float32; round-trip to the TSV's decimal value.
      examples = [dataclasses.replace(e, label=_float32_to_decimal(e.label))
                  if e.label is not None else e for e in examples]
    return examples

  # ------------------------------------------------------------------------- features

  def featurize(self, examples: Sequence[PairExample], tokenizer: base.Tokenizer,
                max_seq_length: int, train: bool,
                double_unordered: bool | None = None) -> base.Features:
    """Arrays input_ids/input_mask/segment_ids [N, L] int32, label [N] (int32; float32 for
    STS-B; -1 when unlabeled), example_index [N] int32. With train and double_unordered
    (default: the task's setting) each pair is also added swapped (b, a), as ELECTRA does."""
    if double_unordered is None:
      double_unordered = self.double_unordered
    rows, num_truncated = [], 0
    ids_of = base.encode_many(tokenizer, [t for ex in examples for t in (ex.text_a, ex.text_b)
                                          if t is not None])
    for i, ex in enumerate(examples):
      if self.kind == 'classification' and ex.label is not None and \
          not 0 <= ex.label < self.num_labels:
        raise ValueError(f'{self.name} example {ex.guid}: label {ex.label!r} not in '
                         f'0..{self.num_labels - 1} ({list(self.label_list)})')
      pairs = [(ex.text_a, ex.text_b)]
      if train and double_unordered and ex.text_b is not None:
        pairs.append((ex.text_b, ex.text_a))
      for text_a, text_b in pairs:
        ids, mask, seg, truncated = base.pack_pair(
            ids_of[text_a], ids_of[text_b] if text_b is not None else None, tokenizer,
            max_seq_length)
        num_truncated += truncated
        label = -1 if ex.label is None else ex.label
        rows.append(dict(input_ids=ids, input_mask=mask, segment_ids=seg, label=label,
                         example_index=i))
    label_dtype = np.float32 if self.kind == 'regression' else np.int32
    arrays = base.stack_rows(rows, dict(input_ids=np.int32, input_mask=np.int32,
                                        segment_ids=np.int32, label=label_dtype,
                                        example_index=np.int32))
    base.log_truncation(self.name, num_truncated, len(rows), max_seq_length)
    return base.Features(arrays, list(examples), num_truncated)

  # ------------------------------------------------------------------------- metrics

  def predictions_to_labels(self, predictions) -> np.ndarray:
    """Logits [N, C] -> argmax ids [N]; ids [N] pass through; regression [N] or [N, 1]."""
    p = np.asarray(predictions)
    if self.kind == 'regression':
      return p.reshape(len(p), -1)[:, 0].astype(np.float64)
    return p.argmax(-1) if p.ndim == 2 else p.astype(np.int64)

  def compute_metrics(self, predictions, features: base.Features) -> dict[str, float]:
    """predictions: logits [N, C] / label ids [N] (classification) or scores [N] (STS-B),
    one per feature, in features order. Returns metric name -> float (includes main_metric)."""
    pred = self.predictions_to_labels(predictions)
    gold = features.arrays['label']
    if len(pred) != len(gold):
      raise ValueError(f'{self.name}: got {len(pred)} predictions for {len(gold)} features')
    if np.any(gold < 0) and self.kind == 'classification':
      raise ValueError(f'{self.name}: cannot score unlabeled features (label -1)')
    out = {}
    for m in self.metric_names:
      if m == 'accuracy':
        out[m] = metrics.accuracy(gold, pred)
      elif m == 'f1':
        out[m] = metrics.f1_binary(gold, pred)
      elif m == 'mcc':
        out[m] = metrics.matthews_corrcoef(gold, pred)
      elif m == 'pearson':
        out[m] = metrics.pearson(gold, pred)
      elif m == 'spearman':
        out[m] = metrics.spearman(gold, pred)
    return out

  # ------------------------------------------------------------------------- test writer

  def leaderboard_file(self, split: str) -> str:
    if split == 'ax':
      return 'AX.tsv'
    if split == 'test_matched':
      return 'MNLI-m.tsv'
    if split == 'test_mismatched':
      return 'MNLI-mm.tsv'
    if split != 'test':
      raise ValueError(f'{self.name}: leaderboard files are for test splits, got {split!r}')
    return f'{self.dir_name}.tsv'

  def write_test_predictions(self, predictions, examples: Sequence[PairExample],
                             out_dir: str | Path, split: str = 'test') -> Path:
    """Writes the GLUE leaderboard file (CoLA.tsv, MNLI-m.tsv, AX.tsv, ...) into out_dir:
    header `index\\tprediction`, one row per example with its `idx` and the label string
    (STS-B: the score clipped to [0, 5]). Returns the path."""
    pred = self.predictions_to_labels(predictions)
    if len(pred) != len(examples):
      raise ValueError(f'{self.name}: got {len(pred)} predictions for {len(examples)} examples')
    out = Path(out_dir) / self.leaderboard_file(split)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ['index\tprediction']
    for ex, p in zip(examples, pred):
      value = f'{min(max(float(p), 0.0), 5.0):.3f}' if self.kind == 'regression' \
          else self.label_list[int(p)]
      lines.append(f'{ex.idx}\t{value}')
    out.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return out


def _float32_to_decimal(x: float) -> float:
  """Shortest decimal that round-trips through float32 (TFDS float32 -> TSV's '3.800')."""
  f32 = np.float32(x)
  for digits in range(1, 10):
    y = round(float(f32), digits)
    if np.float32(y) == f32:
      return y
  return float(f32) if math.isfinite(f32) else x


_BINARY = ('0', '1')
_NLI2 = ('entailment', 'not_entailment')

GLUE_TASKS = {
    'cola': GlueTask('cola', 'CoLA', 'cola', ('sentence', None), _Columns('sentence', None, ''),
                     _BINARY, 'mcc', ('mcc', 'accuracy'), headerless=True),
    'sst2': GlueTask('sst2', 'SST-2', 'sst2', ('sentence', None),
                     _Columns('sentence', None, 'label'), _BINARY, 'accuracy', ('accuracy',)),
    'mrpc': GlueTask('mrpc', 'MRPC', 'mrpc', ('sentence1', 'sentence2'),
                     _Columns('#1 String', '#2 String', 'Quality'), _BINARY, 'accuracy',
                     ('accuracy', 'f1'), double_unordered=True),
    'stsb': GlueTask('stsb', 'STS-B', 'stsb', ('sentence1', 'sentence2'),
                     _Columns('sentence1', 'sentence2', 'score'), (), 'spearman',
                     ('pearson', 'spearman'), epochs=10, double_unordered=True),
    'qqp': GlueTask('qqp', 'QQP', 'qqp', ('question1', 'question2'),
                    _Columns('question1', 'question2', 'is_duplicate', test_index='id'),
                    _BINARY, 'accuracy', ('accuracy', 'f1')),
    'mnli': GlueTask('mnli', 'MNLI', 'mnli', ('premise', 'hypothesis'),
                     _Columns('sentence1', 'sentence2', 'gold_label'),
                     ('entailment', 'neutral', 'contradiction'), 'accuracy', ('accuracy',),
                     splits=('train', 'dev_matched', 'dev_mismatched', 'test_matched',
                             'test_mismatched', 'ax'),
                     eval_splits=('dev_matched', 'dev_mismatched')),
    'qnli': GlueTask('qnli', 'QNLI', 'qnli', ('question', 'sentence'),
                     _Columns('question', 'sentence', 'label'), _NLI2, 'accuracy', ('accuracy',)),
    'rte': GlueTask('rte', 'RTE', 'rte', ('sentence1', 'sentence2'),
                    _Columns('sentence1', 'sentence2', 'label'), _NLI2, 'accuracy', ('accuracy',),
                    epochs=10),
    'wnli': GlueTask('wnli', 'WNLI', 'wnli', ('sentence1', 'sentence2'),
                     _Columns('sentence1', 'sentence2', 'label'), _BINARY, 'accuracy',
                     ('accuracy',)),
}
