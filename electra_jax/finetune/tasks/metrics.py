"""Evaluation metrics for fine-tuning: sklearn / scipy where they have the metric, no JAX.

Classification / regression metrics take 1-D arrays of equal length `[N]`.
Chunking takes lists of per-sentence tag sequences (BIO / IOB1 tags).
SQuAD metrics follow the official evaluate-v1.1 / evaluate-v2.0 scripts exactly
(normalisation, max over gold answers, empty-answer handling, best-threshold search).

All scores are returned as plain floats on the [0, 1] scale except the SQuAD ones,
which are percentages (0-100) as the official scripts report them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np


def _as_1d_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  if y_true.ndim != 1 or y_pred.shape != y_true.shape:
    raise ValueError(f'expected two 1-D arrays of equal length, got shapes {y_true.shape} and '
                     f'{y_pred.shape}')
  if y_true.size == 0:
    raise ValueError('expected at least one prediction, got 0')
  return y_true, y_pred


# --------------------------------------------------------------------------- classification


def accuracy(y_true, y_pred) -> float:
  """Fraction of positions where `y_pred == y_true`; both `[N]`."""
  y_true, y_pred = _as_1d_pair(y_true, y_pred)
  return float(np.mean(y_true == y_pred))


def f1_binary(y_true, y_pred, positive: int = 1) -> float:
  """F1 of the `positive` class (sklearn's `f1_score(average='binary')`, 0.0 when undefined)."""
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  y_true, y_pred = _as_1d_pair(y_true, y_pred)
  return float(skm.f1_score(y_true == positive, y_pred == positive, zero_division=0.0))


def matthews_corrcoef(y_true, y_pred) -> float:
  """Matthews correlation for any number of classes (sklearn's, Gorodkin's R_K).

  Returns 0.0 when it is undefined (a constant prediction or constant truth).
  """
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  y_true, y_pred = _as_1d_pair(y_true, y_pred)
  if len(np.unique(y_true)) < 2 or len(np.unique(y_pred)) < 2:
    return 0.0
  return float(skm.matthews_corrcoef(y_true, y_pred))


# --------------------------------------------------------------------------- regression


def _constant(a: np.ndarray) -> bool:
  return bool(np.all(a == a[0]))


def pearson(x, y) -> float:
  """Pearson correlation of two `[N]` float arrays (scipy's; 0.0 if either is constant)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = _as_1d_pair(x, y)
  if len(x) < 2 or _constant(x) or _constant(y):
    return 0.0
  return float(stats.pearsonr(x.astype(np.float64), y.astype(np.float64))[0])


def spearman(x, y) -> float:
  """Spearman rank correlation (scipy's: ties get their average rank; 0.0 if either is constant)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = _as_1d_pair(x, y)
  if len(x) < 2 or _constant(x) or _constant(y):
    return 0.0
  return float(stats.spearmanr(x, y)[0])


# --------------------------------------------------------------------------- chunking


def get_chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """Chunks `(type, start, end_inclusive)` from one BIO/IOB1 tag sequence, conlleval-style.

  A chunk starts at `B-X`, at `I-X` after a tag of another type or after `O`, and ends
  before `O`, before any `B-`, or before an `I-` of another type (conlleval's
  startOfChunk/endOfChunk rules, so `I-` without `B-` still opens a chunk).
  """
  chunks = []
  cur_type, cur_start = None, None
  for i, tag in enumerate(list(tags) + ['O']):
    if tag == 'O':
      prefix, ctype = 'O', None
    elif len(tag) > 2 and tag[1] == '-' and tag[0] in 'BIES':
      prefix, ctype = tag[0], tag[2:]
    else:
      raise ValueError(f'expected a tag like B-NP, I-NP or O, got {tag!r} at position {i}')
    # Close the open chunk if this tag does not continue it.
    if cur_type is not None and (prefix in ('O', 'B', 'S') or ctype != cur_type):
      chunks.append((cur_type, cur_start, i - 1))
      cur_type = None
    if prefix != 'O' and cur_type is None:
      cur_type, cur_start = ctype, i
    if prefix in ('E', 'S') and cur_type is not None:
      chunks.append((cur_type, cur_start, i))
      cur_type = None
  return chunks


def chunk_f1(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> dict[str, float]:
  """Micro span precision/recall/F1 over sentences of tags (conlleval's overall numbers).

  A predicted chunk is correct when type, start and end all match a gold chunk.
  Returns {'precision', 'recall', 'f1'} on the [0, 1] scale.
  """
  n_gold = n_pred = n_correct = 0
  for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
    if len(g) != len(p):
      raise ValueError(f'sentence {i}: expected {len(g)} predicted tags, got {len(p)}')
    gc, pc = set(get_chunks(g)), set(get_chunks(p))
    n_gold += len(gc)
    n_pred += len(pc)
    n_correct += len(gc & pc)
  precision = n_correct / n_pred if n_pred else 0.0
  recall = n_correct / n_gold if n_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'precision': precision, 'recall': recall, 'f1': f1}


# --------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r'\b(a|an|the)\b', re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Official SQuAD normalisation: lower, drop punctuation, drop a/an/the, collapse spaces."""
  s = s.lower()
  s = ''.join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(' ', s)
  return ' '.join(s.split())


def _answer_tokens(s: str) -> list[str]:
  return normalize_answer(s).split() if s else []


def squad_exact(gold: str, pred: str) -> int:
  return int(normalize_answer(gold) == normalize_answer(pred))


def squad_f1(gold: str, pred: str) -> float:
  """Token-overlap F1 of the official v2.0 script (1.0 iff both empty when either is empty)."""
  gold_toks, pred_toks = _answer_tokens(gold), _answer_tokens(pred)
  if not gold_toks or not pred_toks:
    return float(gold_toks == pred_toks)
  num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_toks)
  recall = num_same / len(gold_toks)
  return 2 * precision * recall / (precision + recall)


def squad_v1_evaluate(gold_answers: Mapping[str, Sequence[str]], preds: Mapping[str, str]
                      ) -> dict[str, float]:
  """The official evaluate-v1.1.py: EM / F1 (percent) max over gold answers.

  Differs from v2.0 only for gold answers that normalise to '' (e.g. 'The'): v1.1 keeps
  them and its F1 is 0 whenever no token is shared, even for two empty answers. Returns
  {'exact' (the script's 'exact_match'), 'f1', 'total'}; a missing prediction is an error.
  """
  def f1(gold, pred):
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
      return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)

  exact = f1_sum = 0.0
  for qid, answers in gold_answers.items():
    if qid not in preds:
      raise ValueError(f'missing prediction for question id {qid!r}')
    if not answers:
      raise ValueError(f'question {qid!r} has no gold answer (SQuAD 1.1 needs one)')
    pred = preds[qid]
    exact += max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
    f1_sum += max(f1(a, pred) for a in answers)
  n = len(gold_answers)
  return {'exact': 100.0 * exact / n, 'f1': 100.0 * f1_sum / n, 'total': float(n)}


