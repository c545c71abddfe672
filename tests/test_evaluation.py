"""Held-out evaluation: per-batch masking draws, determinism, standard errors, baselines."""

import jax
import numpy as np

from conftest import tiny_config
from electra_jax.pretrain import objectives
from electra_jax.pretrain import evaluation
from electra_jax import sharding
from electra_jax.pretrain import loop


def _setup():
  c = tiny_config()
  c.model.num_layers = 1
  model = loop.build_model(c)
  tx, _ = loop.build_optimizer(c)
  mesh = sharding.make_mesh(c.mesh)
  state, shardings = loop.create_train_state(c, model, tx, mesh, jax.random.key(0))
  eval_fn = loop.make_eval_step(c, model, mesh, shardings)
  return c, state.params, eval_fn, mesh


def _batches(c, n):
  rng = np.random.RandomState(0)
  B, L = c.train.batch_size, c.train.seq_len
  row = rng.randint(5, c.model.vocab_size, L).astype(np.int32)
  row[0], row[-1] = c.tokens.cls_id, c.tokens.sep_id
  out = []
  for _ in range(n):
    ids = rng.randint(5, c.model.vocab_size, (B, L)).astype(np.int32)
    ids[:, 0], ids[:, -1] = c.tokens.cls_id, c.tokens.sep_id
    ids[0] = row  # the same row at the top of every batch
    out.append({'input_ids': ids, 'input_mask': np.ones((B, L), np.int32),
                'segment_ids': np.zeros((B, L), np.int32)})
  return out


def test_each_batch_gets_its_own_masks_and_a_rerun_is_identical():
  c, params, eval_fn, mesh = _setup()
  batches = _batches(c, 3)
  seen = []

  def recording(params, batch, rng, step):
    metrics, aux = eval_fn(params, batch, rng, step)
    seen.append(np.asarray(aux['disc_probs'])[0])  # the shared row's probabilities
    return metrics, aux

  obj = objectives.ObjectiveConfig.from_config(c)
  rng = jax.random.key(7)
  first = evaluation.evaluate(recording, params, batches, rng, 0, mesh, obj)
  # The same row in batches 0, 1, 2 is masked and sampled differently.
  assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
  again = evaluation.evaluate(recording, params, batches, rng, 0, mesh, obj)
  assert first == again
  np.testing.assert_array_equal(seen[0], seen[3])
  assert first['eval_examples'] == 3 * c.train.batch_size
  for k in ('disc_accuracy', 'disc_auc'):  # (an untrained generator's accuracy is 0, SE 0)
    assert 0 < first[f'eval_{k}_stderr'] < 0.5
  assert first['eval_baseline_disc_accuracy'] == 1 - first['eval_replaced_fraction']
  assert evaluation.describe(first).startswith(f'{3 * c.train.batch_size} seqs')


def test_unigram_baseline_and_standard_errors():
  assert evaluation.unigram_accuracy(np.array([5, 5, 5, 6, 7, 8])) == 0.5
  assert np.isnan(evaluation.unigram_accuracy(np.array([], np.int32)))
  assert abs(evaluation.binomial_stderr(0.5, 2500) - 0.01) < 1e-12
  # Hanley-McNeil: chance-level AUC with 1000 + 1000 examples -> about 0.0129.
  assert abs(evaluation.auc_stderr(0.5, 1000, 1000) - 0.01291) < 1e-4
  assert evaluation.auc_stderr(0.9, 1000, 1000) < evaluation.auc_stderr(0.5, 1000, 1000)


def test_verdict_names_the_outcome():
  m = {'eval_disc_auc': 0.86, 'eval_disc_auc_stderr': 0.01, 'eval_gen_accuracy': 0.3,
       'eval_gen_accuracy_stderr': 0.01, 'eval_baseline_gen_accuracy': 0.05}
  assert 'has learned' in evaluation.verdict(m) and 'vs 5.0% for a unigram' in evaluation.verdict(m)
  m.update(eval_disc_auc=0.51, eval_gen_accuracy=0.05)
  assert 'has not learned' in evaluation.verdict(m) and 'does not beat' in evaluation.verdict(m)
  m.update(eval_disc_auc=0.6)
  assert 'only starting' in evaluation.verdict(m)
