"""SQuAD reader, doc-stride featurization, post-processing and official metrics."""

import collections
import json
import re

import numpy as np
import pytest

from electra_jax.finetune.tasks import metrics
from electra_jax.finetune.tasks import registry, squad

import conftest

DATA = conftest.DATA_ROOT  # ELECTRA_JAX_DATA


class FakeWordPiece:
  """Lowercases, splits punctuation, and splits '-ing' words into stem + '##ing'."""
  pad_id, cls_id, sep_id, unk_id = 0, 1, 2, 3
  lowercase = True

  def __init__(self, with_strings=True):
    self.vocab = {'[PAD]': 0, '[CLS]': 1, '[SEP]': 2, '[UNK]': 3}
    if with_strings:
      self.id_to_token = lambda i: {v: k for k, v in self.vocab.items()}[i]

  def encode(self, text):
    pieces = []
    for w in re.findall(r'\w+|[^\w\s]', text.lower()):
      pieces += [w[:-3], '##ing'] if w.endswith('ing') and len(w) > 4 else [w]
    return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]


CONTEXT_1 = ('The leader was John Smith (1895-1943). He liked playing chess in the park '
             'every single day of the week with his old friends from the village.')
CONTEXT_2 = 'Paris is the capital of France. Berlin is the capital of Germany.'


def _squad_json(v2=False):
  def ans(ctx, text, nth=0):
    start = -1
    for _ in range(nth + 1):
      start = ctx.index(text, start + 1)
    return {'text': text, 'answer_start': start}

  qas1 = [{'id': 'q1', 'question': 'What year was John Smith born?',
           'answers': [ans(CONTEXT_1, '1895')]},
          {'id': 'q2', 'question': 'What did he like to do?',
           'answers': [ans(CONTEXT_1, 'play'), ans(CONTEXT_1, 'playing chess')]},
          {'id': 'q3', 'question': 'Where did his friends come from?',
           'answers': [ans(CONTEXT_1, 'the village')]}]
  qas2 = [{'id': 'q4', 'question': 'What is the capital of Germany?',
           'answers': [ans(CONTEXT_2, 'Berlin')]}]
  if v2:
    for q in qas1 + qas2:
      q['is_impossible'] = False
    qas2.append({'id': 'q5', 'question': 'What is the capital of Spain?', 'answers': [],
                 'plausible_answers': [ans(CONTEXT_2, 'Paris')], 'is_impossible': True})
  return {'version': '2.0' if v2 else '1.1',
          'data': [{'title': 'A', 'paragraphs': [{'context': CONTEXT_1, 'qas': qas1}]},
                   {'title': 'B', 'paragraphs': [{'context': CONTEXT_2, 'qas': qas2}]}]}


def _perfect_logits(train_feats, n_windows, length):
  """Logits peaking at the training targets; [CLS] wins in windows without the answer."""
  start = np.full((n_windows, length), -10.0)
  end = np.full((n_windows, length), -10.0)
  rows = np.arange(n_windows)
  start[rows, train_feats.arrays['start_positions']] = 10.0
  end[rows, train_feats.arrays['end_positions']] = 10.0
  return start, end