def squad_raw_scores(gold_answers: Mapping[str, Sequence[str]], preds: Mapping[str, str]
                     ) -> tuple[dict[str, float], dict[str, float]]:
  """Per-question EM and F1 (0/1 and [0,1]), max over gold answers.

  gold_answers: qid -> list of gold answer texts; an empty list (or only answers that
    normalise to '') marks an unanswerable question whose only correct answer is ''.
  preds: qid -> predicted text ('' = no answer). A question without a prediction is an error
    here (the official script prints and skips it, which silently inflates scores).
  """
  exact, f1 = {}, {}
  for qid, answers in gold_answers.items():
    if qid not in preds:
      raise ValueError(f'missing prediction for question id {qid!r}')
    golds = [a for a in answers if normalize_answer(a)] or ['']
    pred = preds[qid]
    exact[qid] = float(max(squad_exact(a, pred) for a in golds))
    f1[qid] = max(squad_f1(a, pred) for a in golds)
  return exact, f1


def apply_no_answer_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float],
                              has_answer: Mapping[str, bool], thresh: float) -> dict[str, float]:
  """Scores after predicting '' wherever na_prob > thresh (official apply_no_ans_threshold)."""
  return {qid: (float(not has_answer[qid]) if na_probs[qid] > thresh else s)
          for qid, s in scores.items()}


def find_best_thresh(preds: Mapping[str, str], scores: Mapping[str, float],
                     na_probs: Mapping[str, float], has_answer: Mapping[str, bool]
                     ) -> tuple[float, float]:
  """Best score (percent) and the na_prob threshold reaching it: the official v2.0 search.

  Starts from 'every question answered with ""' and walks the questions in increasing
  na_prob, switching each to its predicted text; keeps the first threshold with the best
  total. Questions not in `scores` are skipped, as in the official script.
  """
  cur_score = sum(1 for k in has_answer if not has_answer[k])
  best_score, best_thresh = cur_score, 0.0
  for qid in sorted(na_probs, key=lambda k: na_probs[k]):
    if qid not in scores:
      continue
    if has_answer[qid]:
      diff = scores[qid]
    else:
      diff = -1 if preds[qid] else 0
    cur_score += diff
    if cur_score > best_score:
      best_score, best_thresh = cur_score, na_probs[qid]
  return 100.0 * best_score / len(scores), best_thresh


def squad_evaluate(gold_answers: Mapping[str, Sequence[str]], preds: Mapping[str, str],
                   na_probs: Mapping[str, float] | None = None,
                   na_prob_thresh: float = 1.0) -> dict[str, float]:
  """The official evaluate-v2.0.py (use squad_v1_evaluate for SQuAD 1.1).

  Returns percentages: 'exact', 'f1', 'total', 'HasAns_exact'/'HasAns_f1'/'HasAns_total',
  'NoAns_*' when unanswerable questions exist, and with `na_probs` also 'best_exact',
  'best_exact_thresh', 'best_f1', 'best_f1_thresh' (the threshold chosen on this set).
  """
  # Official make_qid_to_has_ans uses bool(qa['answers']): an empty list means unanswerable.
  has_answer = {qid: bool(ans) for qid, ans in gold_answers.items()}
  exact_raw, f1_raw = squad_raw_scores(gold_answers, preds)
  probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
  exact_t = apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
  f1_t = apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)

  def summary(qids):
    n = len(qids)
    return (100.0 * sum(exact_t[q] for q in qids) / n, 100.0 * sum(f1_t[q] for q in qids) / n, n)

  out = {}
  out['exact'], out['f1'], out['total'] = summary(list(exact_t))
  for name, want in (('HasAns', True), ('NoAns', False)):
    qids = [q for q, v in has_answer.items() if v == want]
    if qids:
      out[f'{name}_exact'], out[f'{name}_f1'], out[f'{name}_total'] = summary(qids)
  if na_probs is not None:
    out['best_exact'], out['best_exact_thresh'] = find_best_thresh(preds, exact_raw, na_probs,
                                                                   has_answer)
    out['best_f1'], out['best_f1_thresh'] = find_best_thresh(preds, f1_raw, na_probs, has_answer)
  return {k: float(v) for k, v in out.items()}
