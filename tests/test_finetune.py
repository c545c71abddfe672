"""Fine-tuning loop end to end on small synthetic data (CPU, 8 fake devices)."""

import json
import random

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune as finetune_config
from electra_jax.io import checkpoint
from electra_jax.io import finetuned
from electra_jax.finetune import inference
from electra_jax.finetune import loop
from electra_jax.finetune import multiseed
from electra_jax.io import weights
from electra_jax.models import electra

FILLER = 'the a cat dog sat on mat ran far near big small red blue green house tree car'.split()
KEYS = ['good', 'bad', 'alpha', 'beta', 'gamma', 'delta']
CHUNK_WORDS = 'he she saw ate an apple pear quickly big dog'.split()
VOCAB = (['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + FILLER + KEYS + CHUNK_WORDS +
         ['what', 'is', 'code', '?', '.', 'very'])


def _write_vocab(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(VOCAB) + '\n')
  return path


def _sentence(rng, lo=3, hi=8):
  return ' '.join(rng.choice(FILLER) for _ in range(rng.randint(lo, hi)))


def _config(task, tmp_path, **overrides):
  """The real finetune config at size tiny, shrunk for unit tests."""
  c = finetune_config.get_config(f'task={task},size=tiny')
  c.data.vocab = str(_write_vocab(tmp_path))
  c.data.data_dir = str(tmp_path / 'data')
  c.model.update(dict(embedding_size=16, hidden_size=32, num_layers=1, num_heads=2,
                      intermediate_size=64, max_position_embeddings=64))
  c.train.update(dict(batch_size=16, eval_batch_size=16, seq_len=32, log_every=1000))
  c.update_from_flattened_dict(overrides)  # {'train.seq_len': 32, ...}
  return c


def _write_rte(root, n_train=256, n_dev=64, n_test=20, n_long=3):
  """Separable RTE: the label is whether sentence2 contains 'good' or 'bad'."""
  rng = random.Random(0)
  d = root / 'RTE'
  d.mkdir(parents=True)

  def rows(n, long=0):
    out = []
    for i in range(n):
      lab = rng.random() < 0.5
      words = _sentence(rng).split()
      words.insert(rng.randint(0, len(words)), 'good' if lab else 'bad')
      a = _sentence(rng, 40, 50) if i < long else _sentence(rng)  # long ones get truncated
      out.append((a, ' '.join(words), 'entailment' if lab else 'not_entailment'))
    return out

  for split, n in (('train', n_train), ('dev', n_dev)):
    lines = ['index\tsentence1\tsentence2\tlabel']
    lines += [f'{i}\t{a}\t{b}\t{l}' for i, (a, b, l) in enumerate(rows(n, n_long))]
    (d / f'{split}.tsv').write_text('\n'.join(lines) + '\n')
  lines = ['index\tsentence1\tsentence2'] + [f'{i}\t{a}\t{b}'
                                             for i, (a, b, _) in enumerate(rows(n_test))]
  (d / 'test.tsv').write_text('\n'.join(lines) + '\n')


def test_classification_learns_separable_task(tmp_path):
  _write_rte(tmp_path / 'data')
  config = _config('rte', tmp_path, **{'train.epochs': 6.0, 'train.batch_size': 32})
  config.model.update(dict(embedding_size=32, hidden_size=64, intermediate_size=128,
                           num_layers=2))
  workdir = tmp_path / 'run'
  results = loop.finetune_and_evaluate(config, str(workdir))
  assert results['dev']['dev']['accuracy'] > 0.9, results['history']
  assert results['init_kind'] == 'random' and results['missing_keys'] == []
  assert results['num_steps'] == 6 * (256 // 32)
  assert results['truncated'] == {'train': 3, 'dev': 3}
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in records if 'dev' in r]
  assert [r['epoch'] for r in evals] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r['train']['loss']) for r in records if 'train' in r)
  on_disk = json.loads((workdir / 'results.json').read_text())
  assert on_disk['dev'] == results['dev']
  # GLUE leaderboard file: one row per test example, label strings.
  rows = (workdir / 'test_predictions' / 'RTE.tsv').read_text().splitlines()
  assert rows[0] == 'index\tprediction' and len(rows) == 21
  assert {r.split('\t')[1] for r in rows[1:]} <= {'entailment', 'not_entailment'}
  # What a finished run leaves: the saved model, curves, TensorBoard events, checkpoints.
  saved = finetuned.load(workdir / 'model')
  assert saved.task['label_list'] == ['entailment', 'not_entailment'] and saved.step == 48
  assert (workdir / 'curves.png').stat().st_size > 1000 and results['curves']
  assert list((workdir / 'tensorboard').iterdir())
  assert (workdir / 'checkpoints' / '48').is_dir()


