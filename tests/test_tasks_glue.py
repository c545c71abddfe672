"""GLUE readers (TSV and local TFDS), featurization, metrics, test writer, batching."""

import numpy as np
import pytest
import sklearn.metrics

from electra_jax.finetune.tasks import base, glue, registry

import conftest

DATA = conftest.DATA_ROOT  # ELECTRA_JAX_DATA


class FakeTokenizer:
  """Whitespace tokenizer; ids assigned on first sight (pad 0, cls 1, sep 2)."""
  pad_id, cls_id, sep_id, unk_id = 0, 1, 2, 3

  def __init__(self):
    self.vocab = {'[PAD]': 0, '[CLS]': 1, '[SEP]': 2, '[UNK]': 3}

  def encode(self, text):
    return [self.vocab.setdefault(w, len(self.vocab)) for w in text.lower().split()]

  def id_to_token(self, i):
    return {v: k for k, v in self.vocab.items()}[i]


def _write(path, lines, bom=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(('\ufeff' if bom else '') + ''.join(l + '\n' for l in lines), encoding='utf-8')


# --------------------------------------------------------------------------- real files

_COUNTS = [('cola', 'train', 8551), ('cola', 'dev', 1043), ('cola', 'test', 1063),
           ('sst2', 'train', 67349), ('sst2', 'dev', 872), ('sst2', 'test', 1821),
           ('mrpc', 'train', 3668),
           ('mrpc', 'dev', 408), ('mrpc', 'test', 1725), ('stsb', 'train', 5749),
           ('stsb', 'dev', 1500), ('stsb', 'test', 1379), ('rte', 'train', 2490),
           ('rte', 'dev', 277), ('rte', 'test', 3000), ('wnli', 'train', 635),
           ('wnli', 'dev', 71), ('wnli', 'test', 146), ('qnli', 'dev', 5463),
           ('qnli', 'test', 5463), ('mnli', 'ax', 1104)]


@pytest.mark.skipif(not (DATA / 'glue').exists(), reason='no ELECTRA_JAX_DATA/glue')
@pytest.mark.parametrize('name,split,count', _COUNTS)
def test_real_tsv_row_counts(name, split, count):
  exs = registry.get_task(name).load_examples('tsv', split, DATA / 'glue')
  assert len(exs) == count
  assert [e.idx for e in exs] == list(range(count))
  unlabeled = split in ('test', 'ax')
  assert all((e.label is None) == unlabeled for e in exs)


@pytest.mark.skipif(not (DATA / 'glue').exists(), reason='no ELECTRA_JAX_DATA/glue')
def test_real_tsv_label_distributions():
  root = DATA / 'glue'
  cola = glue.GLUE_TASKS['cola'].load_examples('tsv', 'train', root)
  assert sum(e.label for e in cola) == 6023  # label '1' -> index 1
  assert cola[0].text_a == "Our friends won't buy this analysis, let alone the next one we propose."
  rte = glue.GLUE_TASKS['rte'].load_examples('tsv', 'train', root)
  assert sum(e.label == 0 for e in rte) == 1249  # entailment
  mrpc = glue.GLUE_TASKS['mrpc'].load_examples('tsv', 'dev', root)
  assert sum(e.label for e in mrpc) == 279 and mrpc[0].text_b
  stsb = glue.GLUE_TASKS['stsb'].load_examples('tsv', 'dev', root)
  assert np.mean([e.label for e in stsb]) == pytest.approx(2.364, abs=1e-3)
  # The task folder itself also works as data_dir.
  assert len(glue.GLUE_TASKS['rte'].load_examples('tsv', 'dev', root / 'RTE')) == 277


# --------------------------------------------------------------------------- bad input


def test_malformed_row_names_file_and_line(tmp_path):
  _write(tmp_path / 'RTE' / 'dev.tsv', ['index\tsentence1\tsentence2\tlabel',
                                        '0\ta\tb\tentailment', '1\ta\tb'])
  with pytest.raises(ValueError, match=r'RTE/dev.tsv:3: expected 4 tab-separated columns, got 3'):
    glue.GLUE_TASKS['rte'].load_examples('tsv', 'dev', tmp_path)
  _write(tmp_path / 'CoLA' / 'train.tsv', ['gj04\t1\t\tok .', 'gj04\t1\tok .'])
  with pytest.raises(ValueError, match=r'CoLA/train.tsv:2: expected 4'):
    glue.GLUE_TASKS['cola'].load_examples('tsv', 'train', tmp_path)


def test_unknown_label_names_file_line_and_label(tmp_path):
  _write(tmp_path / 'RTE' / 'train.tsv', ['index\tsentence1\tsentence2\tlabel',
                                          '0\ta\tb\tentailment', '1\ta\tb\tneutral'])
  with pytest.raises(ValueError, match=r"RTE/train.tsv:3: label 'neutral' not in rte labels"):
    glue.GLUE_TASKS['rte'].load_examples('tsv', 'train', tmp_path)
  _write(tmp_path / 'STS-B' / 'dev.tsv', ['\t'.join(['c'] * 7 + ['sentence1', 'sentence2', 'score']),
                                          '\t'.join(['x'] * 9 + ['7.5'])])
  with pytest.raises(ValueError, match=r"STS-B/dev.tsv:2: label '7.5' outside"):
    glue.GLUE_TASKS['stsb'].load_examples('tsv', 'dev', tmp_path)
  with pytest.raises(FileNotFoundError, match='no train.tsv'):
    glue.GLUE_TASKS['qqp'].load_examples('tsv', 'train', tmp_path)
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    glue.GLUE_TASKS['mnli'].load_examples('tsv', 'dev', tmp_path)


def test_tfds_absent_is_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='TFDS dataset glue/rte split validation not found'):
    glue.GLUE_TASKS['rte'].load_examples('tfds', 'dev', tmp_path)


