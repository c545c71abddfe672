"""SQuAD 1.1 / 2.0: JSON and TFDS readers, doc-stride featurization, n-best post-processing
(independent start / end logits, or the joint head's beam) and the official EM/F1 (v2:
no-answer threshold chosen on the evaluated set).

Follows google-research/electra finetune/qa/{qa_tasks,qa_metrics}.py: contexts are split on
whitespace into words, each word is tokenized separately (tok_to_orig_index /
orig_to_tok_index), the answer span is improved to match the tokenized answer, long
contexts become overlapping windows of max_seq_length with stride doc_stride, and every
window token records whether the window is its "max context" one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from electra_jax.finetune.tasks import metrics
from electra_jax.finetune.tasks import base

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SquadExample:
  """One question. doc_tokens: whitespace words of the context (shared by its questions).
  start/end_position: word indices of the first gold answer (None when it has none or its
  text cannot be recovered from the context; -1 for unanswerable v2 questions)."""
  qas_id: str
  question_text: str
  doc_tokens: tuple[str, ...]
  answers: tuple[str, ...]
  orig_answer_text: str | None
  start_position: int | None
  end_position: int | None
  is_impossible: bool = False


def _is_whitespace(c: str) -> bool:
  return c in ' \t\r\n' or ord(c) == 0x202F


def _split_words(text: str) -> tuple[list[str], list[int]]:
  """Whitespace words of `text` and char_to_word_offset [len(text)]."""
  words, char_to_word, prev_ws = [], [], True
  for c in text:
    if _is_whitespace(c):
      prev_ws = True
    else:
      if prev_ws:
        words.append(c)
      else:
        words[-1] += c
      prev_ws = False
    char_to_word.append(len(words) - 1)
  return words, char_to_word


def _examples_from_paragraph(context: str, qas: Sequence[Mapping], v2: bool, where: str,
                             failures: list[int], words_cache: dict) -> list[SquadExample]:
  if context not in words_cache:
    words, char_to_word = _split_words(context)
    words_cache[context] = (tuple(words), char_to_word)
  doc_tokens, char_to_word = words_cache[context]
  out = []
  for k, qa in enumerate(qas):
    rec = f'{where}.qas[{k}]'
    try:
      qid, question, answers = str(qa['id']), qa['question'], qa['answers']
      answer_texts = tuple(a['text'] for a in answers)
      starts = [a['answer_start'] for a in answers]
    except (KeyError, TypeError) as e:
      raise ValueError(f'{rec}: malformed record, missing or bad key {e}') from None
    if not all(isinstance(s, int) for s in starts):
      raise ValueError(f'{rec} (id {qid}): answer_start must be integers, got {starts}')
    impossible = bool(qa.get('is_impossible', False)) if v2 else False
    start = end = orig = None
    if impossible:
      start, end, orig = -1, -1, ''
    elif answers:
      orig, offset = answer_texts[0], starts[0]
      last = offset + len(orig) - 1
      if 0 <= offset and last < len(char_to_word) and orig:
        s, e = char_to_word[offset], char_to_word[last]
        # Keep the position only if the answer text is recoverable from the words (official).
        actual = ' '.join(doc_tokens[s:e + 1]).lower()
        if actual.find(' '.join(orig.split()).lower()) != -1:
          start, end = s, e
      if start is None:
        failures[0] += 1
    out.append(SquadExample(qid, question, doc_tokens, answer_texts, orig, start, end,
                            impossible))
  return out


def _load_json(path: Path) -> list[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}') from None
  if not isinstance(data, dict) or not isinstance(data.get('data'), list):
    raise ValueError(f"{path}: expected an object with a 'data' list of articles")
  return data['data']


def _examples_from_articles(articles: Sequence[Any], v2: bool, path: Path, indices=None
                            ) -> list[SquadExample]:
  examples, failures, cache = [], [0], {}
  for i in (range(len(articles)) if indices is None else indices):
    article = articles[i]
    try:
      paragraphs = article['paragraphs']
    except (KeyError, TypeError):
      raise ValueError(f"{path}: record data[{i}]: malformed article, no 'paragraphs'") from None
    for j, p in enumerate(paragraphs):
      where = f'{path}: record data[{i}].paragraphs[{j}]'
      if not isinstance(p, dict) or not isinstance(p.get('context'), str) \
          or not isinstance(p.get('qas'), list):
        raise ValueError(f"{where}: malformed paragraph, expected 'context' str and 'qas' list")
      examples.extend(_examples_from_paragraph(p['context'], p['qas'], v2, where, failures,
                                               cache))
  if failures[0]:
    log.warning('%s: %d answers not recoverable from the context (skipped in training)', path,
                failures[0])
  return examples


def read_squad_json(path: str | Path, version: int) -> list[SquadExample]:
  """All questions of a SQuAD v1.1/v2.0 JSON file, in file order."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'no SQuAD file at {path}')
  return _examples_from_articles(_load_json(path), version == 2, path)