def _export_dir(tmp_path, config):
  """An export dir (as electra_jax.io.checkpoint writes) with an extra, unexpected subtree."""
  model_cfg = dict(config.model, vocab_size=len(VOCAB))
  cfg = electra.ModelConfig.from_config(model_cfg)
  ids = np.zeros((1, 8), np.int32)
  params = nn.meta.unbox(electra.ElectraModel(cfg).init(jax.random.key(7), ids, ids + 1, ids,
                                                        True)['params'])
  params = jax.tree.map(np.asarray, params)
  params['discriminator_predictions'] = {'dense': {'kernel': np.ones((32, 32), np.float32)}}
  out = tmp_path / 'export'
  checkpoint.export_params(out, {'discriminator': params},
                           {'model': model_cfg, 'tokens': {}, 'lowercase': True}, VOCAB)
  return out, params


def test_init_from_export_loads_encoder_and_reports_keys(tmp_path):
  config = _config('rte', tmp_path)
  export, params = _export_dir(tmp_path, config)
  ckpt = weights.load(str(export))
  assert ckpt.kind == 'export' and ckpt.vocab == export / 'vocab.txt'
  task = loop.build_task(config)
  model = loop.build_model(electra.ModelConfig.from_config(ckpt.model_config), task, config)
  params_shape = nn.meta.unbox(jax.eval_shape(
      lambda r: loop._init_params(model, 32, r), jax.random.key(0)))
  tx, _ = loop.make_optimizer(config, params_shape, 1, 10)
  mesh = loop.sharding.make_mesh(config.mesh)
  state, _, missing, unexpected = loop.create_state(model, tx, mesh, 32, jax.random.key(0),
                                                        ckpt.params)
  assert missing == ['classifier/dense/bias', 'classifier/dense/kernel']
  assert unexpected == ['discriminator_predictions/dense/kernel']
  got = traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
  for k, v in traverse_util.flatten_dict(params, sep='/').items():
    if not k.startswith('discriminator_predictions'):
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  # A shape mismatch is an error naming the parameter.
  bad = jax.tree.map(lambda x: x, params)
  bad['embeddings']['word_embeddings'] = np.zeros((3, 16), np.float32)
  with pytest.raises(ValueError, match='word_embeddings'):
    loop.merge_params(jax.device_get(state.params), bad)


def _write_stsb(root, n_train=64, n_dev=40):
  rng = random.Random(1)
  d = root / 'STS-B'
  d.mkdir(parents=True)
  for split, n in (('train', n_train), ('dev', n_dev)):
    lines = ['index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore']
    for i in range(n):
      k = rng.randint(0, 5)
      b = _sentence(rng) + ' ' + ' '.join(['very'] * k)
      lines.append(f'{i}\tg\tf\t2012\t{i}\ts\ts\t{_sentence(rng)}\t{b}\t{float(k):.3f}')
    (d / f'{split}.tsv').write_text('\n'.join(lines) + '\n')


def test_regression_stsb_from_export(tmp_path):
  """STS-B path: regression head, double_unordered, Pearson / Spearman, starting from an export."""
  _write_stsb(tmp_path / 'data')
  config = _config('stsb', tmp_path, **{'train.epochs': 1.0, 'data.test_splits': ''})
  export, _ = _export_dir(tmp_path, config)
  config.train.init_from = str(export)
  config.data.vocab = ''  # the export's vocab.txt
  results = loop.finetune_and_evaluate(config, str(tmp_path / 'run'))
  assert results['init_kind'] == 'export'
  assert results['missing_keys'] == ['classifier/dense/bias', 'classifier/dense/kernel']
  assert results['unexpected_keys'] == ['discriminator_predictions/dense/kernel']
  assert results['num_train_features'] == 128  # 64 pairs + their swapped copies
  dev = results['dev']['dev']
  assert set(dev) == {'pearson', 'spearman'}
  assert all(-1 <= v <= 1 for v in dev.values())
  assert results['main_metric'] == 'spearman'