@pytest.mark.parametrize('with_strings', [True, False])
def test_featurize_then_perfect_logits_give_em_100(tmp_path, with_strings):
  path = tmp_path / 'dev-v1.1.json'
  path.write_text(json.dumps(_squad_json()))
  task = registry.get_task('squad1.1')
  task.doc_stride, task.max_query_length = 6, 8
  exs = task.load_examples('json', 'dev', tmp_path)
  assert [e.qas_id for e in exs] == ['q1', 'q2', 'q3', 'q4']
  tok = FakeWordPiece(with_strings)
  L = 24
  train = task.featurize(exs, tok, L, train=True)
  ev = task.featurize(exs, tok, L, train=False)
  assert len(train) == len(ev) > 4  # Long context: several windows per question.
  assert train.arrays['input_ids'].shape == (len(ev), L)
  assert np.array_equal(train.arrays['input_ids'], ev.arrays['input_ids'])
  assert ev.num_truncated == 0
  # Each context sub-token is the max-context token of exactly one window.
  for e_index in range(4):
    counts = collections.Counter()
    for w in np.flatnonzero(ev.arrays['example_index'] == e_index):
      m = ev.meta[w]
      for pos, is_max in m['token_is_max_context'].items():
        counts[m['doc_start'] + pos - m['doc_offset']] += is_max
    n_doc = len(tok.encode(' '.join(exs[e_index].doc_tokens)))
    assert sorted(counts) == list(range(n_doc)) and set(counts.values()) == {1}
  start, end = _perfect_logits(train, len(ev), L)
  preds, _, nbest = task.postprocess(ev, {'start_logits': start, 'end_logits': end})
  if with_strings:
    # Improved span + get_final_text cut inside whitespace words, keeping original case.
    assert preds == {'q1': '1895', 'q2': 'play', 'q3': 'the village', 'q4': 'Berlin'}
  else:
    assert preds == {'q1': '(1895-1943).', 'q2': 'playing', 'q3': 'the village.',
                     'q4': 'Berlin'}
  assert nbest['q1'][0]['probability'] > 0.9
  m = task.compute_metrics({'start_logits': start, 'end_logits': end}, ev)
  if with_strings:
    assert m['exact'] == 100.0 and m['f1'] == 100.0
  else:  # Whole words: q1 '(1895-1943).' -> '18951943' (0); q2 'playing' vs
    # 'playing chess' -> EM 0, F1 2/3; q3, q4 right.
    assert m['exact'] == pytest.approx(50.0)
    assert m['f1'] == pytest.approx(100 * (2 / 3 + 2) / 4)


def test_training_positions_and_query_truncation(tmp_path):
  path = tmp_path / 'train-v1.1.json'
  path.write_text(json.dumps(_squad_json()))
  task = squad.SquadTask(version=1, doc_stride=128, max_query_length=3)
  exs = task.load_examples('json', 'train', tmp_path)
  tok = FakeWordPiece()
  f = task.featurize(exs, tok, 64, train=True)
  assert f.num_truncated == 4 and len(f) == 4  # Every question > 3 tokens; one window each.
  inv = {v: k for k, v in tok.vocab.items()}
  got = [' '.join(inv[i] for i in f.arrays['input_ids'][n, s:e + 1])
         for n, (s, e) in enumerate(zip(f.arrays['start_positions'], f.arrays['end_positions']))]
  assert got == ['1895', 'play', 'the village', 'berlin']
  assert (f.arrays['segment_ids'][0, :5] == 0).all() and f.arrays['segment_ids'][0, 5] == 1


def test_v2_unanswerable_threshold(tmp_path):
  (tmp_path / 'dev-v2.0.json').write_text(json.dumps(_squad_json(v2=True)))
  task = registry.get_task('squad2')
  exs = task.load_examples('json', 'dev', tmp_path)
  assert [e.is_impossible for e in exs] == [False] * 4 + [True]
  tok = FakeWordPiece()
  train = task.featurize(exs, tok, 64, train=True)
  ev = task.featurize(exs, tok, 64, train=False)
  assert train.arrays['is_impossible'].tolist() == [0, 0, 0, 0, 1]
  assert train.arrays['start_positions'][4] == 0
  start, end = _perfect_logits(train, len(ev), 64)
  # Answerability logit (target is_impossible): high for q5 only.
  answerable = np.where(train.arrays['is_impossible'] == 1, 0.5, -3.0)
  m = task.compute_metrics({'start_logits': start, 'end_logits': end,
                            'answerable_logits': answerable}, ev)
  # At the default threshold (1.0) nothing is nulled: q5 gets a span -> 4/5 exact.
  assert m['exact'] == pytest.approx(80.0) and m['NoAns_exact'] == 0.0
  # The threshold chosen on this set nulls q5 only.
  assert m['best_exact'] == 100.0 and m['best_f1'] == 100.0
  assert m['best_f1_thresh'] == -3.0
  assert task.main_metric == 'best_f1'
  # Without a classifier the null score is start[0]+end[0] minus the best span score.
  _, na, _ = task.postprocess(ev, {'start_logits': start, 'end_logits': end})
  assert na['q5'] > 0 > na['q1']


