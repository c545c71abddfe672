r"""Predict with a fine-tuned model on new text.

  python -m electra_jax.predict --model=runs/sst2/model --input=sentences.tsv \
      --output=predictions.jsonl

`--model` is the `model/` dir a fine-tuning run writes at its end (weights, head,
model config, labels, vocab: electra_jax.io.finetuned); nothing else is needed.
One input row is one example, in the task's form:

  task kind        TSV row (no header)         JSONL row
  classification,  text  |  text <TAB> text_b   {"text": ..., "text_b": ...}  (text_b optional)
  regression
  span (SQuAD)     question <TAB> context       {"question": ..., "context": ...}
  tagging (chunk)  tokens separated by spaces   {"tokens": [...]}

`--output` gets one JSON line per input row, in order: classification
{"label": "positive", "probabilities": {"negative": 0.02, "positive": 0.98}};
regression {"score": 3.71}; span {"answer": ..., "probability": ..., "start_logit":
..., "end_logit": ...} (the joint head's logits are log-probabilities; SQuAD 2.0 adds
"no_answer_score", higher = less answerable, and "span", the best span: "answer" is ""
when no_answer_score is above the task's qa_na_threshold, the official -2.75 with the
answerability classifier);
tagging {"tokens": [...], "tags": [...]}. The rows are featurized as evaluation
does (the model's seq_len; SQuAD windows), run in padded batches sharded over the
devices, with a progress bar. A malformed row stops the program with one line
naming its line number and what was expected; the predictions of the rows
before it are written first.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from electra_jax import cli
from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.data import tokenizer as tok_lib
from electra_jax.finetune import inference
from electra_jax.finetune import loop
from electra_jax.finetune.tasks import base as task_base
from electra_jax.finetune.tasks import chunking
from electra_jax.finetune.tasks import glue
from electra_jax.finetune.tasks import registry
from electra_jax.finetune.tasks import squad
from electra_jax.io import finetuned
from electra_jax.models import electra
from electra_jax.models import heads

FLAGS = flags.FLAGS
FORMATS = ('auto', 'tsv', 'jsonl')


def define_flags():
  flags.DEFINE_string('model', None, 'A fine-tuned model dir (RUN/model).')
  flags.DEFINE_string('input', None, 'Input rows: a .tsv or .jsonl file (see --help).')
  flags.DEFINE_string('output', None, 'Output: one JSON line per input row.')
  flags.DEFINE_enum('format', 'auto', FORMATS, 'Input format; auto: by the file extension '
                    '(.jsonl / .json -> jsonl, else tsv).')
  flags.DEFINE_integer('batch_size', 64, 'Rows (SQuAD: windows) per batch; a multiple of the '
                       'device count.')
  flags.DEFINE_integer('length_buckets', 4, 'Batch rows of similar length, cut to one of this '
                       'many lengths up to the model\'s seq_len (1: all at seq_len).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')


# ----------------------------------------------------------------------------- input rows


def _fields(kind: str, line: str, fmt: str, where: str) -> dict[str, Any]:
  """One input line -> the task's fields; ValueError naming `where` and what was expected."""
  if fmt == 'jsonl':
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{where}: not a JSON object ({e.msg})') from None
    if not isinstance(row, dict):
      raise ValueError(f'{where}: expected a JSON object, got {type(row).__name__}')
  else:
    cols = line.split('\t')
    if kind in ('classification', 'regression'):
      if len(cols) > 2:
        raise ValueError(f'{where}: {len(cols)} tab-separated columns; expected text or '
                         'text<TAB>text_b')
      row = {'text': cols[0], 'text_b': cols[1] if len(cols) == 2 else None}
    elif kind == 'span':
      if len(cols) != 2:
        raise ValueError(f'{where}: {len(cols)} tab-separated column(s); expected '
                         'question<TAB>context')
      row = {'question': cols[0], 'context': cols[1]}
    else:
      row = {'tokens': line.split()}
  want = {'classification': ('text',), 'regression': ('text',), 'span': ('question', 'context'),
          'tagging': ('tokens',)}[kind]
  for key in want:
    value = row.get(key)
    ok = (isinstance(value, list) and value and all(isinstance(t, str) and t.strip()
                                                    for t in value)) if key == 'tokens' else (
        isinstance(value, str) and value.strip())
    if not ok:
      what = 'a non-empty list of strings' if key == 'tokens' else 'a non-empty string'
      raise ValueError(f'{where}: "{key}" must be {what}; got {value!r}')
  if kind in ('classification', 'regression'):
    b = row.get('text_b')
    if b is not None and not (isinstance(b, str) and b.strip()):
      raise ValueError(f'{where}: "text_b" must be a non-empty string or absent; got {b!r}')
  return row


