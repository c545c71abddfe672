"""CoNLL-2000 chunking: column-file reader, first-sub-token tagging features, predictions
back to word level, and conlleval-style span F1.

As google-research/electra finetune/tagging/tagging_tasks.py: words are tokenized one by
one, each word is labelled at its first sub-token (other sub-tokens get weight 0), and the
training labels use the BIOES encoding of the gold chunks (LABEL_ENCODING = "BIOES");
scoring converts word-level predictions back to chunks.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from electra_jax.finetune.tasks import metrics
from electra_jax.finetune.tasks import base

log = logging.getLogger(__name__)

# The 11 chunk types of CoNLL-2000 (train + test).
CHUNK_TYPES = ('ADJP', 'ADVP', 'CONJP', 'INTJ', 'LST', 'NP', 'PP', 'PRT', 'SBAR', 'UCP', 'VP')


@dataclasses.dataclass(frozen=True)
class ChunkExample:
  """One sentence: words, POS tags and the original IOB2 chunk tags (all the same length)."""
  guid: str
  words: tuple[str, ...]
  pos: tuple[str, ...]
  tags: tuple[str, ...]


def read_conll(path: str | Path, split: str = 'train') -> list[ChunkExample]:
  """Sentences of a CoNLL-2000 file (`word POS chunk` per line, blank line between
  sentences; -DOCSTART- lines skipped). Bad rows and unknown tags name file and line."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'no CoNLL file at {path}')
  valid = {'O'} | {f'{p}-{t}' for p in 'BI' for t in CHUNK_TYPES}
  sentences, cur = [], []
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, 1):
      cols = line.split()
      if not cols:
        if cur:
          sentences.append(cur)
          cur = []
        continue
      if cols[0] == '-DOCSTART-':
        continue
      if len(cols) != 3:
        raise ValueError(f'{path}:{lineno}: expected 3 columns (word POS chunk), got '
                         f'{len(cols)}: {line.rstrip()!r}')
      if cols[2] not in valid:
        raise ValueError(f'{path}:{lineno}: chunk tag {cols[2]!r} not in the CoNLL-2000 tag set '
                         f'(O, B-/I- of {", ".join(CHUNK_TYPES)})')
      cur.append(cols)
  if cur:
    sentences.append(cur)
  return [ChunkExample(f'{split}-{i}', *(tuple(c) for c in zip(*s)))
          for i, s in enumerate(sentences)]


def to_bioes(tags: Sequence[str]) -> list[str]:
  """IOB tags -> BIOES tags of the same chunks."""
  out = ['O'] * len(tags)
  for ctype, start, end in metrics.get_chunks(tags):
    if start == end:
      out[start] = f'S-{ctype}'
    else:
      out[start] = f'B-{ctype}'
      out[start + 1:end] = [f'I-{ctype}'] * (end - start - 1)
      out[end] = f'E-{ctype}'
  return out


