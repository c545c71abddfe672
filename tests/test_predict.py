"""electra_jax.predict: a saved fine-tuned model on new rows of every task kind."""

import dataclasses
import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import finetune as finetune_config
from electra_jax import predict
from electra_jax.data import tokenizer as tok_lib
from electra_jax.finetune import loop
from electra_jax.io import finetuned
from electra_jax.io import weights
from electra_jax.models import electra
from runtime_util import REPO, env
from test_finetune import VOCAB

SEQ_LEN = 32
ENCODER = ('embeddings', 'discriminator')


def saved_model(root, task_name, form='official', seed=0, **head):
  """A randomly initialised tiny model of `task_name`, saved as fine-tuning saves it.
  head: config.head overrides (qa_joint=False, ...)."""
  c = finetune_config.get_config(f'task={task_name},size=tiny')
  c.model.update(dict(vocab_size=len(VOCAB), embedding_size=16, hidden_size=32, num_layers=1,
                      num_heads=2, intermediate_size=64, max_position_embeddings=64))
  c.head.form = form
  c.head.update(head)
  c.train.seq_len = SEQ_LEN
  c.task.update(dict(max_query_length=8, doc_stride=8))
  task = loop.build_task(c)
  model = loop.build_model(electra.ModelConfig.from_config(dict(c.model)), task, c)
  params = nn.meta.unbox(loop._init_params(model, SEQ_LEN, jax.random.key(seed)))
  # Larger head weights than the init's, so the probabilities are far from uniform.
  params = {k: jax.tree.map(lambda x: np.asarray(x) * (1 if k in ENCODER else 20), v)
            for k, v in params.items()}
  tok = tok_lib.WordPieceTokenizer(VOCAB)
  loop.save_model(root, params, dict(c.model), model, task, c, tok, 7)
  return root / 'model', model, params, tok


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_saved_model_holds_everything(tmp_path):
  path, _, params, _ = saved_model(tmp_path, 'mrpc')
  m = finetuned.load(path)
  assert m.task['label_list'] == ['0', '1'] and m.task['kind'] == 'classification'
  assert m.head['kind'] == 'classification' and m.seq_len == SEQ_LEN and m.step == 7
  assert m.vocab.read_text().split('\n')[:len(VOCAB)] == VOCAB
  np.testing.assert_array_equal(m.params['classifier']['dense']['kernel'],
                                params['classifier']['dense']['kernel'])
  enc = weights.load(path)  # a fine-tuned model can start another fine-tuning
  assert set(enc.params) == {'embeddings', 'discriminator'}


def test_classification_tsv_and_jsonl_match_the_model(tmp_path):
  path, model, params, tok = saved_model(tmp_path, 'mrpc')
  rows = [('the cat sat on the mat', 'a dog ran far'), ('good', 'bad'),
          ('red house', 'big blue car near the tree')]
  (tmp_path / 'in.tsv').write_text(''.join(f'{a}\t{b}\n' for a, b in rows))
  (tmp_path / 'in.jsonl').write_text(''.join(json.dumps({'text': a, 'text_b': b}) + '\n'
                                             for a, b in rows))
  assert predict.predict_file(path, tmp_path / 'in.tsv', tmp_path / 'a.jsonl', batch_size=8) == 3
  predict.predict_file(path, tmp_path / 'in.jsonl', tmp_path / 'b.jsonl', batch_size=8)
  got = _lines(tmp_path / 'a.jsonl')
  assert got == _lines(tmp_path / 'b.jsonl')
  # The same rows through the model directly.
  from electra_jax.finetune.tasks import base
  want = []
  for a, b in rows:
    ids, mask, seg, _ = base.pack_pair(tok.encode(a), tok.encode(b), tok, SEQ_LEN)
    logits = model.apply({'params': params}, ids[None], mask[None], seg[None], True)['logits']
    want.append(np.asarray(jax.nn.softmax(logits[0])))
  for g, w in zip(got, want):
    p = np.asarray([g['probabilities']['0'], g['probabilities']['1']])
    np.testing.assert_allclose(p, w, atol=2e-6)
    assert g['label'] == str(int(w.argmax()))
  assert len({g['label'] for g in got}) >= 1 and abs(p[0] - 0.5) > 1e-3