def test_malformed_json_and_records(tmp_path):
  bad = tmp_path / 'dev-v1.1.json'
  bad.write_text('{"data": [\n  {"paragraphs": [}\n]}')
  with pytest.raises(ValueError, match=r'dev-v1.1.json:2:\d+: invalid JSON'):
    registry.get_task('squad1').load_examples('json', 'dev', tmp_path)
  data = _squad_json()
  del data['data'][0]['paragraphs'][0]['qas'][1]['question']
  bad.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"dev-v1.1.json: record data\[0\].paragraphs\[0\]"
                                       r".qas\[1\]: malformed record.*'question'"):
    registry.get_task('squad1').load_examples('json', 'dev', tmp_path)
  with pytest.raises(FileNotFoundError, match='no SQuAD file'):
    registry.get_task('squad1').load_examples('json', 'train', tmp_path)


def test_split_by_article_is_deterministic_and_disjoint(tmp_path):
  path = tmp_path / 'dev-v1.1.json'
  data = _squad_json()
  data['data'] = data['data'] * 5  # 10 articles
  for i, a in enumerate(data['data']):
    a = json.loads(json.dumps(a))
    for p in a['paragraphs']:
      for q in p['qas']:
        q['id'] = f'{i}-{q["id"]}'
    data['data'][i] = a
  path.write_text(json.dumps(data))
  tr, ev = squad.split_squad_by_article(path, 0.3, seed=1)
  tr2, ev2 = squad.split_squad_by_article(path, 0.3, seed=1)
  assert [e.qas_id for e in tr] == [e.qas_id for e in tr2]
  arts = lambda xs: {e.qas_id.split('-')[0] for e in xs}
  assert len(arts(ev)) == 3 and len(arts(tr)) == 7 and not arts(ev) & arts(tr)
  assert len(tr) + len(ev) == 20
  eval_sets = {frozenset(arts(squad.split_squad_by_article(path, 0.3, seed=s)[1]))
               for s in range(6)}
  assert len(eval_sets) > 1  # The seed matters.


@pytest.mark.skipif(not (DATA / 'squad' / 'dev-v1.1.json').exists(), reason='no SQuAD dev')
def test_real_dev_file():
  path = DATA / 'squad' / 'dev-v1.1.json'
  exs = squad.read_squad_json(path, 1)
  assert len(exs) == 10570
  assert sum(len(e.answers) for e in exs) == 34726
  assert sum(e.start_position is None for e in exs) < 10  # answers recoverable
  tr, ev = squad.split_squad_by_article(path, 0.2, seed=0)
  assert len(tr) + len(ev) == 10570 and not {e.qas_id for e in tr} & {e.qas_id for e in ev}
  assert 1000 < len(ev) < 4000