@dataclasses.dataclass
class ChunkingTask:
  """CoNLL-2000 chunking. See registry.py for the interface.

  Splits: 'train' = train.txt minus its last `dev_sentences` sentences, 'dev' = those
  held-out sentences (the data has no dev set), 'train_full' = all of train.txt,
  'test' = test.txt (the split the paper reports).
  """
  label_encoding: str = 'BIOES'
  dev_sentences: int = 1000
  name: str = 'chunk'
  kind: str = 'tagging'
  main_metric: str = 'f1'
  epochs: int = 3
  eval_splits: tuple[str, ...] = ('dev',)

  @property
  def label_list(self) -> tuple[str, ...]:
    prefixes = 'BIES' if self.label_encoding == 'BIOES' else 'BI'
    return ('O',) + tuple(f'{p}-{t}' for t in CHUNK_TYPES for p in prefixes)

  @property
  def num_labels(self) -> int:
    return len(self.label_list)

  def load_examples(self, source: str, split: str, data_dir) -> list[ChunkExample]:
    """source 'conll': data_dir holds train.txt and test.txt (e.g. the CoNLL-2000 folder of the public data)."""
    if source != 'conll':
      raise ValueError(f"{self.name}: unknown source {source!r}, expected 'conll' (CoNLL-2000 "
                       f"is not in TFDS)")
    data_dir = Path(data_dir)
    if split == 'test':
      return read_conll(data_dir / 'test.txt', 'test')
    if split not in ('train', 'dev', 'train_full'):
      raise ValueError(f"{self.name}: unknown split {split!r}, expected 'train', 'dev', "
                       f"'train_full' or 'test'")
    sents = read_conll(data_dir / 'train.txt', 'train')
    if split == 'train_full':
      return sents
    if len(sents) <= self.dev_sentences:
      raise ValueError(f'{data_dir / "train.txt"}: {len(sents)} sentences, cannot hold out '
                       f'{self.dev_sentences} for dev')
    cut = len(sents) - self.dev_sentences
    if split == 'train':
      return sents[:cut]
    return [dataclasses.replace(s, guid=f'dev-{i}') for i, s in enumerate(sents[cut:])]

  def featurize(self, examples: Sequence[ChunkExample], tokenizer: base.Tokenizer,
                max_seq_length: int, train: bool) -> base.Features:
    """[CLS] sub-tokens of each word [SEP].

    arrays: input_ids/input_mask/segment_ids [N, L] int32; labels [N, L] int32 (tag id at
    each word's first sub-token, 0 elsewhere); label_weights [N, L] int32 (1 at first
    sub-tokens); example_index [N] int32. meta[n]['word_starts']: position of each word's
    first sub-token, -1 for words cut by max_seq_length (counted in num_truncated).
    """
    del train  # Same features for training and evaluation.
    label_ids = {t: i for i, t in enumerate(self.label_list)}
    unk = getattr(tokenizer, 'unk_id', None)
    cache = base.encode_many(tokenizer, (w for ex in examples for w in ex.words))
    rows, meta, num_truncated = [], [], 0
    for e_index, ex in enumerate(examples):
      tags = to_bioes(ex.tags) if self.label_encoding == 'BIOES' else list(ex.tags)
      ids, labels, weights, starts = [tokenizer.cls_id], [0], [0], []
      truncated = False
      for word, tag in zip(ex.words, tags):
        pieces = cache[word] or ([unk] if unk is not None else [])
        if truncated or not pieces or len(ids) + len(pieces) > max_seq_length - 1:
          truncated = truncated or bool(pieces)
          starts.append(-1)
          continue
        starts.append(len(ids))
        ids += pieces
        labels += [label_ids[tag]] + [0] * (len(pieces) - 1)
        weights += [1] + [0] * (len(pieces) - 1)
      ids.append(tokenizer.sep_id)
      labels.append(0)
      weights.append(0)
      num_truncated += truncated
      input_ids, input_mask, segment_ids = base.pad_row(ids, [0] * len(ids), tokenizer.pad_id,
                                                        max_seq_length)
      pad = max_seq_length - len(ids)
      rows.append(dict(input_ids=input_ids, input_mask=input_mask, segment_ids=segment_ids,
                       labels=labels + [0] * pad, label_weights=weights + [0] * pad,
                       example_index=e_index))
      meta.append({'word_starts': starts})
    base.log_truncation(self.name, num_truncated, len(rows), max_seq_length)
    arrays = base.stack_rows(rows, {k: np.int32 for k in rows[0]} if rows else {})
    return base.Features(arrays, list(examples), num_truncated, meta)

  def word_predictions(self, predictions, features: base.Features) -> list[list[str]]:
    """Logits [N, L, C] or tag ids [N, L] -> per-sentence word-level tag strings (the tag at
    each word's first sub-token; 'O' for words cut by max_seq_length)."""
    p = np.asarray(predictions)
    if p.ndim == 3:
      p = p.argmax(-1)
    if p.shape != features.arrays['input_ids'].shape:
      raise ValueError(f'{self.name}: expected predictions [N, L] or [N, L, C] with [N, L] = '
                       f'{features.arrays["input_ids"].shape}, got {np.shape(predictions)}')
    out = []
    for n, m in enumerate(features.meta):
      out.append([self.label_list[int(p[n, s])] if s >= 0 else 'O' for s in m['word_starts']])
    return out

  def compute_metrics(self, predictions, features: base.Features) -> dict[str, float]:
    """Span precision/recall/F1 (0-1) of word-level predictions vs the gold IOB chunks."""
    pred_tags = self.word_predictions(predictions, features)
    gold = [features.examples[int(i)].tags for i in features.arrays['example_index']]
    return metrics.chunk_f1(gold, pred_tags)
