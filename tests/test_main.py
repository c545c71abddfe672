"""`python -m electra_jax.main` end to end, its outputs, and its errors for bad inputs."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from electra_jax.io import checkpoint
from electra_jax import runlog
from electra_jax import plot
from electra_jax.pretrain import loop
from electra_jax.io import weights
from electra_jax.models import electra
from runtime_util import REPO, VOCAB_SIZE, corpus, env, run_main  # noqa: F401  (corpus: fixture)

import conftest

TRAIN_KEYS = ('step', 'loss', 'gen_loss', 'disc_loss', 'gen_accuracy', 'disc_accuracy',
              'learning_rate', 'seq_per_s', 'grad_norm', 'param_norm')
EVAL_KEYS = ('eval_loss', 'eval_gen_accuracy', 'eval_disc_accuracy', 'eval_disc_precision',
             'eval_disc_recall', 'eval_disc_auc')


@pytest.fixture(scope='module')
def trained(corpus, tmp_path_factory):  # noqa: F811
  """One 6-step run through main (its workdir, its CompletedProcess), shared by the tests
  of its outputs and of continued pre-training from its export."""
  wd = tmp_path_factory.mktemp('main') / 'run'
  r = run_main(wd, corpus, **{'train.num_steps': 6, 'train.log_every': 2, 'train.eval_every': 3,
                              'train.checkpoint_every': 3, 'train.eval_batches': 2})
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return wd, r


def test_trains_end_to_end_through_main(trained, corpus, tmp_path):  # noqa: F811
  wd, r = trained
  cfg = json.loads((wd / 'config.json').read_text())
  assert cfg['train']['num_steps'] == 6 and cfg['model']['vocab_size'] == VOCAB_SIZE
  assert cfg['data']['source'] == str(corpus[0])

  train_recs = runlog.read_jsonl(wd / 'metrics.jsonl')
  assert [x['step'] for x in train_recs] == [2, 4, 6]
  for rec in train_recs:
    assert set(TRAIN_KEYS) <= set(rec)
    assert np.isfinite(rec['loss']) and rec['seq_per_s'] > 0
  assert train_recs[0]['learning_rate'] > 0
  eval_recs = runlog.read_jsonl(wd / 'eval.jsonl')
  assert [x['step'] for x in eval_recs] == [3, 6]
  for rec in eval_recs:
    assert set(EVAL_KEYS) <= set(rec)
    assert 0 <= rec['eval_disc_accuracy'] <= 1 and rec['eval_tokens'] > 0
  # Same held-out batches and eval key each time: only the params differ.
  assert eval_recs[0]['eval_tokens'] == eval_recs[1]['eval_tokens']
  assert list((wd / 'tensorboard').glob('events.out.tfevents.*'))
  assert sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit()) == [3, 6]
  assert (wd / 'curves.png').stat().st_size > 0
  # The user is told where things are and what to run next.
  assert 'train step       6:' in r.stdout and 'eval  step       6:' in r.stdout
  # Each eval names its size and baselines; the run ends with a verdict on the discriminator.
  assert '(unigram ' in r.stdout and '(chance 0.5)' in r.stdout
  assert 'Held-out at step 6:' in r.stdout and 'The discriminator ' in r.stdout
  assert {'eval_baseline_gen_accuracy', 'eval_disc_auc_stderr'} <= set(eval_recs[-1])
  assert f'--config.train.init_from={wd / "export"}' in r.stdout

  # The export loads, has the ElectraModel structure, and equals the last checkpoint's cut.
  model_cfg, params = checkpoint.load_exported(wd / 'export')
  assert model_cfg['model']['vocab_size'] == VOCAB_SIZE and model_cfg['step'] == 6
  assert model_cfg['tokens']['mask_id'] == 4
  assert len((wd / 'export' / 'vocab.txt').read_text().splitlines()) == VOCAB_SIZE
  mcfg = electra.ModelConfig.from_config(model_cfg['model'])
  z = np.zeros((1, 8), np.int32)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      electra.ElectraModel(mcfg).init(jax.random.key(0), z, z + 1, z)))
  assert jax.tree.structure(shapes['params']) == jax.tree.structure(params)
  for want, got in zip(jax.tree.leaves(shapes['params']), jax.tree.leaves(params)):
    assert want.shape == got.shape
  hidden = jax.eval_shape(lambda p: electra.ElectraModel(mcfg).apply({'params': p}, z, z + 1, z),
                          params)
  assert hidden.shape == (1, 8, mcfg.hidden_size)
  ck_cfg, ck_params = weights.load_pretraining_checkpoint(wd)
  assert ck_cfg['step'] == 6
  for a, b in zip(jax.tree.leaves(ck_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  _, gen = checkpoint.load_exported(wd / 'export', which='generator')
  assert set(gen) == {'embeddings', 'generator', 'generator_predictions'}
  _, full = checkpoint.load_exported(wd / 'export', which='pretrainer')
  assert 'discriminator_predictions' in full and 'generator_predictions' in full

  # Learning curves of several workdirs side by side.
  out = tmp_path / 'both.png'
  plot.plot_workdirs([wd, wd], out)
  assert out.stat().st_size > 0


def _main_fails(*flags):
  r = subprocess.run([sys.executable, '-m', 'electra_jax.main', *flags], cwd=REPO, env=env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  return r.stderr


def test_bad_config_keys_and_types_fail_naming_the_key(tmp_path):
  err = _main_fails('--config=configs/pretrain.py:tiny', f'--workdir={tmp_path}',
                    '--config.train.no_such_key=1')
  assert 'no_such_key' in err
  err = _main_fails('--config=configs/pretrain.py:tiny', f'--workdir={tmp_path}',
                    '--config.train.num_steps=lots')
  assert 'num_steps' in err
  err = _main_fails('--config=configs/pretrain.py:tiny,sizee=small', f'--workdir={tmp_path}')
  assert 'sizee' in err
  assert not (tmp_path / 'config.json').exists()


def _config(corpus_files, **overrides):  # noqa: F811
  text, vocab, _ = corpus_files
  c = conftest.tiny_config('tiny,runlocal=True')
  c.data.source, c.data.vocab, c.data.num_workers = str(text), str(vocab), 0
  c.data.eval_fraction = 0.2
  c.update_from_flattened_dict(overrides)  # {'train.seq_len': 32, ...}
  return c


def test_missing_workdir_parent_is_a_clear_error(corpus, tmp_path):  # noqa: F811
  missing = tmp_path / 'no' / 'such'
  with pytest.raises(FileNotFoundError, match=f'workdir parent {missing} does not exist'):
    loop.train_and_evaluate(_config(corpus), missing / 'run', cache_dir=corpus[2])


def test_data_vocab_mismatch_names_both_values(corpus, tmp_path):  # noqa: F811
  with pytest.raises(ValueError, match=r'vocab mismatch: config.model.vocab_size=200 .* has 128'):
    loop.train_and_evaluate(_config(corpus, **{'model.vocab_size': 200}), tmp_path / 'a',
                             cache_dir=corpus[2])
  with pytest.raises(ValueError, match=r'vocab mismatch: config.tokens.mask_id=7 .* at id 4'):
    loop.train_and_evaluate(_config(corpus, **{'tokens.mask_id': 7}), tmp_path / 'b',
                             cache_dir=corpus[2])


def test_vocab_mismatch_through_main_is_one_line(corpus, tmp_path):  # noqa: F811
  r = run_main(tmp_path / 'run', corpus, **{'model.vocab_size': 300})
  assert r.returncode == 1
  lines = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'vocab_size=300' in lines[0] and '128 tokens' in lines[0]
  assert 'Traceback' not in r.stderr


@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_non_finite_loss_stops_or_skips(corpus, tmp_path, policy):  # noqa: F811
  # A huge learning rate blows the params up at step 1, so step 2 onwards is NaN/Inf.
  wd = tmp_path / 'run'
  r = run_main(wd, corpus, **{'optimizer.learning_rate': 1e30, 'optimizer.warmup_steps': 0,
                              'train.nan_policy': policy, 'train.num_steps': 4,
                              'train.log_every': 1, 'train.checkpoint_every': 1,
                              'train.eval_batches': 0})
  if policy == 'stop':
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(err) == 1 and 'non-finite loss or gradient at step 2' in err[0]
    assert 'last good checkpoint is step 1' in err[0]
    steps = sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit())
    assert steps == [1]  # the non-finite state was never saved
  else:
    # Skipped steps count; past train.max_skipped_fraction (0.1 of the 4-step window: the
    # first skip) the run stops as with stop, naming the limit.
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(err) == 1 and 'train.max_skipped_fraction=0.1' in err[0], r.stderr[-3000:]
    assert '1 of the last 4 steps (up to step 2)' in err[0]
    recs = runlog.read_jsonl(wd / 'metrics.jsonl')
    assert [x['finite'] for x in recs] == [1, 0]


def test_continued_pretraining_from_an_export(trained, corpus, tmp_path):  # noqa: F811
  """train.init_from starts a new run from another run's exported weights."""
  first, second = trained[0], tmp_path / 'second'
  # Learning rate 0: the second run's single step leaves the imported weights as they are.
  r = run_main(second, corpus, **{'train.num_steps': 1, 'train.eval_batches': 0,
                                  'train.init_from': str(first / 'export'),
                                  'optimizer.learning_rate': 0.0})
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Continuing pre-training from the weights in' in r.stdout
  for which in ('discriminator', 'generator'):
    _, a = checkpoint.load_exported(first / 'export', which=which)
    _, b = checkpoint.load_exported(second / 'export', which=which)
    jax.tree.map(np.testing.assert_array_equal, a, b)
  r = run_main(tmp_path / 'third', corpus, **{'train.init_from': str(tmp_path / 'nowhere')})
  assert r.returncode == 1 and 'train.init_from=' in r.stderr


def test_finetune_hint_names_the_size_only_when_the_shape_is_that_size():
  from configs import finetune as finetune_config  # pylint: disable=g-import-not-at-top
  from configs import pretrain as pretrain_config  # pylint: disable=g-import-not-at-top
  from electra_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  config = pretrain_config.get_config('tiny')
  assert ',size=tiny ' in main_lib.finetune_hint(config, '/x/export')
  config.model.hidden_size = 128  # a reshaped tiny: size=tiny would be refused by fine-tuning
  hint = main_lib.finetune_hint(config, '/x/export')
  assert 'size=' not in hint.split('\n')[0] and 'learning_rate' in hint
  arg = hint.split('--config=configs/finetune.py:')[1].split()[0]
  assert finetune_config.get_config(arg).size == 'small'  # the command's config parses
