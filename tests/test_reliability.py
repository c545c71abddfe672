"""Reliability guarantees (README "Reliability"), through the real entry points in subprocesses.

One test per class: a refused start changes nothing in the workdir; one run per workdir;
validation before expensive work; no silent garbage in (data build, vocab training); no
silent garbage out (skipped steps, a non-finite held-out loss, fine-tuning from a
checkpoint); files named in load errors; logs rolled back with the checkpoint. The runs are
tiny and share one pre-training run and the session's data cache.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from electra_jax import rundir
from electra_jax import runlog
from runtime_util import REPO, WORDS, corpus, env, main_args, run_main  # noqa: F401  (corpus: fixture)

RUN = {'train.num_steps': 4, 'train.checkpoint_every': 2, 'train.log_every': 1,
       'train.eval_batches': 0, 'train.keep_checkpoints': 3}


def _snapshot(root):
  """{relative path: sha1} of every file, plus every directory (as None)."""
  out = {}
  for dirpath, dirs, files in os.walk(root):
    for d in dirs:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in files:
      p = os.path.join(dirpath, f)
      out[os.path.relpath(p, root)] = hashlib.sha1(open(p, 'rb').read()).hexdigest()
  return out


def _error_line(r) -> str:
  """The one `error:` line of a failed run; no traceback."""
  assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  return lines[0]


def _run(args, timeout=240):
  return subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module')
def base_run(corpus, tmp_path_factory):  # noqa: F811
  """A finished 4-step run (checkpoints 2 and 4, export), shared read-only: copy to change."""
  wd = tmp_path_factory.mktemp('base') / 'run'
  r = run_main(wd, corpus, **RUN)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return wd


def _copy(src, tmp_path, name='run'):
  dst = tmp_path / name
  shutil.copytree(src, dst)
  return dst


# ----------------------------------------------------------------------------- 1. refused starts


def test_refused_start_leaves_the_workdir_as_it_was(base_run, corpus, tmp_path):  # noqa: F811
  from electra_jax.io import weights
  wd = _copy(base_run, tmp_path)
  before = _snapshot(wd)
  line = _error_line(run_main(wd, corpus, **RUN, **{'model.hidden_size': 128}))
  assert 'model.hidden_size: 64 -> 128' in line and 'were trained with another config' in line
  assert 'run the original command again' in line and 'new --workdir' in line
  assert _snapshot(wd) == before  # config.json included
  assert not (wd / 'checkpoints.corrupt').exists()
  # The run still loads as it was trained.
  cfg, _ = weights.load_pretraining_checkpoint(wd)
  assert cfg['model']['hidden_size'] == 64 and cfg['step'] == 4

  # Checkpoints of an older version record no config, and a refused start of that version
  # overwrote config.json with the rejected one. A model change is still refused, by the
  # checkpoints' shapes, and not called corruption...
  for meta in (wd / 'checkpoints').glob('*/meta/metadata'):
    m = json.loads(meta.read_text())
    del m['config']
    meta.write_text(json.dumps(m))
  cfg = json.loads((wd / 'config.json').read_text())
  cfg['model']['hidden_size'] = 128
  (wd / 'config.json').write_text(json.dumps(cfg))
  before = _snapshot(wd)
  line = _error_line(run_main(wd, corpus, **RUN, **{'model.hidden_size': 128}))
  assert 'holds a model of another shape' in line and 'intact' in line
  assert 'corrupt' not in line
  assert _snapshot(wd) == before and not (wd / 'checkpoints.corrupt').exists()
  # ... and the original command resumes, with a warning, and repairs config.json.
  r = run_main(wd, corpus, **RUN)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert 'model.hidden_size: 128 -> 64' in r.stderr and 'Resumed from the checkpoint at step 4' in r.stdout
  assert json.loads((wd / 'config.json').read_text())['model']['hidden_size'] == 64


def test_validation_errors_leave_no_workdir_and_build_nothing(corpus, tmp_path):  # noqa: F811
  text, vocab, _ = corpus
  cache = tmp_path / 'cache'
  for override, flag, expected in (
      ({'train.seq_len': 1024}, [], 'max_position_embeddings=512'),
      ({'model.vocab_size': 300}, [], f'vocabulary ({vocab}) has 128'),
      ({}, ['--heartbeat_timeout=0'], '--heartbeat_timeout=0: expected a positive number')):
    wd = tmp_path / 'new'
    line = _error_line(_run(main_args(wd, (text, vocab, cache), **override) + flag))
    assert expected in line, line
    assert not wd.exists()
    assert not list(cache.glob('pretrain-*')) if cache.exists() else True  # no data built


def test_rollback_keeps_each_step_logged_once(base_run, corpus, tmp_path):  # noqa: F811
  """A fallback past a corrupt checkpoint truncates the logs to the step it resumes from."""
  from electra_jax import plot
  wd = _copy(base_run, tmp_path)
  for f in (wd / 'checkpoints' / '4' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\0corrupt' * 4)
  r = run_main(wd, corpus, **{**RUN, 'train.num_steps': 6})  # num_steps may change on resume
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 2' in r.stdout
  assert 'train.num_steps: 4 -> 6' in r.stdout
  assert 'Rolled the logs back to step 2' in r.stdout
  steps = [json.loads(l)['step'] for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]  # in the file itself, not only through read_jsonl
  assert json.loads((wd / 'config.json').read_text())['train']['num_steps'] == 6
  assert plot.plot_workdirs([wd], tmp_path / 'c.png').stat().st_size > 0


# ----------------------------------------------------------------------------- 2. one run per workdir


def _wait_for_lock(proc, path, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists():
      try:
        holder = json.loads(path.read_text())
        if holder['pid'] == proc.pid:
          return holder
      except (ValueError, KeyError):
        pass
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  raise AssertionError('the run took no lock')


def test_one_run_per_workdir(base_run, corpus, tmp_path):  # noqa: F811
  wd = _copy(base_run, tmp_path)
  holder = subprocess.Popen(main_args(wd, corpus, **{**RUN, 'train.num_steps': 10**6,
                                                     'train.checkpoint_every': 10**6}),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  try:
    _wait_for_lock(holder, wd / rundir.LOCK_NAME)
    who = f'PID {holder.pid} on host {socket.gethostname()}'
    line = _error_line(run_main(wd, corpus, **RUN))
    assert f'in use by a pre-training run ({who}' in line, line
    ft = _run([sys.executable, '-m', 'electra_jax.finetune',
               '--config=configs/finetune.py:task=rte,size=tiny,runlocal=True', f'--workdir={wd}'])
    assert ft.returncode != 0 and who in ft.stderr, ft.stderr[-2000:]
    sweep = _run([sys.executable, '-m', 'electra_jax.sweep',
                  '--config=configs/ablations/generator_size.py:size=tiny', f'--workdir={wd}'])
    assert sweep.returncode != 0 and who in sweep.stderr, sweep.stdout[-1000:] + sweep.stderr[-2000:]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  # SIGKILL leaves the lock file but no lock: the next start goes ahead.
  assert (wd / rundir.LOCK_NAME).exists()
  r = _run(main_args(wd, corpus, **RUN) + ['--export_only'])
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert not (wd / rundir.LOCK_NAME).exists()  # removed on a clean exit


# ----------------------------------------------------------------------------- 4. garbage in


def test_garbage_in_is_refused_with_the_limit_named(corpus, tmp_path):  # noqa: F811
  _, vocab, _ = corpus
  cache = tmp_path / 'cache'
  cache.mkdir()
  # A folder left by a killed build (its lock file is free): cleaned up by the next build.
  stale = cache / '.tmp-pretrain-0123456789abcdef-dead0000'
  (stale / 'eval').mkdir(parents=True)
  (cache / (stale.name + '.lock')).touch()
  rng = random.Random(0)
  cases = {
      'random.bin': (bytes(rng.randrange(256) for _ in range(200_000)),
                     'data.max_undecodable_fraction=0.5'),
      'one_line.txt': ((' '.join(rng.choice(WORDS) for _ in range(20_000)) + '\n').encode(),
                       'data.max_truncated_fraction=0.5'),
      'two_docs.txt': (b'the cat sat on the mat .\n\nthe dog ran far .\n',
                       'fewer than one global batch (train.batch_size=8)'),
  }
  for name, (data, expected) in cases.items():
    src = tmp_path / name
    src.write_bytes(data)
    wd = tmp_path / f'run_{name}'
    line = _error_line(_run(main_args(wd, (src, vocab, cache), **{'data.eval_fraction': 0.0})))
    assert expected in line and str(src) in line, line
    assert not wd.exists()
    assert not list(cache.glob('.tmp-pretrain-*')) and not list(cache.glob('pretrain-*'))

  # The vocab trainer: refuses random bytes, warns when it cannot give the size asked for.
  out = tmp_path / 'v.txt'
  r = _run([sys.executable, '-m', 'electra_jax.data.tokenizer', 'train', '--input',
            str(tmp_path / 'random.bin'), '--vocab_size', '500', '--output', str(out)])
  assert 'not valid UTF-8' in _error_line(r) and not out.exists()
  many = tmp_path / 'many_chars.txt'
  many.write_text(' '.join(chr(0x4e00 + i) + chr(0x4e00 + i + 1) for i in range(300)) + '\n')
  r = _run([sys.executable, '-m', 'electra_jax.data.tokenizer', 'train', '--input', str(many),
            '--vocab_size', '50', '--output', str(out)])
  assert r.returncode == 0, r.stderr[-2000:]
  n = len(out.read_text().splitlines())
  assert f'{out} has {n} tokens, not the 50 asked for' in r.stderr and n > 50

  # A vocab with duplicate lines: warned with the line numbers; a duplicated special refused.
  dup = tmp_path / 'dup_vocab.txt'
  dup.write_text(vocab.read_text() + 'the\ncat\n')
  lines = vocab.read_text().splitlines()
  build = [sys.executable, '-m', 'electra_jax.data.corpus', '--input', str(tmp_path / 'two_docs.txt'),
           '--seq_len', '32', '--num_workers', '0', '--vocab']
  r = _run(build + [str(dup), '--output', str(tmp_path / 'shards')])
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"'the' at lines {lines.index('the') + 1}, {len(lines) + 1}" in r.stderr
  dup.write_text(vocab.read_text() + '[MASK]\n')
  line = _error_line(_run(build + [str(dup), '--output', str(tmp_path / 'shards2')]))
  assert f'[MASK] at lines 5, {len(lines) + 1}' in line


# ----------------------------------------------------------------------------- 5. garbage out


def test_nonfinite_heldout_loss_never_exits_0(corpus, tmp_path):  # noqa: F811
  # lr 1e30 blows the params up at step 1: every later step is skipped and the model is NaN.
  wd = tmp_path / 'run'
  line = _error_line(run_main(wd, corpus, **{
      'optimizer.learning_rate': 1e30, 'optimizer.warmup_steps': 0, 'train.nan_policy': 'skip',
      'train.max_skipped_fraction': 1.0, 'train.num_steps': 4, 'train.log_every': 1,
      'train.eval_every': 4, 'train.eval_batches': 1}))
  assert 'held-out loss at step 4 is nan' in line and 'not exported' in line
  assert not (wd / 'export').exists()
  assert [r['finite'] for r in runlog.read_jsonl(wd / 'metrics.jsonl')] == [1, 0, 0, 0]


def _rte(root):
  rng = random.Random(0)
  d = root / 'RTE'
  d.mkdir(parents=True)
  for split, n in (('train', 16), ('dev', 8)):
    rows = ['index\tsentence1\tsentence2\tlabel'] + [
        f'{i}\t{" ".join(rng.choice(WORDS) for _ in range(6))}\t'
        f'{" ".join(rng.choice(WORDS) for _ in range(5))}\t'
        f'{rng.choice(["entailment", "not_entailment"])}' for i in range(n)]
    (d / f'{split}.tsv').write_text('\n'.join(rows) + '\n')
  return root


def test_finetune_from_a_checkpoint_applies_or_refuses_model_keys(base_run, tmp_path):
  data = _rte(tmp_path / 'glue')

  def cmd(arg='task=rte,runlocal=True'):
    return [sys.executable, '-m', 'electra_jax.finetune', f'--config=configs/finetune.py:{arg}',
            f'--config.train.init_from={base_run / "export"}', f'--config.data.data_dir={data}',
            '--config.train.seq_len=32', f'--workdir={wd}']

  wd = tmp_path / 'ft'
  for args, expected in (
      (cmd() + ['--config.model.hidden_size=128'],
       'model.hidden_size=128 (--config.model.hidden_size) but the checkpoint has 64'),
      (cmd('task=rte,size=small,runlocal=True'),
       'model.hidden_size=256 (size=small) but the checkpoint has 64')):
    assert expected in _error_line(_run(args))
    assert not wd.exists()  # refused before anything was written
  r = _run(cmd() + ['--config.model.dropout_rate=0.0', '--config.model.attention_dropout_rate=0.0'])
  assert r.returncode == 0, r.stderr[-3000:]
  ran = json.loads((wd / 'config.json').read_text())['model']
  assert ran['dropout_rate'] == 0.0 and ran['attention_dropout_rate'] == 0.0  # applied
  assert ran['hidden_size'] == 64 and ran['vocab_size'] == 128  # the checkpoint's
  assert json.loads((wd / 'results.json').read_text())['model']['dropout_rate'] == 0.0


# ----------------------------------------------------------------------------- 6. files named


def test_load_errors_name_the_file(base_run, corpus, tmp_path):  # noqa: F811
  text, vocab, cache = corpus
  # A vocab that is not text.
  bad_vocab = tmp_path / 'vocab.bin'
  bad_vocab.write_bytes(vocab.read_bytes()[:50] + b'\xff\xfe\x00garbage\n')
  line = _error_line(_run(main_args(tmp_path / 'a', (text, bad_vocab, cache))))
  assert f'vocab file {bad_vocab} is not UTF-8' in line

  # A cut metadata.json, then a cut shard, of a copy of the session's data cache.
  cache2 = tmp_path / 'cache'
  shutil.copytree(cache, cache2)
  data_dir = max(cache2.glob('pretrain-*'), key=lambda p: p.stat().st_mtime)
  meta = data_dir / 'metadata.json'
  good = meta.read_text()
  meta.write_text(good[:len(good) // 2])
  line = _error_line(_run(main_args(tmp_path / 'b', (text, vocab, cache2), **RUN)))
  assert f'{meta} is truncated or corrupt' in line
  meta.write_text(good)
  shard = data_dir / json.loads(good)['shards'][0]
  shard.write_bytes(shard.read_bytes()[:100])
  line = _error_line(_run(main_args(tmp_path / 'c', (text, vocab, cache2), **RUN)))
  assert f'data shard {shard} is truncated or corrupt' in line

  # A cut export msgpack (conversion), a cut safetensors and a pickle .bin (HF import).
  from electra_jax.io import huggingface, weights
  export = _copy(base_run / 'export', tmp_path, 'export')
  msgpack = export / 'pretrainer.msgpack'
  msgpack.write_bytes(msgpack.read_bytes()[:1000])
  r = _run([sys.executable, '-m', 'electra_jax.io.convert', '--from', 'electra_jax', '--to', 'hf',
            str(export), str(tmp_path / 'hf_out')])
  assert f'{msgpack} is truncated or corrupt' in _error_line(r)
  hf = tmp_path / 'hf'
  hf.mkdir()
  (hf / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": ')
  with pytest.raises(ValueError, match=f'{hf / "model.safetensors"} is truncated or corrupt'):
    huggingface.read_state_dict(hf)
  torch = pytest.importorskip('torch')
  (hf / 'model.safetensors').unlink()
  torch.save({'w': torch.zeros(2), 'config': weights.Pretrained}, hf / 'pytorch_model.bin')
  with pytest.raises(ValueError, match='not weights-only; electra_jax reads only safetensors'):
    huggingface.read_state_dict(hf)
