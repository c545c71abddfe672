"""CoNLL-2000 chunking: reader, first-sub-token features, word-level predictions, span F1."""

import numpy as np
import pytest

from electra_jax.finetune.tasks import chunking, registry

import conftest

DATA = conftest.DATA_ROOT  # ELECTRA_JAX_DATA

SAMPLE = """Confidence NN B-NP
in IN B-PP
the DT B-NP
pound NN I-NP
is VBZ B-VP
widely RB I-VP
expected VBN I-VP
. . O

Chancellor NNP O
of IN B-PP
the DT B-NP
Exchequer NNP I-NP
"""


class FakeTokenizer:
  """Lowercase whitespace tokenizer that splits words longer than 5 chars into 2 pieces."""
  pad_id, cls_id, sep_id, unk_id = 0, 1, 2, 3

  def __init__(self):
    self.vocab = {}

  def encode(self, text):
    pieces = []
    for w in text.lower().split():
      pieces += [w[:5], '##' + w[5:]] if len(w) > 5 else [w]
    return [self.vocab.setdefault(p, len(self.vocab) + 4) for p in pieces]


def _examples(tmp_path):
  (tmp_path / 'train.txt').write_text(SAMPLE)
  return chunking.read_conll(tmp_path / 'train.txt')


def test_reader_and_bioes(tmp_path):
  exs = _examples(tmp_path)
  assert len(exs) == 2 and exs[1].words == ('Chancellor', 'of', 'the', 'Exchequer')
  assert exs[0].pos[:2] == ('NN', 'IN')
  assert chunking.to_bioes(exs[0].tags) == ['S-NP', 'S-PP', 'B-NP', 'E-NP', 'B-VP', 'I-VP',
                                            'E-VP', 'O']


def test_featurize_first_subtoken_labels_and_perfect_f1(tmp_path):
  exs = _examples(tmp_path)
  task = registry.get_task('conll2000')
  assert task.kind == 'tagging' and task.num_labels == 1 + 4 * 11
  f = task.featurize(exs, FakeTokenizer(), 16, train=True)
  assert f.arrays['input_ids'].shape == (2, 16) and f.num_truncated == 0
  # 'Confidence' -> 2 pieces: label at position 1, weight 0 at position 2.
  lab = task.label_list
  assert f.arrays['label_weights'][0, :4].tolist() == [0, 1, 0, 1]
  assert lab[f.arrays['labels'][0, 1]] == 'S-NP' and lab[f.arrays['labels'][0, 3]] == 'S-PP'
  assert f.arrays['label_weights'][0].sum() == 8 and f.meta[0]['word_starts'][:3] == [1, 3, 4]
  assert f.arrays['input_ids'][0, 12] == 2 and f.arrays['input_mask'][0].sum() == 13
  # Perfect predictions (the labels themselves, as ids or one-hot logits) -> F1 1.
  assert task.compute_metrics(f.arrays['labels'], f)['f1'] == 1.0
  logits = np.eye(task.num_labels)[f.arrays['labels']]
  assert task.compute_metrics(logits, f)['f1'] == 1.0
  # Tags on non-first sub-tokens are ignored.
  noisy = f.arrays['labels'].copy()
  noisy[f.arrays['label_weights'] == 0] = lab.index('B-VP')
  assert task.compute_metrics(noisy, f)['f1'] == 1.0


def test_word_level_f1_hand_made(tmp_path):
  exs = _examples(tmp_path)
  task = chunking.ChunkingTask()
  f = task.featurize(exs, FakeTokenizer(), 16, train=False)
  pred = f.arrays['labels'].copy()
  lab = task.label_list
  # Sentence 0: 'the pound' predicted as two single NPs; sentence 1: 'of' tagged O.
  s0 = f.meta[0]['word_starts']
  pred[0, s0[2]], pred[0, s0[3]] = lab.index('S-NP'), lab.index('S-NP')
  pred[1, f.meta[1]['word_starts'][1]] = lab.index('O')
  words = task.word_predictions(pred, f)
  assert words[1] == ['O', 'O', 'B-NP', 'E-NP']
  # Gold chunks: NP PP NP VP | PP NP = 6. Pred: NP PP NP NP VP | NP = 6; correct 3 + 1 = 4.
  m = task.compute_metrics(pred, f)
  assert m['precision'] == pytest.approx(4 / 6) and m['recall'] == pytest.approx(4 / 6)
  assert m['f1'] == pytest.approx(4 / 6)


def test_truncated_words_predict_o(tmp_path):
  exs = _examples(tmp_path)
  task = chunking.ChunkingTask()
  f = task.featurize(exs, FakeTokenizer(), 6, train=False)
  # Sentence 0 needs 11 sub-tokens + 2, sentence 1 needs 6 + 2; only 4 slots each.
  assert f.num_truncated == 2 and f.meta[0]['word_starts'] == [1, 3, 4] + [-1] * 5
  words = task.word_predictions(f.arrays['labels'], f)
  assert words[0][:3] == ['S-NP', 'S-PP', 'B-NP'] and set(words[0][3:]) == {'O'}
  assert task.compute_metrics(f.arrays['labels'], f)['recall'] < 1.0


def test_bad_rows_name_file_and_line(tmp_path):
  (tmp_path / 'train.txt').write_text('Confidence NN B-NP\nin IN\n')
  with pytest.raises(ValueError, match=r'train.txt:2: expected 3 columns'):
    chunking.read_conll(tmp_path / 'train.txt')
  (tmp_path / 'test.txt').write_text('Confidence NN B-NP\n\nin IN B-XX\n')
  with pytest.raises(ValueError, match=r"test.txt:3: chunk tag 'B-XX' not in"):
    registry.get_task('chunk').load_examples('conll', 'test', tmp_path)
  with pytest.raises(ValueError, match="unknown source 'tfds'"):
    registry.get_task('chunk').load_examples('tfds', 'test', tmp_path)


@pytest.mark.skipif(not (DATA / 'conll2000').exists(), reason='no ELECTRA_JAX_DATA/conll2000')
def test_real_files():
  task = registry.get_task('chunk')
  d = DATA / 'conll2000'
  full = task.load_examples('conll', 'train_full', d)
  test = task.load_examples('conll', 'test', d)
  assert len(full) == 8936 and sum(len(s.words) for s in full) == 211727
  assert len(test) == 2012 and sum(len(s.words) for s in test) == 47377
  train, dev = task.load_examples('conll', 'train', d), task.load_examples('conll', 'dev', d)
  assert len(train) == 7936 and len(dev) == 1000 and dev[0].words == full[7936].words