# --------------------------------------------------------------------------- TSV == TFDS

_SENTS = ['the cat sat .', 'a dog ran home', 'it rained', 'he said "hi" , twice', 'ok']


def _make_sources(root):
  """Equivalent TSVs (under root/glue) and a local TFDS data_dir (root/tfds)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  g = root / 'glue'
  s = _SENTS
  _write(g / 'CoLA' / 'train.tsv', [f'src\t{i % 2}\t\t{t}' for i, t in enumerate(s)])
  _write(g / 'CoLA' / 'test.tsv', ['index\tsentence'] + [f'{i}\t{t}' for i, t in enumerate(s)])
  _write(g / 'MRPC' / 'train.tsv', ['Quality\t#1 ID\t#2 ID\t#1 String\t#2 String'] +
         [f'{i % 2}\t{i}\t{i + 9}\t{s[i]}\t{s[-i - 1]}' for i in range(5)], bom=True)
  _write(g / 'STS-B' / 'dev.tsv',
         ['index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore'] +
         [f'{i}\tg\tf\ty\t{i}\ts\ts\t{s[i]}\t{s[-i - 1]}\t{v}'
          for i, v in enumerate(['3.800', '0.000', '5.000', '1.250', '2.4'])])
  nli = ('entailment', 'neutral', 'contradiction')
  _write(g / 'MNLI' / 'dev_matched.tsv', ['\t'.join(['index'] + [f'c{j}' for j in range(7)] +
                                                    ['sentence1', 'sentence2'] +
                                                    [f'label{j}' for j in range(1, 6)] +
                                                    ['gold_label'])] +
         ['\t'.join([str(i)] + ['x'] * 7 + [s[i], s[-i - 1]] + ['-'] * 5 + [nli[i % 3]])
          for i in range(5)])

  def store(config, feats, splits):
    specs = {k: tf.TensorSpec((), tf.float32 if k == 'label' and config == 'stsb' else
                              tf.int64 if k == 'label' else tf.int32 if k == 'idx' else tf.string)
             for k in feats}
    datasets = {}
    for split, rows in splits.items():
      datasets[split] = tf.data.Dataset.from_generator(lambda rows=rows: iter(rows),
                                                       output_signature=specs)
    tfds.dataset_builders.store_as_tfds_dataset(
        name='glue', version='2.0.0', config=config, data_dir=str(root / 'tfds'),
        features=tfds.features.FeaturesDict(feats), split_datasets=datasets)

  txt, cl = tfds.features.Text(), tfds.features.ClassLabel
  # Rows are stored in reverse order: the reader must restore file order from idx.
  store('cola', {'sentence': txt, 'label': cl(names=['unacceptable', 'acceptable']),
                 'idx': np.int32},
        {'train': [dict(sentence=t, label=i % 2, idx=i) for i, t in enumerate(s)][::-1],
         'test': [dict(sentence=t, label=-1, idx=i) for i, t in enumerate(s)]})
  store('mrpc', {'sentence1': txt, 'sentence2': txt,
                 'label': cl(names=['not_equivalent', 'equivalent']), 'idx': np.int32},
        {'train': [dict(sentence1=s[i], sentence2=s[-i - 1], label=i % 2, idx=i)
                   for i in range(5)][::-1]})
  store('stsb', {'sentence1': txt, 'sentence2': txt, 'label': np.float32, 'idx': np.int32},
        {'validation': [dict(sentence1=s[i], sentence2=s[-i - 1], label=v, idx=i)
                        for i, v in enumerate([3.8, 0.0, 5.0, 1.25, 2.4])]})
  store('mnli', {'premise': txt, 'hypothesis': txt, 'label': cl(names=list(nli)),
                 'idx': np.int32},
        {'validation_matched': [dict(premise=s[i], hypothesis=s[-i - 1], label=i % 3, idx=i)
                                for i in range(5)]})
  return g, root / 'tfds'


def test_tsv_and_local_tfds_give_identical_examples(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  tsv_dir, tfds_dir = _make_sources(tmp_path)
  for name, split in [('cola', 'train'), ('cola', 'test'), ('mrpc', 'train'), ('stsb', 'dev'),
                      ('mnli', 'dev_matched')]:
    task = registry.get_task(name)
    from_tsv = task.load_examples('tsv', split, tsv_dir)
    from_tfds = task.load_examples('tfds', split, tfds_dir)
    assert len(from_tsv) == 5
    assert from_tsv == from_tfds, (name, split)
  assert registry.get_task('stsb').load_examples('tfds', 'dev', tfds_dir)[0].label == 3.8


# --------------------------------------------------------------------------- featurize


def test_featurize_pair_truncation_and_double_unordered():
  tok = FakeTokenizer()
  task = registry.get_task('MRPC')
  exs = [glue.PairExample('train-0', 0, 'a b c d e f g', 'x y', 1),
         glue.PairExample('train-1', 1, 'a b', 'c', 0)]
  f = task.featurize(exs, tok, max_seq_length=8, train=False)
  assert set(f.arrays) == {'input_ids', 'input_mask', 'segment_ids', 'label', 'example_index'}
  assert all(v.dtype == np.int32 for v in f.arrays.values())
  assert f.arrays['input_ids'].shape == (2, 8) and f.num_truncated == 1
  v = {w: tok.vocab[w] for w in 'abcdefgxy'}
  # 5 slots for a+b: pop from the longer (a) until 3 + 2.
  assert f.arrays['input_ids'][0].tolist() == [1, v['a'], v['b'], v['c'], 2, v['x'], v['y'], 2]
  assert f.arrays['segment_ids'][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  assert f.arrays['input_mask'][1].tolist() == [1] * 6 + [0] * 2
  assert f.arrays['input_ids'][1, 6:].tolist() == [0, 0]
  ft = task.featurize(exs, tok, max_seq_length=8, train=True)
  assert len(ft) == 4 and ft.arrays['example_index'].tolist() == [0, 0, 1, 1]
  assert ft.arrays['input_ids'][3, :5].tolist() == [1, v['c'], 2, v['a'], v['b']]
  assert ft.arrays['label'].tolist() == [1, 1, 0, 0]
  assert len(task.featurize(exs, tok, 8, train=True, double_unordered=False)) == 2
  # Single sentence: a keeps max_seq_length - 2 tokens.
  fs = registry.get_task('cola').featurize([glue.PairExample('t', 0, 'a b c d e f g', None, 1)],
                                           tok, 5, train=True)
  assert fs.arrays['input_ids'][0].tolist() == [1, v['a'], v['b'], v['c'], 2]
  assert fs.num_truncated == 1
  fr = registry.get_task('sts-b').featurize([glue.PairExample('t', 0, 'a', 'b', 2.5)], tok, 8,
                                            train=False)
  assert fr.arrays['label'].dtype == np.float32 and fr.arrays['label'][0] == 2.5


def test_task_attributes():
  epochs = {n: registry.get_task(n).epochs for n in glue.GLUE_TASKS}
  assert epochs == {'cola': 3, 'sst2': 3, 'mrpc': 3, 'stsb': 10, 'qqp': 3, 'mnli': 3,
                    'qnli': 3, 'rte': 10, 'wnli': 3}
  assert registry.get_task('stsb').kind == 'regression'
  assert registry.get_task('stsb').num_labels == 1
  assert registry.get_task('mnli').num_labels == 3
  assert registry.get_task('cola').main_metric == 'mcc'
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    registry.get_task('nope')
  # Overrides give a copy; the shared table is untouched.
  assert registry.get_task('rte', epochs=2).epochs == 2 and registry.get_task('rte').epochs == 10
  with pytest.raises(ValueError, match=r"rte: unknown task settings \['doc_stride'\]"):
    registry.get_task('rte', doc_stride=3)
  with pytest.raises(ValueError, match=r'rte example t-0: label 2 not in 0..1'):
    registry.get_task('rte').featurize([glue.PairExample('t-0', 0, 'a', 'b', 2)],
                                       FakeTokenizer(), 8, train=False)


# --------------------------------------------------------------------------- metrics, writer


def test_compute_metrics_against_sklearn():
  rng = np.random.default_rng(0)
  n = 50
  labels = rng.integers(0, 2, n)
  feats = base.Features({'label': labels.astype(np.int32)}, [None] * n)
  logits = rng.normal(size=(n, 2))
  pred = logits.argmax(-1)
  m = registry.get_task('mrpc').compute_metrics(logits, feats)
  assert m['accuracy'] == pytest.approx(sklearn.metrics.accuracy_score(labels, pred))
  assert m['f1'] == pytest.approx(sklearn.metrics.f1_score(labels, pred))
  m = registry.get_task('cola').compute_metrics(pred, feats)
  assert m['mcc'] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, pred))
  with pytest.raises(ValueError, match='got 3 predictions for 50'):
    registry.get_task('rte').compute_metrics(pred[:3], feats)


def test_write_test_predictions(tmp_path):
  exs = [glue.PairExample(f'test-{i}', i, 'a', 'b', None) for i in range(3)]
  p = registry.get_task('rte').write_test_predictions(np.array([[0, 1], [2, 0], [0, 3]]), exs,
                                                     tmp_path)
  assert p.name == 'RTE.tsv'
  assert p.read_text() == 'index\tprediction\n0\tnot_entailment\n1\tentailment\n2\tnot_entailment\n'
  p = registry.get_task('mnli').write_test_predictions([2, 1, 0], exs, tmp_path, 'test_mismatched')
  assert p.name == 'MNLI-mm.tsv' and p.read_text().splitlines()[1] == '0\tcontradiction'
  p = registry.get_task('stsb').write_test_predictions(np.array([5.7, -0.2, 2.34567]), exs,
                                                      tmp_path)
  assert p.read_text().splitlines()[1:] == ['0\t5.000', '1\t0.000', '2\t2.346']
  assert registry.get_task('cola').write_test_predictions([1, 0, 1], exs, tmp_path).name == \
      'CoLA.tsv'


# --------------------------------------------------------------------------- batching


def test_eval_batches_pad_and_mask():
  arrays = {'x': np.arange(10, dtype=np.int32).reshape(5, 2) + 1, 'y': np.arange(5) + 1}
  batches = list(base.eval_batches(arrays, 2))
  assert len(batches) == 3
  assert all(b['x'].shape == (2, 2) for b in batches)
  assert batches[-1]['weights'].tolist() == [1.0, 0.0]
  assert batches[-1]['x'][1].tolist() == [0, 0]
  got = np.concatenate([b['y'] for b in batches])[np.concatenate([b['weights'] for b in batches]) > 0]
  assert got.tolist() == [1, 2, 3, 4, 5]


def test_train_batches_shuffle_per_epoch_seeded():
  arrays = {'y': np.arange(10)}
  e0 = [b['y'].tolist() for b in base.train_batches(arrays, 3, seed=7, epoch=0)]
  assert len(e0) == 3 and len({v for b in e0 for v in b}) == 9  # remainder dropped
  assert e0 == [b['y'].tolist() for b in base.train_batches(arrays, 3, seed=7, epoch=0)]
  e1 = [b['y'].tolist() for b in base.train_batches(arrays, 3, seed=7, epoch=1)]
  assert e1 != e0
  full = list(base.train_batches(arrays, 3, seed=7, epoch=0, drop_remainder=False))
  assert sorted(np.concatenate([b['y'][b['weights'] > 0] for b in full]).tolist()) == list(range(10))
  assert base.num_train_steps(10, 3, 2) == 6