def test_predict_pads_last_batch_and_keeps_order(tmp_path):
  _write_rte(tmp_path / 'data', n_train=16, n_dev=20, n_test=0, n_long=0)
  config = _config('rte', tmp_path)
  task = loop.build_task(config)
  tok = weights.load_tokenizer(config.data.vocab, None, True)
  feats = loop.load_features(task, config, tok, 'dev', False)
  model_cfg = electra.ModelConfig.from_config(dict(config.model, vocab_size=len(VOCAB)))
  model = loop.build_model(model_cfg, task, config)
  params_shape = nn.meta.unbox(jax.eval_shape(
      lambda r: loop._init_params(model, 32, r), jax.random.key(0)))
  tx, schedule = loop.make_optimizer(config, params_shape, 1, 10)
  mesh = loop.sharding.make_mesh(config.mesh)
  state, shardings, _, _ = loop.create_state(model, tx, mesh, 32, jax.random.key(0))
  _, predict_fn = loop.make_steps(model, tx, schedule, mesh, shardings)
  a = inference.predict(predict_fn, state.params, feats, 8, mesh)['logits']
  b = inference.predict(predict_fn, state.params, feats, 16, mesh)['logits']
  assert a.shape == (20, 2)  # 20 rows from 3 (or 2) padded batches
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  direct = model.apply({'params': jax.device_get(state.params)}, feats.arrays['input_ids'],
                       feats.arrays['input_mask'], feats.arrays['segment_ids'], True)['logits']
  np.testing.assert_allclose(a, direct, rtol=1e-4, atol=1e-5)


def _write_squad(path, n_articles=6, per_article=12, v2=False):
  """'what is the code ?' answered by the key word after 'the code is'; v2: every third
  question is 'what is very big ?', unanswerable."""
  rng = random.Random(2)
  data = []
  for a in range(n_articles):
    paragraphs = []
    for p in range(2):
      qas = []
      key = rng.choice(KEYS)
      context = f'{_sentence(rng)} the code is {key} . {_sentence(rng)}'
      start = context.index(f' {key} ') + 1
      for q in range(per_article // 2):
        qa = {'id': f'{a}-{p}-{q}', 'question': 'what is the code ?',
              'answers': [{'text': key, 'answer_start': start}]}
        if v2:
          qa['is_impossible'] = q % 3 == 2
          if qa['is_impossible']:
            qa.update(question='what is very big ?', answers=[])
        qas.append(qa)
      paragraphs.append({'context': context, 'qas': qas})
    data.append({'title': f'article {a}', 'paragraphs': paragraphs})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'version': '2.0' if v2 else '1.1', 'data': data}))


def test_squad_end_to_end(tmp_path):
  """SQuAD 1.1 with the independent start / end head (the option; the joint default runs in
  test_squad2_joint_end_to_end)."""
  _write_squad(tmp_path / 'data' / 'dev-v1.1.json')
  config = _config('squad1', tmp_path, **{
      'train.epochs': 2.0, 'train.seq_len': 48, 'task.doc_stride': 16,
      'task.max_query_length': 8, 'data.train_split': 'train_from_dev',
      'data.eval_splits': 'eval_from_dev', 'head.qa_joint': False})
  assert finetune_config.get_config('task=squad1').train.seq_len == 512  # the official
  workdir = tmp_path / 'run'
  results = loop.finetune_and_evaluate(config, str(workdir))
  dev = results['dev']['eval_from_dev']
  assert {'exact_match', 'f1'} <= set(dev) or {'exact', 'f1'} <= set(dev), dev
  assert all(0 <= dev[k] <= 100 for k in ('f1',))
  preds = json.loads((workdir / 'predictions_eval_from_dev.json').read_text())
  assert len(preds) == 12 and all(isinstance(v, str) for v in preds.values())
  assert results['main_metric'] == 'f1'