def test_json_and_local_tfds_give_identical_examples(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  for version, v2 in (('1.1', False), ('2.0', True)):
    data = _squad_json(v2=v2)
    (tmp_path / f'dev-v{version}.json').write_text(json.dumps(data))
    feats = {'id': tfds.features.Text(), 'title': tfds.features.Text(),
             'context': tfds.features.Text(), 'question': tfds.features.Text(),
             'answers': tfds.features.Sequence({'text': tfds.features.Text(),
                                                'answer_start': np.int32})}
    if v2:
      feats['is_impossible'] = np.bool_
    rows = []
    for article in data['data']:
      for p in article['paragraphs']:
        for q in p['qas']:
          row = {'id': q['id'], 'title': article['title'], 'context': p['context'],
                 'question': q['question'],
                 'answers': {'text': [a['text'] for a in q['answers']],
                             'answer_start': [a['answer_start'] for a in q['answers']]}}
          if v2:
            row['is_impossible'] = q['is_impossible']
          rows.append(row)
    tfds.dataset_builders.store_as_tfds_dataset(
        name='squad', version='3.0.0', config=f'v{version}', data_dir=str(tmp_path / 'tfds'),
        features=tfds.features.FeaturesDict(feats), split_datasets={'validation':
                                                                     list(enumerate(rows))})
    task = registry.get_task(f'squad{version}')
    from_json = task.load_examples('json', 'dev', tmp_path)
    from_tfds = task.load_examples('tfds', 'dev', tmp_path / 'tfds')
    # TFDS shuffles records when it writes them; compare per question id.
    assert len(from_json) == len(from_tfds) == len(rows)
    assert {e.qas_id: e for e in from_json} == {e.qas_id: e for e in from_tfds}
  with pytest.raises(FileNotFoundError, match='TFDS dataset squad/v1.1 split train not found'):
    registry.get_task('squad1').load_examples('tfds', 'train', tmp_path / 'tfds')


@pytest.mark.skipif(not (DATA / 'squad' / 'dev-v1.1.json').exists()
                    or not (DATA / 'vocab' / 'bert-base-uncased-vocab.txt').exists(),
                    reason='no SQuAD dev or BERT vocab')
def test_real_wordpiece_round_trip():
  """Real WordPiece on 3 real articles: training targets used as logits give back the gold
  answers except where a gold answer is a part of one word piece (e.g. '8' in '20–18')."""
  tokenizer = pytest.importorskip('electra_jax.data.tokenizer')
  tok = tokenizer.WordPieceTokenizer.from_vocab(DATA / 'vocab' / 'bert-base-uncased-vocab.txt')
  path = DATA / 'squad' / 'dev-v1.1.json'
  articles = squad._load_json(path)[:3]
  exs = squad._examples_from_articles(articles, False, path)
  task = squad.SquadTask(version=1, doc_stride=64)
  train = task.featurize(exs, tok, 128, train=True)
  ev = task.featurize(exs, tok, 128, train=False)
  assert len(train) == len(ev) > len(exs)  # 128 tokens: many multi-window contexts
  start, end = _perfect_logits(train, len(ev), 128)
  m = task.compute_metrics({'start_logits': start, 'end_logits': end}, ev)
  assert m['exact'] > 98.0 and m['f1'] > 98.5
  preds, _, _ = task.postprocess(ev, {'start_logits': start, 'end_logits': end})
  misses = [(ex.orig_answer_text, preds[ex.qas_id]) for ex in exs
            if not any(metrics.squad_exact(a, preds[ex.qas_id]) for a in ex.answers)]
  # Every miss is a gold answer inside a single word ('8' in '20–18', 'gold' in '"golden').
  assert all(gold.lower().strip('.') in pred.lower() and ' ' not in pred
             for gold, pred in misses), misses


# --------------------------------------------------------------------------- the joint head


def _joint_model_outputs(ev, beam_sizes, answerable=True, seed=0):
  """A random tiny joint-head model (head weights x20, far from uniform) on the windows of
  `ev`: (its beam outputs for each of beam_sizes, the teacher-forced end logits
  [N, start, L] for every start position). One compiled call for all."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from electra_jax.models import electra, heads
  cfg = electra.ModelConfig(vocab_size=int(ev.arrays['input_ids'].max()) + 1,
                            embedding_size=16, hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
  models = [heads.FinetuneModel(cfg, heads.HeadConfig('span', 1, answerability=answerable,
                                                      joint=True, beam_size=k))
            for k in beam_sizes]  # the same parameters: the beam is not one
  x = [jnp.asarray(ev.arrays[k]) for k in ('input_ids', 'input_mask', 'segment_ids')]
  n, length = x[0].shape

  @jax.jit
  def run(key):
    params = nn.meta.unbox(models[0].init(key, *x, True)['params'])
    params = {k: jax.tree.map(lambda w: w * (1 if k in ('embeddings', 'discriminator') else 20),
                              v) for k, v in params.items()}
    outs = [m.apply({'params': params}, *x, True) for m in models]
    forced = jax.lax.map(lambda s: models[0].apply(
        {'params': params}, *x, True, jnp.full(n, s, jnp.int32))['end_logits'],
                         jnp.arange(length))
    return outs, jnp.swapaxes(forced, 0, 1)

  outs, forced = run(jax.random.key(seed))
  return [{k: np.asarray(v) for k, v in o.items()} for o in outs], np.asarray(forced, np.float64)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(
      -1, keepdims=True))


def _valid(ev, f, s, e, max_answer_length):
  m = ev.meta[f]
  return (s != 0 and s in m['token_to_orig_map'] and e in m['token_to_orig_map']
          and m['token_is_max_context'].get(s, False) and s <= e < s + max_answer_length)


def test_joint_beam_decoding_matches_brute_force(tmp_path):
  """Beam K >= L covers every start and end: the decoded best span of each question is the
  argmax of log p(s) + log p(e | s) over every valid (window, s, e), p(e | s) computed by
  the teacher-forced training path; every n-best span is valid, also with a small beam."""
  (tmp_path / 'dev-v2.0.json').write_text(json.dumps(_squad_json(v2=True)))
  task = squad.SquadTask(version=2, doc_stride=6, max_query_length=8, max_answer_length=3)
  exs = task.load_examples('json', 'dev', tmp_path)
  L = 24
  ev = task.featurize(exs, FakeWordPiece(), L, train=False)
  assert len(ev) > len(exs)  # several windows per long context
  (out, small), forced_end = _joint_model_outputs(ev, beam_sizes=(L, 3))
  assert out['start_top_index'].shape == (len(ev), L)
  assert out['end_top_index'].shape == (len(ev), L, L)
  start_lp = _log_softmax(out['start_logits'])
  end_lp = _log_softmax(forced_end)  # [N, s, e]
  _, na, nbest = task.postprocess(ev, out)
  for e_index, ex in enumerate(ev.examples):
    brute = max((start_lp[f, s] + end_lp[f, s, e], f, s, e)
                for f in np.flatnonzero(ev.arrays['example_index'] == e_index)
                for s in range(L) for e in range(L) if _valid(ev, f, s, e, 3))
    best = nbest[ex.qas_id][0]
    assert (best['feature_index'], best['start_index'], best['end_index']) == brute[1:]
    assert best['start_logit'] + best['end_logit'] == pytest.approx(brute[0], abs=1e-4)
    # SQuAD 2.0 with the classifier: the null score is the minimum answerability logit.
    windows = ev.arrays['example_index'] == e_index
    assert na[ex.qas_id] == pytest.approx(out['answerable_logits'][windows].min())

  for entries in task.postprocess(ev, small)[2].values():
    for x in entries:
      if x['text'] != 'empty':
        assert _valid(ev, x['feature_index'], x['start_index'], x['end_index'], 3), x
        assert 1 <= len(x['text'].split()) <= 3


def test_joint_null_score_and_threshold(tmp_path):
  """Synthetic beam outputs: q5 (unanswerable) gets no answer from the classifier or,
  without it, from null_log_prob against the best span; the threshold defaults by head."""
  (tmp_path / 'dev-v2.0.json').write_text(json.dumps(_squad_json(v2=True)))
  task = registry.get_task('squad2')
  exs = task.load_examples('json', 'dev', tmp_path)
  train = task.featurize(exs, FakeWordPiece(), 64, train=True)
  ev = task.featurize(exs, FakeWordPiece(), 64, train=False)
  n, k = len(ev), 2
  gold_s, gold_e = train.arrays['start_positions'], train.arrays['end_positions']
  # Beam: the gold start first (log p -0.1) with its gold end (-0.2), then a worse span.
  out = {'start_top_log_probs': np.tile([-0.1, -3.0], (n, 1)),
         'start_top_index': np.stack([gold_s, gold_s], 1),
         'end_top_log_probs': np.tile([[-0.2, -4.0], [-0.5, -6.0]], (n, 1, 1)),
         'end_top_index': np.stack([np.stack([gold_e, gold_e + 1], 1)] * k, 1),
         'null_log_prob': np.where(train.arrays['is_impossible'] == 1, -0.01, -9.0)}
  impossible = train.arrays['is_impossible'] == 1
  out['start_top_index'][impossible] = [10, 11]  # q5: some context span
  out['end_top_index'][impossible] = [[10, 11], [11, 12]]
  preds, na, nbest = task.postprocess(ev, out)
  assert {q: p for q, p in preds.items() if q != 'q5'} == {
      'q1': '1895', 'q2': 'play', 'q3': 'the village', 'q4': 'Berlin'}
  assert nbest['q1'][0]['start_logit'] == -0.1 and nbest['q1'][0]['end_logit'] == -0.2
  # Without a classifier: null_log_prob minus the best span's log-probability.
  assert na['q1'] == pytest.approx(-9.0 + 0.3) and na['q5'] == pytest.approx(-0.01 + 0.3)
  assert task.na_threshold(out) == 0.0
  m = task.compute_metrics(out, ev)
  assert m['best_exact'] == 100.0 and m['NoAns_total'] == 1
  # With the classifier its logit is the null score, against the official -2.75.
  out['answerable_logits'] = np.where(impossible, 1.5, -5.0)
  _, na, _ = task.postprocess(ev, out)
  assert na == {'q1': -5.0, 'q2': -5.0, 'q3': -5.0, 'q4': -5.0, 'q5': 1.5}
  assert task.na_threshold(out) == -2.75
  assert registry.get_task('squad2', qa_na_threshold=0.5).na_threshold(out) == 0.5
