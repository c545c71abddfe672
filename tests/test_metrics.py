"""electra_jax.finetune.tasks.metrics against scikit-learn / scipy and hand-computed SQuAD / chunking cases."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from electra_jax.finetune.tasks import metrics


@pytest.mark.parametrize('seed', range(5))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  n, k = 200 + seed * 37, 2 + seed % 3
  y_true = rng.integers(0, k, n)
  y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
  assert metrics.accuracy(y_true, y_pred) == pytest.approx(
      sklearn.metrics.accuracy_score(y_true, y_pred))
  assert metrics.matthews_corrcoef(y_true, y_pred) == pytest.approx(
      sklearn.metrics.matthews_corrcoef(y_true, y_pred))
  yb_true, yb_pred = (y_true > 0).astype(int), (y_pred > 0).astype(int)
  assert metrics.f1_binary(yb_true, yb_pred) == pytest.approx(
      sklearn.metrics.f1_score(yb_true, yb_pred))
  assert metrics.matthews_corrcoef(yb_true, yb_pred) == pytest.approx(
      sklearn.metrics.matthews_corrcoef(yb_true, yb_pred))


def test_degenerate_classification_cases():
  # Constant prediction: MCC undefined -> 0 (sklearn agrees); no positives -> F1 0.
  y = np.array([0, 1, 1, 0])
  assert metrics.matthews_corrcoef(y, np.zeros(4, int)) == 0.0
  assert sklearn.metrics.matthews_corrcoef(y, np.zeros(4, int)) == 0.0
  assert metrics.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0
  with pytest.raises(ValueError, match='equal length'):
    metrics.accuracy([1, 2], [1])


@pytest.mark.parametrize('seed', range(5))
def test_correlations_match_scipy(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=150)
  y = 0.5 * x + rng.normal(size=150)
  if seed % 2:  # STS-B-like scores with many ties exercise average ranks.
    x, y = np.round(x * 2) / 2, np.round(y * 2) / 2
  assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
  assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])


def test_chunks_conlleval_rules():
  tags = ['B-NP', 'I-NP', 'O', 'I-VP', 'I-VP', 'B-NP', 'B-NP', 'I-PP', 'I-NP']
  assert metrics.get_chunks(tags) == [('NP', 0, 1), ('VP', 3, 4), ('NP', 5, 5), ('NP', 6, 6),
                                      ('PP', 7, 7), ('NP', 8, 8)]
  with pytest.raises(ValueError, match='BX'):
    metrics.get_chunks(['BX'])


def test_chunk_f1_hand_made():
  gold = [['B-NP', 'I-NP', 'B-VP', 'B-NP', 'O'], ['B-PP', 'B-NP', 'I-NP']]
  pred = [['B-NP', 'I-NP', 'B-VP', 'I-VP', 'O'], ['B-PP', 'B-NP', 'O']]
  # gold chunks: NP(0,1) VP(2) NP(3) | PP(0) NP(1,2) -> 5
  # pred chunks: NP(0,1) VP(2,3)     | PP(0) NP(1)   -> 4; correct: NP(0,1), PP(0) -> 2
  r = metrics.chunk_f1(gold, pred)
  assert r['precision'] == pytest.approx(2 / 4)
  assert r['recall'] == pytest.approx(2 / 5)
  assert r['f1'] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
  assert metrics.chunk_f1(gold, gold)['f1'] == 1.0
  with pytest.raises(ValueError, match='sentence 0'):
    metrics.chunk_f1([['O', 'O']], [['O']])


def test_squad_normalisation():
  assert metrics.normalize_answer('  The  Quick, brown-fox! an apple ') == 'quick brownfox apple'
  assert metrics.normalize_answer('Theater of the absurd') == 'theater of absurd'
  assert metrics.normalize_answer('A.') == ''


def test_squad_em_f1_hand_computed():
  assert metrics.squad_exact('the Denver Broncos', 'Denver Broncos!') == 1
  assert metrics.squad_exact('Denver Broncos', 'Broncos') == 0
  # gold [denver, broncos], pred [broncos, won]: 1 common; p = r = 1/2.
  assert metrics.squad_f1('Denver Broncos', 'the Broncos won') == pytest.approx(0.5)
  # Repeated tokens count with multiplicity (Counter intersection): p = 2/3, r = 1.
  assert metrics.squad_f1('a b b', 'b b c') == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
  assert metrics.squad_f1('', '') == 1.0 and metrics.squad_f1('x', '') == 0.0
  gold = {'q1': ['Denver Broncos', 'The Broncos'], 'q2': ['1,000 feet', 'one thousand feet']}
  preds = {'q1': 'broncos', 'q2': '1000 feet tall'}
  r = metrics.squad_evaluate(gold, preds)
  # q1: EM 1 (vs 'The Broncos'). q2: EM 0; F1 max(gold '1000 feet': p 2/3 r 1 -> 0.8, 'one
  # thousand feet': p 1/3 r 1/3 -> 1/3) = 0.8.
  assert r['exact'] == pytest.approx(50.0)
  assert r['f1'] == pytest.approx(100 * (1 + 0.8) / 2)
  assert 'NoAns_total' not in r
  with pytest.raises(ValueError, match="'q2'"):
    metrics.squad_evaluate(gold, {'q1': 'x'})


def test_squad_v2_unanswerable_and_best_threshold():
  gold = {'q1': ['Denver Broncos'], 'q2': ['Paris'], 'q3': [], 'q4': []}
  preds = {'q1': 'the Denver Broncos', 'q2': 'in Paris', 'q3': 'something', 'q4': 'x'}
  na = {'q1': 0.1, 'q2': 0.6, 'q3': 0.7, 'q4': 0.9}
  r = metrics.squad_evaluate(gold, preds, na_probs=na)  # default threshold 1.0: nothing nulled
  assert r['exact'] == pytest.approx(25.0)
  assert r['f1'] == pytest.approx(100 * (1 + 2 / 3) / 4)
  assert r['HasAns_exact'] == pytest.approx(50.0) and r['NoAns_exact'] == 0.0
  assert r['HasAns_total'] == 2 and r['NoAns_total'] == 2
  # Walk in na order starting from 2 (all-empty): EM 2 ->3 (q1) ->3 ->2 ->1: best 3 at 0.1.
  assert r['best_exact'] == pytest.approx(75.0) and r['best_exact_thresh'] == 0.1
  # F1: 2 -> 3 -> 3.667 (q2, 0.6) -> 2.667 -> 1.667.
  assert r['best_f1'] == pytest.approx(100 * (3 + 2 / 3) / 4) and r['best_f1_thresh'] == 0.6
  # Applying the chosen threshold reproduces the best score.
  r2 = metrics.squad_evaluate(gold, preds, na_probs=na, na_prob_thresh=0.6)
  assert r2['f1'] == pytest.approx(r['best_f1'])
  # An empty prediction on an unanswerable question is right.
  assert metrics.squad_evaluate({'q': []}, {'q': ''})['exact'] == 100.0


def test_squad_v1_script_semantics():
  gold = {'q1': ['Denver Broncos', 'The Broncos'], 'q2': ['1,000 feet', 'one thousand feet']}
  preds = {'q1': 'broncos', 'q2': '1000 feet tall'}
  r = metrics.squad_v1_evaluate(gold, preds)
  assert r == {'exact': 50.0, 'f1': pytest.approx(100 * 1.8 / 2), 'total': 2.0}
  # A gold answer that normalises to '': v1.1 gives EM 1 but F1 0 to an empty prediction
  # (no shared token); v2.0 drops that gold answer and scores '' vs '' as 1.
  assert metrics.squad_v1_evaluate({'q': ['The']}, {'q': ''}) == {'exact': 100.0, 'f1': 0.0,
                                                                   'total': 1.0}
  assert metrics.squad_evaluate({'q': ['The']}, {'q': ''})['f1'] == 100.0
  with pytest.raises(ValueError, match="'q' has no gold answer"):
    metrics.squad_v1_evaluate({'q': []}, {'q': ''})