def test_regression_span_and_tagging_rows(tmp_path):
  path, *_ = saved_model(tmp_path / 'stsb', 'stsb')
  (tmp_path / 'in.tsv').write_text('the cat\tthe dog\nred car\tblue car\n')
  predict.predict_file(path, tmp_path / 'in.tsv', tmp_path / 'out.jsonl', batch_size=8)
  assert [set(r) for r in _lines(tmp_path / 'out.jsonl')] == [{'score'}] * 2

  path, *_ = saved_model(tmp_path / 'squad', 'squad1')
  context = 'the cat sat on the mat near the big red house and the dog ran far'
  (tmp_path / 'q.jsonl').write_text(json.dumps({'question': 'what is code ?',
                                                'context': context}) + '\n')
  predict.predict_file(path, tmp_path / 'q.jsonl', tmp_path / 'a.jsonl', batch_size=8)
  (ans,) = _lines(tmp_path / 'a.jsonl')
  assert ans['answer'] and ans['answer'] in context and 0 < ans['probability'] <= 1

  path, *_ = saved_model(tmp_path / 'chunk', 'chunk')
  (tmp_path / 't.tsv').write_text('he saw an apple\nshe ate the big pear quickly\n')
  predict.predict_file(path, tmp_path / 't.tsv', tmp_path / 't.jsonl', batch_size=8)
  out = _lines(tmp_path / 't.jsonl')
  labels = finetuned.load(path).task['label_list']
  assert [r['tokens'] for r in out] == [['he', 'saw', 'an', 'apple'],
                                        ['she', 'ate', 'the', 'big', 'pear', 'quickly']]
  assert all(len(r['tags']) == len(r['tokens']) and set(r['tags']) <= set(labels) for r in out)


def test_squad2_rows_no_answer_by_threshold(tmp_path):
  """SQuAD 2.0 (the defaults: joint head, answerability classifier): each row has the best
  span and its null score; the answer is '' exactly when the score is above the saved
  model's threshold (None: the official -2.75)."""
  path, *_ = saved_model(tmp_path / 'squad2', 'squad2')
  context = 'the cat sat on the mat near the big red house and the dog ran far'
  rows = [{'question': q, 'context': context} for q in ('what is code ?', 'what ran far ?')]
  cfg_file = path / 'model_config.json'
  cfg = json.loads(cfg_file.read_text())
  assert cfg['head']['joint'] and cfg['head']['answerability']
  assert cfg['task']['settings']['qa_na_threshold'] is None
  cfg['task']['settings']['qa_na_threshold'] = 1e9  # read back from the saved model
  cfg_file.write_text(json.dumps(cfg))
  predictor = predict.Predictor(path, batch_size=8)
  assert predictor.task.qa_na_threshold == 1e9
  for threshold in (1e9, -1e9, None):
    predictor.task = dataclasses.replace(predictor.task, qa_na_threshold=threshold)
    out = predictor(rows)
    assert len(out) == 2
    for r in out:
      assert set(r) == {'answer', 'span', 'probability', 'start_logit', 'end_logit',
                        'no_answer_score'}
      assert r['span'] and r['span'] in context
      assert r['start_logit'] <= 0 and r['end_logit'] <= 0  # joint: log-probabilities
      limit = -2.75 if threshold is None else threshold
      assert r['answer'] == ('' if r['no_answer_score'] > limit else r['span'])
    if threshold is not None:
      assert all((r['answer'] == '') == (threshold < 0) for r in out)


@pytest.mark.parametrize('line,expected', [
    ('{"text": ', 'not a JSON object'),
    ('{"text_b": "a dog"}', '"text" must be a non-empty string'),
    ('["the cat"]', 'expected a JSON object'),
])
def test_malformed_jsonl_row_names_its_line(tmp_path, line, expected):
  path, *_ = saved_model(tmp_path, 'sst2')
  inp = tmp_path / 'in.jsonl'
  inp.write_text('{"text": "the cat"}\n\n{"text": "a dog"}\n' + line + '\n{"text": "red"}\n')
  with pytest.raises(ValueError, match=f'in.jsonl:4: {expected}') as e:
    predict.predict_file(path, inp, tmp_path / 'out.jsonl', batch_size=8)
  assert '2 rows before it predicted' in str(e.value)
  assert len(_lines(tmp_path / 'out.jsonl')) == 2


def test_program_one_line_error_keeps_rows_before(tmp_path):
  path, *_ = saved_model(tmp_path, 'mrpc')
  inp = tmp_path / 'in.tsv'
  inp.write_text('the cat\tthe dog\nred\tblue\tgreen\n')
  out = tmp_path / 'out.jsonl'
  r = subprocess.run([sys.executable, '-m', 'electra_jax.predict', f'--model={path}',
                      f'--input={inp}', f'--output={out}', '--batch_size=8', '--noprogress'],
                     cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f'error: {inp}:2: 3 tab-separated columns; expected text or text<TAB>text_b (1 rows '
      f'before it predicted into {out})')
  assert len(_lines(out)) == 1