def test_squad2_config_defaults_follow_the_official_code():
  """configure_finetuning.py: max_seq_length 512, doc_stride 128, max_query_length 64,
  n_best_size 20, max_answer_length 30, joint_prediction, beam_size 20,
  answerable_classifier (uses_start_logits), answerable_weight 0.5, qa_na_threshold -2.75,
  2 epochs; 1.1 joint too, without the classifier (README)."""
  for task in ('squad2', 'squad1'):
    c = finetune_config.get_config(f'task={task}')
    assert c.train.seq_len == 512 and c.train.batch_size == 32
    assert (c.task.doc_stride, c.task.max_query_length, c.task.n_best_size,
            c.task.max_answer_length) == (128, 64, 20, 30)
    assert c.head.qa_joint and c.head.qa_beam_size == 20
    assert c.head.qa_answerable and c.head.qa_answerable_weight == 0.5
    assert c.task.qa_na_threshold is None
    task_obj = loop.build_task(c)
    assert task_obj.epochs == 2
    head = loop.build_model(None, task_obj, c).head
    assert head.joint and head.beam_size == 20 and head.answerable_weight == 0.5
    assert head.answerability == (task == 'squad2')
  c.task.qa_na_threshold = -1.0  # a float placeholder: overridable
  assert loop.build_task(c).qa_na_threshold == -1.0


def test_squad2_joint_end_to_end(tmp_path):
  """SQuAD 2.0 with the official defaults (joint head, beam, answerability classifier):
  trains, evaluates with the v2 metrics, writes predictions and null odds, saves a model
  that predicts; synthetic unanswerable questions."""
  _write_squad(tmp_path / 'data' / 'dev-v2.0.json', v2=True)
  config = _config('squad2', tmp_path, **{  # one length bucket: fewer shapes to compile
      'train.epochs': 1.0, 'train.seq_len': 48, 'train.length_buckets': 1,
      'task.doc_stride': 16, 'task.max_query_length': 8, 'data.train_split': 'train_from_dev',
      'data.eval_splits': 'eval_from_dev'})
  workdir = tmp_path / 'run'
  results = loop.finetune_and_evaluate(config, str(workdir))
  dev = results['dev']['eval_from_dev']
  assert results['main_metric'] == 'best_f1'
  assert {'exact', 'f1', 'best_f1', 'HasAns_f1', 'NoAns_f1'} <= set(dev), dev
  assert dev['NoAns_total'] == 4 and dev['HasAns_total'] == 8
  train_logs = [json.loads(l)['train'] for l in (workdir / 'metrics.jsonl').read_text(
      ).splitlines() if 'train' in json.loads(l)]
  assert train_logs and all(np.isfinite(r['answerable_loss']) for r in train_logs)
  preds = json.loads((workdir / 'predictions_eval_from_dev.json').read_text())
  odds = json.loads((workdir / 'null_odds_eval_from_dev.json').read_text())
  assert len(preds) == len(odds) == 12 and set(preds) == set(odds)
  saved = finetuned.load(workdir / 'model')
  assert saved.head['joint'] and saved.head['answerability'] and 'qa_joint' in saved.params
  from electra_jax import predict  # pylint: disable=import-outside-toplevel
  (row,) = predict.Predictor(workdir / 'model', batch_size=16)(
      [{'question': 'what is the code ?', 'context': 'the cat sat . the code is good .'}])
  assert {'answer', 'span', 'no_answer_score'} <= set(row)


def test_tagging_end_to_end(tmp_path):
  rng = random.Random(3)
  d = tmp_path / 'data'
  d.mkdir()
  for name, n in (('train.txt', 48), ('test.txt', 20)):
    sents = []
    for _ in range(n):
      sents.append('\n'.join(f'{w} NN {"B-NP" if i % 2 == 0 else "B-VP"}'
                             for i, w in enumerate(rng.choice(CHUNK_WORDS)
                                                   for _ in range(rng.randint(2, 6)))))
    (d / name).write_text('\n\n'.join(sents) + '\n')
  config = _config('chunk', tmp_path, **{'train.epochs': 1.0, 'data.train_split': 'train_full',
                                         'data.eval_splits': 'test'})
  results = loop.finetune_and_evaluate(config, str(tmp_path / 'run'))
  assert 'f1' in results['dev']['test'] and 0 <= results['dev']['test']['f1'] <= 1
  assert results['num_steps'] == 48 // 16