def split_squad_by_article(path: str | Path, eval_fraction: float, seed: int, version: int = 1
                           ) -> tuple[list[SquadExample], list[SquadExample]]:
  """Deterministic split of a SQuAD file's articles into (train, eval) examples.

  round(eval_fraction * num_articles) articles (at least 1) chosen by a permutation seeded
  with `seed` go to eval, the rest to train; both keep file order. Questions of one article
  never appear on both sides (used to train on part of dev-v1.1 and evaluate on the rest).
  """
  path = Path(path)
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f'eval_fraction must be in (0, 1), got {eval_fraction}')
  articles = _load_json(path)
  n = len(articles)
  n_eval = max(1, int(round(eval_fraction * n)))
  if n_eval >= n:
    raise ValueError(f'{path}: {n} articles, cannot hold out {n_eval} for eval')
  eval_ids = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
  train_idx = [i for i in range(n) if i not in eval_ids]
  titles = [articles[i].get('title', str(i)) for i in sorted(eval_ids)]
  log.info('%s: %d train articles, %d eval articles (%s)', path, len(train_idx), n_eval, titles)
  return (_examples_from_articles(articles, version == 2, path, train_idx),
          _examples_from_articles(articles, version == 2, path, sorted(eval_ids)))


# --------------------------------------------------------------------------- featurization


def _check_is_max_context(doc_spans: Sequence[tuple[int, int]], cur: int, position: int) -> bool:
  """Whether window `cur` gives `position` the most context (min of left/right, official)."""
  best_score, best_index = None, None
  for index, (start, length) in enumerate(doc_spans):
    end = start + length - 1
    if position < start or position > end:
      continue
    score = min(position - start, end - position) + 0.01 * length
    if best_score is None or score > best_score:
      best_score, best_index = score, index
  return cur == best_index


def _improve_answer_span(doc_ids: Sequence[int], start: int, end: int,
                         answer_ids: Sequence[int]) -> tuple[int, int]:
  """Tightest sub-span of [start, end] whose sub-tokens equal the tokenized answer."""
  answer_ids = list(answer_ids)
  for new_start in range(start, end + 1):
    for new_end in range(end, new_start - 1, -1):
      if list(doc_ids[new_start:new_end + 1]) == answer_ids:
        return new_start, new_end
  return start, end


def _token_strings(tokenizer, ids: Sequence[int]) -> list[str] | None:
  if isinstance(getattr(tokenizer, 'tokens', None), (list, tuple)):
    return [tokenizer.tokens[int(i)] for i in ids]
  if hasattr(tokenizer, 'id_to_token'):
    return [tokenizer.id_to_token(int(i)) for i in ids]
  if hasattr(tokenizer, 'convert_ids_to_tokens'):
    return list(tokenizer.convert_ids_to_tokens([int(i) for i in ids]))
  return None


# --------------------------------------------------------------------------- answer text


def _is_punctuation(c: str) -> bool:
  cp = ord(c)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(c).startswith('P')


def _basic_tokenize(text: str, lowercase: bool) -> list[str]:
  """BERT BasicTokenizer: whitespace split, lowercase + strip accents, split punctuation."""
  out = []
  for word in text.split():
    if lowercase:
      word = ''.join(c for c in unicodedata.normalize('NFD', word.lower())
                     if unicodedata.category(c) != 'Mn')
    cur = ''
    for c in word:
      if _is_punctuation(c):
        if cur:
          out.append(cur)
        out.append(c)
        cur = ''
      else:
        cur += c
    if cur:
      out.append(cur)
  return out


