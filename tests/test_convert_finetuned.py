"""A fine-tuned model dir -> the Hugging Face task class, exactly (random tiny models)."""

import json

import numpy as np
import pytest

from electra_jax.io import convert
from test_predict import saved_model
from test_finetune import VOCAB

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Three rows of different lengths: a padded batch ([PAD] = 0, mask 0, segment 0).
LENGTHS = (32, 17, 5)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(LENGTHS), 32), np.int32)
  mask, seg = np.zeros_like(ids), np.zeros_like(ids)
  for r, n in enumerate(LENGTHS):
    ids[r, :n] = rng.integers(5, len(VOCAB), n)
    ids[r, 0] = 2  # [CLS]
    mask[r, :n] = 1
    seg[r, n // 2:n] = 1
  return ids, mask, seg


# SQuAD exports with the independent start / end head (and, for 2.0, no answerability
# classifier): the official defaults (joint head, classifier) have no HF class.
_QA_INDEPENDENT = dict(qa_joint=False, qa_answerable=False)


@pytest.mark.parametrize('task,form,cls', [
    ('mrpc', 'hf', 'ElectraForSequenceClassification'),
    ('stsb', 'hf', 'ElectraForSequenceClassification'),
    ('squad1', 'official', 'ElectraForQuestionAnswering'),
    ('squad2', 'official', 'ElectraForQuestionAnswering'),
    ('chunk', 'official', 'ElectraForTokenClassification'),
])
def test_export_loads_exactly_and_matches(task, form, cls, tmp_path):
  path, model, params, _ = saved_model(tmp_path, task, form,
                                       **(_QA_INDEPENDENT if task.startswith('squad') else {}))
  summary = convert.convert('electra_jax', 'hf', path, tmp_path / 'hf')
  assert summary['architecture'] == cls
  cfg = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert cfg['architectures'] == [cls]
  hf_model, info = getattr(transformers, cls).from_pretrained(tmp_path / 'hf',
                                                              output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'] and not info['error_msgs'], info
  hf_model.eval()
  ids, mask, seg = _batch()
  ours = model.apply({'params': params}, ids, mask, seg, True)
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   token_type_ids=torch.tensor(seg, dtype=torch.long))
  if task.startswith('squad'):
    # Ours masks what cannot hold an answer (-1e4: padding, the question, as the official
    # answer_mask); HF leaves it: compare [CLS] and the context, where spans are chosen.
    real = mask.astype(bool) & (seg == 1)
    real[:, 0] = True
    for ours_key, theirs in (('start_logits', out.start_logits), ('end_logits', out.end_logits)):
      diff = np.abs(np.asarray(ours[ours_key])[real] - theirs.numpy()[real])
      assert diff.max() < 1e-5, (ours_key, diff.max())
    return
  want = np.asarray(ours['predictions'])[:, None] if task == 'stsb' else np.asarray(
      ours['logits'])
  got = out.logits.numpy()
  assert got.shape == want.shape
  assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
  assert np.abs(want).max() > 1e-2  # not a vacuous comparison of zeros
  if task == 'mrpc':
    assert hf_model.config.id2label == {0: '0', 1: '1'}
  if task == 'chunk':
    assert len(hf_model.config.id2label) == want.shape[-1]


def test_official_head_and_squad2_refuse_saying_why(tmp_path):
  path, *_ = saved_model(tmp_path / 'a', 'sst2', 'official')
  with pytest.raises(ValueError, match=r'official ELECTRA classification head.*--config\.head'
                                       r'\.form=hf'):
    convert.convert('electra_jax', 'hf', path, tmp_path / 'hf_a')
  assert not (tmp_path / 'hf_a').exists()
  path, *_ = saved_model(tmp_path / 'b', 'squad2')  # the defaults: joint head + classifier
  with pytest.raises(ValueError, match=r'joint start/end head .* and a SQuAD 2.0 answerability '
                                       r'classifier; transformers has no ELECTRA class .* '
                                       r'--config\.head\.qa_joint=False '
                                       r'--config\.head\.qa_answerable=False') as e:
    convert.convert('electra_jax', 'hf', path, tmp_path / 'hf_b')
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'hf_b').exists()
  for task, head, flag in (('squad1', {}, 'qa_joint'),
                           ('squad2', {'qa_joint': False}, 'qa_answerable')):
    path, *_ = saved_model(tmp_path / f'c_{task}', task, **head)
    with pytest.raises(ValueError, match=rf'has (the joint|a SQuAD 2.0).*; transformers has '
                                         rf'no ELECTRA class for it .* Fine-tune with '
                                         rf'--config\.head\.{flag}=False to get'):
      convert.convert('electra_jax', 'hf', path, tmp_path / f'hf_c_{task}')