def test_missing_data_dir_is_a_clear_error(tmp_path):
  config = _config('rte', tmp_path, **{'data.data_dir': ''})
  with pytest.raises(ValueError, match='data_dir'):
    loop.finetune_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # a refused start writes nothing


def test_config_recipe():
  for size, lr, decay in (('small', 3e-4, 0.8), ('base', 1e-4, 0.8), ('large', 5e-5, 0.9)):
    c = finetune_config.get_config(f'task=mrpc,size={size}')
    assert (c.optimizer.learning_rate, c.optimizer.layerwise_lr_decay) == (lr, decay)
    assert c.train.batch_size == 32 and c.optimizer.eps == 1e-6
    assert c.optimizer.warmup_fraction == 0.1 and c.optimizer.weight_decay == 0.01
  with pytest.raises(ValueError, match='unknown config arg'):
    finetune_config.get_config('tsak=rte')


def test_multiseed_median_and_spread(tmp_path):
  config = finetune_config.get_config('task=rte,num_seeds=5,seed=3')
  scores = {3: 0.60, 4: 0.70, 5: 0.55, 6: 0.90, 7: 0.65}
  seen = []

  def fake_finetune(cfg, workdir):
    seen.append((cfg.seed, cfg.num_seeds, workdir))
    return {'task': 'rte', 'seed': cfg.seed, 'main_metric': 'accuracy', 'wall_time_s': 1.0,
            'dev': {'dev': {'accuracy': scores[cfg.seed], 'f1': 1 - scores[cfg.seed]}}}

  summary = multiseed.run_seeds(config, str(tmp_path), fake_finetune)
  assert [s[0] for s in seen] == [3, 4, 5, 6, 7] and all(s[1] == 1 for s in seen)
  assert seen[0][2].endswith('seed_3')
  acc = summary['dev']['dev']['accuracy']
  assert acc['median'] == pytest.approx(0.65) and acc['min'] == 0.55 and acc['max'] == 0.90
  assert acc['std'] == pytest.approx(np.std(list(scores.values())))
  assert summary['dev']['dev']['f1']['median'] == pytest.approx(0.35)
  assert json.loads((tmp_path / 'multiseed.json').read_text())['dev'] == summary['dev']
  assert (tmp_path / 'seeds.png').stat().st_size > 1000


def test_init_from_huggingface_dir(tmp_path):
  """An HF ElectraForSequenceClassification dir: encoder loaded, HF head dropped, ours missing."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf_cfg = transformers.ElectraConfig(
      vocab_size=len(VOCAB), embedding_size=16, hidden_size=32, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
  torch.manual_seed(0)
  hf = transformers.ElectraForSequenceClassification(hf_cfg).eval()
  d = tmp_path / 'hf'
  hf.save_pretrained(d)
  (d / 'vocab.txt').write_text('\n'.join(VOCAB) + '\n')
  ckpt = weights.load(str(d))
  assert ckpt.kind == 'huggingface' and ckpt.vocab == d / 'vocab.txt'
  config = _config('rte', tmp_path)
  task = loop.build_task(config)
  model_cfg = electra.ModelConfig.from_config(ckpt.model_config)
  model = loop.build_model(model_cfg, task, config)
  params_shape = nn.meta.unbox(jax.eval_shape(
      lambda r: loop._init_params(model, 32, r), jax.random.key(0)))
  tx, _ = loop.make_optimizer(config, params_shape, 1, 10)
  mesh = loop.sharding.make_mesh(config.mesh)
  state, _, missing, unexpected = loop.create_state(model, tx, mesh, 32, jax.random.key(0),
                                                        ckpt.params)
  assert missing == ['classifier/dense/bias', 'classifier/dense/kernel'] and unexpected == []
  # Same encoder output as the HF model's body.
  ids = np.array([[2, 7, 8, 9, 3, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  params = jax.device_get(state.params)
  enc = {k: params[k] for k in ('embeddings', 'discriminator')}
  ours = electra.ElectraModel(model_cfg).apply({'params': enc}, ids, mask, 0 * ids, True)
  with torch.no_grad():
    theirs = hf.electra(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state
  np.testing.assert_allclose(np.asarray(ours)[0, :5], theirs.numpy()[0, :5], atol=2e-4)