def read_rows(path: str, kind: str, fmt: str = 'auto') -> tuple[list[dict], ValueError | None]:
  """(the rows up to the first malformed one, that row's error or None). Blank lines skip."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'--input={path}: no such file')
  if fmt == 'auto':
    fmt = 'jsonl' if p.suffix in ('.jsonl', '.json') else 'tsv'
  rows = []
  with open(p, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip('\n').rstrip('\r')
      if not line.strip():
        continue
      try:
        rows.append(_fields(kind, line, fmt, f'{path}:{n}'))
      except ValueError as e:
        return rows, e
  return rows, None


def examples(task, rows: list[dict]) -> list:
  """Input rows -> the task's example objects (unlabeled)."""
  if task.kind in ('classification', 'regression'):
    return [glue.PairExample(str(i), i, r['text'], r.get('text_b'), None)
            for i, r in enumerate(rows)]
  if task.kind == 'span':
    out = []
    for i, r in enumerate(rows):
      words, _ = squad._split_words(r['context'])  # pylint: disable=protected-access
      out.append(squad.SquadExample(str(i), r['question'], tuple(words), (), None, None, None))
    return out
  return [chunking.ChunkExample(str(i), tuple(r['tokens']), ('',) * len(r['tokens']),
                                ('O',) * len(r['tokens'])) for i, r in enumerate(rows)]


# ----------------------------------------------------------------------------- the model


class Predictor:
  """A saved fine-tuned model, ready to predict: Predictor(path)(rows) -> output dicts."""

  def __init__(self, path, batch_size: int = 64, progress: bool = False,
               length_buckets: int = 4):

    self.saved = finetuned.load(path)
    info = self.saved.task
    self.task = registry.get_task(info['name'], **info['settings'])
    self.kind = self.task.kind
    self.tokenizer = tok_lib.WordPieceTokenizer.from_vocab(self.saved.vocab,
                                                           lowercase=self.saved.lowercase)
    model_cfg = electra.ModelConfig.from_config(self.saved.model_config)
    model = heads.FinetuneModel(model_cfg, heads.HeadConfig(**self.saved.head))
    self.mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    shards = self.mesh.shape['data'] * self.mesh.shape['fsdp']
    if batch_size < 1 or batch_size % shards:
      raise ValueError(f'--batch_size={batch_size}; expected a positive multiple of the '
                       f'{shards} devices')
    self.batch_size = batch_size
    self.progress = progress
    self.buckets = task_base.bucket_lengths(self.saved.seq_len, length_buckets)
    self.params = jax.device_put(self.saved.params, sharding.replicated(self.mesh))
    self._predict_fn = state_lib.jit(functools.partial(loop.predict_step, model=model),
                                     self.mesh, ('replicated', 'batch'), 'batch')

  def __call__(self, rows: list[dict]) -> list[dict]:
    if not rows:
      return []
    feats = self.task.featurize(examples(self.task, rows), self.tokenizer, self.saved.seq_len,
                                False)
    out = inference.predict(self._predict_fn, self.params, feats, self.batch_size, self.mesh,
                        progress=self.progress, buckets=self.buckets)
    return self._format(out, feats)

  def _format(self, out: dict, feats) -> list[dict]:
    task = self.task
    if self.kind == 'classification':
      logits = np.asarray(out['logits'], np.float64)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      labels = task.label_list
      return [{'label': labels[int(p.argmax())],
               'probabilities': {l: round(float(x), 6) for l, x in zip(labels, p)}}
              for p in probs]
    if self.kind == 'regression':
      return [{'score': float(s)} for s in np.asarray(out['predictions'])]
    if self.kind == 'span':
      _, na_scores, nbest = task.postprocess(feats, out)
      threshold = task.na_threshold(out)
      rows = []
      for ex in feats.examples:
        best = nbest[ex.qas_id][0]
        row = {'answer': best['text'], 'probability': round(best['probability'], 6),
               'start_logit': best['start_logit'], 'end_logit': best['end_logit']}
        if ex.qas_id in na_scores:  # SQuAD 2.0
          na = float(na_scores[ex.qas_id])
          row.update(span=best['text'], no_answer_score=na)
          if na > threshold:
            row['answer'] = ''
        rows.append(row)
      return rows
    tags = task.word_predictions(out['logits'], feats)
    return [{'tokens': list(ex.words), 'tags': t} for ex, t in zip(feats.examples, tags)]


def predict_file(model: str, input_path: str, output_path: str, fmt: str = 'auto',
                 batch_size: int = 64, progress: bool = False, length_buckets: int = 4) -> int:
  """Predicts every row of `input_path` into `output_path`; returns the number of rows.

  A malformed row raises ValueError (naming its line) after the rows before it are written.
  """
  predictor = Predictor(model, batch_size, progress, length_buckets)
  rows, bad = read_rows(input_path, predictor.kind, fmt)
  results = predictor(rows)
  out = Path(output_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, 'w', encoding='utf-8') as f:
    for r in results:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')
  if bad is not None:
    raise ValueError(f'{bad} ({len(rows)} rows before it predicted into {output_path})')
  return len(rows)


def main(argv):
  cli.no_positional(argv)
  cli.require(model=FLAGS.model, input=FLAGS.input, output=FLAGS.output)
  n = predict_file(FLAGS.model, FLAGS.input, FLAGS.output, FLAGS.format, FLAGS.batch_size,
                   FLAGS.progress, FLAGS.length_buckets)
  print(f'wrote {n} predictions to {FLAGS.output}', flush=True)


def run():
  """The console script (see pyproject.toml)."""
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