def get_final_text(pred_text: str, orig_text: str, lowercase: bool) -> str:
  """Projects the detokenized prediction back onto the original words (official heuristic);
  returns orig_text whenever the character alignment fails."""
  def strip_spaces(text):
    ns_chars, ns_to_s = [], {}
    for i, c in enumerate(text):
      if c != ' ':
        ns_to_s[len(ns_chars)] = i
        ns_chars.append(c)
    return ''.join(ns_chars), ns_to_s

  tok_text = ' '.join(_basic_tokenize(orig_text, lowercase))
  start = tok_text.find(pred_text)
  if start == -1:
    return orig_text
  end = start + len(pred_text) - 1
  orig_ns, orig_ns_to_s = strip_spaces(orig_text)
  tok_ns, tok_ns_to_s = strip_spaces(tok_text)
  if len(orig_ns) != len(tok_ns):
    return orig_text
  tok_s_to_ns = {s: ns for ns, s in tok_ns_to_s.items()}
  if start not in tok_s_to_ns or end not in tok_s_to_ns:
    return orig_text
  o_start = orig_ns_to_s.get(tok_s_to_ns[start])
  o_end = orig_ns_to_s.get(tok_s_to_ns[end])
  if o_start is None or o_end is None:
    return orig_text
  return orig_text[o_start:o_end + 1]


# --------------------------------------------------------------------------- the task


