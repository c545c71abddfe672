"""Length-bucketed batching for fine-tuning: seeded, complete, and output-preserving."""

import functools

import ml_collections
import numpy as np
import pytest

from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.finetune import inference
from electra_jax.finetune import loop
from electra_jax.finetune.tasks import base
from electra_jax.finetune.tasks import chunking
from electra_jax.finetune.tasks import glue
from electra_jax.finetune.tasks import squad
from electra_jax.models import heads
from test_predict import SEQ_LEN, saved_model


def _arrays(n=203, seq_len=32, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.minimum(seq_len, rng.geometric(0.08, n) + 2)  # mostly short, some full
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
  return {'input_ids': mask * 7, 'input_mask': mask, 'segment_ids': np.zeros_like(mask),
          'label': np.arange(n, dtype=np.int32), 'labels': mask * 2}, lengths


def test_bucket_lengths():
  assert base.bucket_lengths(128, 4) == (32, 64, 96, 128)
  assert base.bucket_lengths(384, 4) == (96, 192, 288, 384)
  assert base.bucket_lengths(100, 3) == (40, 72, 100)  # multiples of 8, the last seq_len
  assert base.bucket_lengths(128, 1) == (128,)


def test_bucketed_train_batches_seeded_complete_and_cut():
  arrays, lengths = _arrays()
  buckets = base.bucket_lengths(32, 4)
  epoch = list(base.train_batches(arrays, 8, seed=3, epoch=1, buckets=buckets))
  assert len(epoch) == 203 // 8 == base.num_train_steps(203, 8, 1)
  rows = np.concatenate([b['label'] for b in epoch])
  assert len(set(rows.tolist())) == len(rows) == 25 * 8  # no row twice
  # The rows that sit out are the unbucketed permutation's remainder: random, not the longest.
  perm = np.random.default_rng([3, 1]).permutation(203)
  assert set(range(203)) - set(rows.tolist()) == set(perm[200:].tolist())
  shapes = set()
  for b in epoch:
    length = b['input_ids'].shape[1]
    shapes.add(length)
    assert length in buckets and lengths[b['label']].max() <= length
    assert b['labels'].shape == b['input_mask'].shape == (8, length)
    smaller = [x for x in buckets if x < length]
    assert not smaller or lengths[b['label']].max() > smaller[-1] or len(
        {int(np.searchsorted(buckets, lengths[r])) for r in b['label']}) > 1
    np.testing.assert_array_equal(b['input_mask'], arrays['input_mask'][b['label'], :length])
  assert len(shapes) >= 3  # a handful of shapes, not one
  again = list(base.train_batches(arrays, 8, seed=3, epoch=1, buckets=buckets))
  assert all((a['label'] == b['label']).all() for a, b in zip(epoch, again))
  other = list(base.train_batches(arrays, 8, seed=3, epoch=2, buckets=buckets))
  assert any((a['label'] != b['label']).any() for a, b in zip(epoch, other))
  tokens = sum(b['input_ids'].size for b in epoch)
  assert tokens < 0.6 * len(epoch) * 8 * 32  # far less padding than every batch at 32


@pytest.mark.parametrize('task_name', ['sst2', 'squad1', 'squad1_independent', 'chunk'])
def test_bucketed_predict_equals_full_length(task_name, tmp_path):
  # squad1: the joint head (default, beam 20 > the shortest bucket), or the independent one.
  head = {'qa_joint': False} if task_name == 'squad1_independent' else {}
  task_name = task_name.split('_')[0]
  path, model, params, tok = saved_model(tmp_path, task_name, **head)
  task = loop.build_task(ml_collections.ConfigDict(dict(task=dict(
      name=task_name, doc_stride=8, max_query_length=8, n_best_size=20, max_answer_length=30))))
  rng = np.random.default_rng(0)
  words = [w for w in tok.tokens[5:] if w.isalpha()]
  sent = lambda n: ' '.join(rng.choice(words, n))  # noqa: E731
  if task_name == 'sst2':
    exs = [glue.PairExample(str(i), i, sent(int(n)), None, None)
           for i, n in enumerate(rng.integers(1, 40, 21))]
  elif task_name == 'squad1':
    exs = [squad.SquadExample(str(i), sent(3), tuple(sent(int(n)).split()), (), None, None, None)
           for i, n in enumerate(rng.integers(2, 40, 9))]
  else:
    exs = [chunking.ChunkExample(str(i), tuple(sent(int(n)).split()), ('',) * int(n),
                                 ('O',) * int(n)) for i, n in enumerate(rng.integers(1, 40, 21))]
  feats = task.featurize(exs, tok, SEQ_LEN, False)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  fn = state_lib.jit(functools.partial(loop.predict_step, model=model), mesh,
                     ('replicated', 'batch'), 'batch')
  full = inference.predict(fn, params, feats, 8, mesh)
  bucketed = inference.predict(fn, params, feats, 8, mesh, buckets=base.bucket_lengths(SEQ_LEN, 4))
  assert full.keys() == bucketed.keys()
  real = feats.arrays['input_mask'].astype(bool)
  if 'start_top_index' in full:
    # The joint head's beam: past a short bucket's end its picks differ (padding instead of
    # masked positions), so compare where it picks [CLS] or the context, and the answers.
    nbest_full, nbest_bucketed = task.postprocess(feats, full)[2], task.postprocess(
        feats, bucketed)[2]
    for qid, entries in nbest_full.items():
      assert [x['text'] for x in entries] == [x['text'] for x in nbest_bucketed[qid]]
    s_ok = full['start_top_log_probs'] > heads.MASK_LOGIT / 2
    e_ok = s_ok[..., None] & (full['end_top_log_probs'] > heads.MASK_LOGIT / 2)
    assert s_ok.sum() > len(feats) and e_ok.sum() > len(feats)
    for k, ok in (('start_top_index', s_ok), ('start_top_log_probs', s_ok),
                  ('end_top_index', e_ok), ('end_top_log_probs', e_ok)):
      assert full[k].shape == bucketed[k].shape
      np.testing.assert_allclose(full.pop(k)[ok], bucketed.pop(k)[ok], atol=2e-5, err_msg=k)
  for k in full:
    assert full[k].shape == bucketed[k].shape
    per_row = full[k].ndim == 1 or (full[k].ndim == 2 and k == 'logits')
    a, b = (full[k], bucketed[k]) if per_row else (full[k][real], bucketed[k][real])
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=k)
  if task_name == 'squad1':  # padding keeps the model's padding logit
    assert (bucketed['start_logits'][~real] == full['start_logits'][~real]).all()