@dataclasses.dataclass
class SquadTask:
  """SQuAD 1.1 (version=1) or 2.0 (version=2). See registry.py for the interface."""
  version: int = 1
  doc_stride: int = 128
  max_query_length: int = 64
  n_best_size: int = 20
  max_answer_length: int = 30
  # SQuAD 2.0: a question gets no answer ('') when its null score (na_scores of
  # postprocess) is above this (used by electra_jax.predict). None = by the head: the
  # official qa_na_threshold -2.75 with the answerability classifier, 0.0 (BERT's
  # null_score_diff_threshold) without.
  qa_na_threshold: float | None = None
  # For the '*_from_dev' splits: article-level split of dev (train-v1.1.json is not local).
  split_eval_fraction: float = 0.2
  split_seed: int = 0
  kind: str = 'span'
  num_labels: int = 1
  label_list: tuple = ()
  epochs: int = 2
  eval_splits: tuple[str, ...] = ('dev',)

  @property
  def name(self) -> str:
    return f'squad{self.version}'

  @property
  def main_metric(self) -> str:
    return 'f1' if self.version == 1 else 'best_f1'

  def json_path(self, split: str, data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if data_dir.suffix == '.json':
      return data_dir
    return data_dir / f'{split}-v{"1.1" if self.version == 1 else "2.0"}.json'

  def load_examples(self, source: str, split: str, data_dir) -> list[SquadExample]:
    """source 'json': data_dir is a folder with {train,dev}-v{1.1,2.0}.json (or a .json
    file); split 'train_from_dev' / 'eval_from_dev' give split_squad_by_article of the dev
    file. source 'tfds': squad/v1.1 or squad/v2.0 from the TFDS data_dir (no download)."""
    if source == 'json':
      if split in ('train_from_dev', 'eval_from_dev'):
        train, ev = split_squad_by_article(self.json_path('dev', data_dir),
                                           self.split_eval_fraction, self.split_seed,
                                           self.version)
        return train if split == 'train_from_dev' else ev
      if split not in ('train', 'dev'):
        raise ValueError(f"{self.name}: unknown split {split!r}, expected 'train', 'dev', "
                         f"'train_from_dev' or 'eval_from_dev'")
      return read_squad_json(self.json_path(split, data_dir), self.version)
    if source == 'tfds':
      return self._load_tfds(split, data_dir)
    raise ValueError(f"unknown source {source!r}, expected 'json' or 'tfds'")

  def _load_tfds(self, split: str, data_dir) -> list[SquadExample]:
    import tensorflow_datasets as tfds  # Heavy import, only for this source.
    name = f'squad/v{"1.1" if self.version == 1 else "2.0"}'
    tfds_split = {'train': 'train', 'dev': 'validation'}.get(split)
    if tfds_split is None:
      raise ValueError(f"{self.name}: unknown TFDS split {split!r}, expected 'train' or 'dev'")
    try:
      ds = tfds.load(name, split=tfds_split, data_dir=str(data_dir) if data_dir else None,
                     download=False, shuffle_files=False)
    except Exception as e:  # TFDS raises several types when the data is absent.
      raise FileNotFoundError(f'TFDS dataset {name} split {tfds_split} not found in data_dir '
                              f'{data_dir} (download=False): {str(e).splitlines()[0]}') from None
    examples, failures, cache = [], [0], {}
    for n, rec in enumerate(tfds.as_numpy(ds)):
      answers = rec['answers']
      qa = {'id': rec['id'].decode('utf-8'), 'question': rec['question'].decode('utf-8'),
            'answers': [{'text': t.decode('utf-8'), 'answer_start': int(s)}
                        for t, s in zip(answers['text'], answers['answer_start'])]}
      if 'is_impossible' in rec:
        qa['is_impossible'] = bool(rec['is_impossible'])
      examples.extend(_examples_from_paragraph(rec['context'].decode('utf-8'), [qa],
                                               self.version == 2, f'{name}[{n}]', failures,
                                               cache))
    return examples

  def featurize(self, examples: Sequence[SquadExample], tokenizer: base.Tokenizer,
                max_seq_length: int, train: bool) -> base.Features:
    """Windows of [CLS] question [SEP] context-window [SEP].

    arrays (N windows): input_ids/input_mask/segment_ids [N, L] int32; start_positions,
    end_positions [N] int32 (0 = [CLS] when the answer is not in the window or the question
    is unanswerable); is_impossible [N] int32; example_index [N] int32.
    meta[n]: doc_start (first context sub-token of the window), doc_offset (its position
    in the window), token_to_orig_map {window pos -> word index}, token_is_max_context
    {window pos -> bool}, tokens (sub-token strings, or None without id_to_token).
    In training, answerable examples whose answer text is not recoverable are skipped
    (as the official code does). num_truncated counts questions cut to max_query_length.
    """
    docs = {id(ex.doc_tokens): ex.doc_tokens for ex in examples}.values()  # Shared per context.
    word_cache = base.encode_many(tokenizer, (w for doc in docs for w in doc))
    query_ids = base.encode_many(tokenizer, (ex.question_text for ex in examples))
    doc_cache: dict[int, tuple] = {}
    rows, meta, kept = [], [], []
    num_truncated = skipped = multi_window = 0
    lowercase = bool(getattr(tokenizer, 'lowercase', True))
    for ex in examples:
      if train and not ex.is_impossible and ex.start_position is None:
        skipped += 1
        continue
      ex_index = len(kept)
      kept.append(ex)
      query = list(query_ids[ex.question_text])
      if len(query) > self.max_query_length:
        num_truncated += 1
        query = query[:self.max_query_length]
      key = id(ex.doc_tokens)
      if key not in doc_cache:
        tok_to_orig, orig_to_tok, doc_ids = [], [], []
        for i, word in enumerate(ex.doc_tokens):
          orig_to_tok.append(len(doc_ids))
          for t in word_cache[word]:
            tok_to_orig.append(i)
            doc_ids.append(t)
        doc_cache[key] = (ex.doc_tokens, tok_to_orig, orig_to_tok, doc_ids)
      _, tok_to_orig, orig_to_tok, doc_ids = doc_cache[key]

      tok_start = tok_end = None
      if train and not ex.is_impossible:
        tok_start = orig_to_tok[ex.start_position]
        if ex.end_position < len(ex.doc_tokens) - 1:
          tok_end = orig_to_tok[ex.end_position + 1] - 1
        else:
          tok_end = len(doc_ids) - 1
        tok_start, tok_end = _improve_answer_span(doc_ids, tok_start, tok_end,
                                                  tokenizer.encode(ex.orig_answer_text))

      max_tokens_for_doc = max_seq_length - len(query) - 3  # [CLS], [SEP], [SEP]
      if max_tokens_for_doc <= 0:
        raise ValueError(f'max_seq_length={max_seq_length} leaves no room for the context '
                         f'after a {len(query)}-token question (max_query_length='
                         f'{self.max_query_length})')
      doc_spans, offset = [], 0
      while offset < len(doc_ids):
        length = min(len(doc_ids) - offset, max_tokens_for_doc)
        doc_spans.append((offset, length))
        if offset + length == len(doc_ids):
          break
        offset += min(length, self.doc_stride)
      if not doc_spans:  # Empty context: one window with no context tokens.
        doc_spans.append((0, 0))
      multi_window += len(doc_spans) > 1

      for span_index, (d_start, d_len) in enumerate(doc_spans):
        ids = [tokenizer.cls_id] + query + [tokenizer.sep_id]
        seg = [0] * len(ids)
        token_to_orig, is_max = {}, {}
        for i in range(d_len):
          pos = d_start + i
          token_to_orig[len(ids)] = tok_to_orig[pos]
          is_max[len(ids)] = _check_is_max_context(doc_spans, span_index, pos)
          ids.append(doc_ids[pos])
          seg.append(1)
        ids.append(tokenizer.sep_id)
        seg.append(1)
        start_pos = end_pos = 0
        if train and not ex.is_impossible:
          if d_start <= tok_start and tok_end <= d_start + d_len - 1:
            start_pos = tok_start - d_start + len(query) + 2
            end_pos = tok_end - d_start + len(query) + 2
        input_ids, input_mask, segment_ids = base.pad_row(ids, seg, tokenizer.pad_id,
                                                          max_seq_length)
        rows.append(dict(input_ids=input_ids, input_mask=input_mask, segment_ids=segment_ids,
                         start_positions=start_pos, end_positions=end_pos,
                         is_impossible=int(ex.is_impossible), example_index=ex_index))
        meta.append(dict(doc_start=d_start, doc_offset=len(query) + 2,
                         token_to_orig_map=token_to_orig, token_is_max_context=is_max,
                         tokens=_token_strings(tokenizer, ids), lowercase=lowercase))
    if skipped:
      log.warning('%s: skipped %d training questions whose answer is not in the context',
                  self.name, skipped)
    log.info('%s: %d questions -> %d windows (%d with >1 window); %d questions truncated to '
             'max_query_length=%d', self.name, len(kept), len(rows), multi_window,
             num_truncated, self.max_query_length)
    arrays = base.stack_rows(rows, {k: np.int32 for k in rows[0]} if rows else {})
    return base.Features(arrays, kept, num_truncated, meta)

  # ------------------------------------------------------------------------- predictions

  def postprocess(self, features: base.Features, outputs: Mapping[str, Any]
                  ) -> tuple[dict[str, str], dict[str, float], dict]:
    """Model outputs -> answers, as the official SpanBasedQAScorer.write_predictions.

    outputs (per window, N windows), one of
      independent head: start_logits, end_logits [N, L];
      joint head: start_top_log_probs, start_top_index [N, K], end_top_log_probs,
        end_top_index [N, K, K] (the beam: K starts, K ends for each), null_log_prob [N];
    and optionally answerable_logits [N] (v2 answerability classifier, trained with
    target is_impossible, so higher = less answerable).
    Candidate spans: independent, every pair of the n_best_size best starts and ends;
    joint, the beam's (start, end) pairs, scored by log p(start) + log p(end | start).
    Spans must start and end in the context, start in a window where the start token has
    its max context, end >= start and be at most max_answer_length tokens long.
    Returns (predictions qid -> text, na_scores qid -> float (v2 only; higher = more
    likely unanswerable), nbest qid -> list of {text, probability, start_logit, end_logit
    (joint: the start / end log-probabilities), feature_index, start_index, end_index
    (the window and its token positions; absent from the 'empty' nonce entry)}).
    For v2 the prediction is the best non-null answer; na_scores decide '' against a
    threshold (na_threshold). The null score of a question is its minimum over windows
    of: the answerability logit, or else [CLS]'s start + end logits (independent) or
    null_log_prob (joint), minus (without the classifier) the best non-null span's score.
    """
    joint = 'start_top_index' in outputs
    n = len(features)
    if joint:  # The beam: each row's K starts, each with K ends.
      s_top = np.asarray(outputs['start_top_log_probs'], np.float64)
      s_idx = np.asarray(outputs['start_top_index'])
      e_top = np.asarray(outputs['end_top_log_probs'], np.float64)
      e_idx = np.asarray(outputs['end_top_index'])
      k = s_idx.shape[1] if s_idx.ndim == 2 else -1
      if s_idx.shape != (n, k) or e_idx.shape != (n, k, k) or s_top.shape != s_idx.shape \
          or e_top.shape != e_idx.shape:
        raise ValueError(f'{self.name}: expected joint beam outputs [{n}, K] and [{n}, K, K], '
                         f'got {s_idx.shape} and {e_idx.shape}')
      null_scores = np.asarray(outputs['null_log_prob'], np.float64)
    else:
      start_logits = np.asarray(outputs['start_logits'], np.float64)
      end_logits = np.asarray(outputs['end_logits'], np.float64)
      if start_logits.shape[0] != n or end_logits.shape != start_logits.shape:
        raise ValueError(f'{self.name}: expected start/end logits [{n}, L], got '
                         f'{start_logits.shape} and {end_logits.shape}')
      null_scores = start_logits[:, 0] + end_logits[:, 0]
    answerable_logits = outputs.get('answerable_logits')
    if answerable_logits is not None:
      null_scores = np.asarray(answerable_logits, np.float64)
    by_example = collections.defaultdict(list)
    for f_index, e_index in enumerate(features.arrays['example_index']):
      by_example[int(e_index)].append(f_index)
    predictions, na_scores, all_nbest = {}, {}, {}
    for e_index, ex in enumerate(features.examples):
      prelim, score_null = [], float('inf')
      for f_index in by_example[e_index]:
        m = features.meta[f_index]
        if self.version == 2:
          score_null = min(score_null, float(null_scores[f_index]))
        if joint:
          pairs = ((int(s_idx[f_index, i]), int(e_idx[f_index, i, j]), s_top[f_index, i],
                    e_top[f_index, i, j]) for i in range(k) for j in range(k))
        else:
          s_log, e_log = start_logits[f_index], end_logits[f_index]
          starts = np.argsort(-s_log, kind='stable')[:self.n_best_size]
          ends = np.argsort(-e_log, kind='stable')[:self.n_best_size]
          pairs = ((int(s), int(e), s_log[s], e_log[e]) for s in starts for e in ends)
        for s, e, sl, el in pairs:
          if s == 0 or s not in m['token_to_orig_map'] or e not in m['token_to_orig_map']:
            continue
          if not m['token_is_max_context'].get(s, False):
            continue
          if e < s or e - s + 1 > self.max_answer_length:
            continue
          prelim.append((sl + el, f_index, s, e, sl, el))
      prelim.sort(key=lambda x: x[0], reverse=True)  # Stable: ties keep official order.
      nbest, seen = [], set()
      for _, f_index, s, e, sl, el in prelim:
        if len(nbest) >= self.n_best_size:
          break
        text = self._span_text(ex, features.meta[f_index], s, e)
        if text in seen:
          continue
        seen.add(text)
        nbest.append({'text': text, 'start_logit': float(sl), 'end_logit': float(el),
                      'feature_index': f_index, 'start_index': s, 'end_index': e})
      if not nbest:  # No valid span at all: the official nonce prediction.
        nbest.append({'text': 'empty', 'start_logit': 0.0, 'end_logit': 0.0})
      totals = np.array([x['start_logit'] + x['end_logit'] for x in nbest])
      probs = np.exp(totals - totals.max())
      probs /= probs.sum()
      for x, p in zip(nbest, probs):
        x['probability'] = float(p)
      best_non_null = next((x for x in nbest if x['text']), nbest[0])
      predictions[ex.qas_id] = best_non_null['text'] if self.version == 2 else nbest[0]['text']
      if self.version == 2:
        na_scores[ex.qas_id] = (score_null if answerable_logits is not None else score_null -
                                best_non_null['start_logit'] - best_non_null['end_logit'])
      all_nbest[ex.qas_id] = nbest
    return predictions, na_scores, all_nbest

  def na_threshold(self, outputs: Mapping[str, Any]) -> float:
    """The null-score threshold for these outputs: qa_na_threshold, or by default the
    official -2.75 with an answerability classifier and 0.0 without."""
    if self.qa_na_threshold is not None:
      return float(self.qa_na_threshold)
    return -2.75 if outputs.get('answerable_logits') is not None else 0.0

  @staticmethod
  def _span_text(ex: SquadExample, m: dict, s: int, e: int) -> str:
    orig_text = ' '.join(ex.doc_tokens[m['token_to_orig_map'][s]:m['token_to_orig_map'][e] + 1])
    if m['tokens'] is None:  # No sub-token strings: answer snaps to whole words.
      return orig_text
    tok_text = ' '.join(m['tokens'][s:e + 1]).replace(' ##', '').replace('##', '')
    tok_text = ' '.join(tok_text.strip().split())
    return get_final_text(tok_text, orig_text, m['lowercase'])

  def compute_metrics(self, predictions: Mapping[str, np.ndarray], features: base.Features
                      ) -> dict[str, float]:
    """predictions: the model's outputs for the N windows of `features` (see
    postprocess). Returns the official exact/f1 (percent; v1.1 or v2.0 script); v2 adds
    HasAns_*/NoAns_* and best_exact/best_f1 with their thresholds chosen on this set
    (main: best_f1)."""
    preds, na_scores, _ = self.postprocess(features, predictions)
    gold = {ex.qas_id: ([] if ex.is_impossible else list(ex.answers))
            for ex in features.examples}
    if self.version == 1:
      return metrics.squad_v1_evaluate(gold, preds)
    return metrics.squad_evaluate(gold, preds, na_scores)
