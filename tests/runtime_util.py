"""Shared helpers for the training-runtime tests (test_main, test_resume, test_checkpoint).

A tiny corpus and a 128-token WordPiece vocab are written to a session tmp dir,
and `main_args` gives the command line of `python -m electra_jax.main` on the
real tiny config shrunk further (2 layers, seq 32, batch 8). Subprocesses share
a persistent XLA compilation cache, so only the first one pays for compiling.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 128
WORDS = ('the a of to and in is it that for on with as by an be this are from at or '
         'model data token layer train test value list file error code type name run '
         'step loss mask text word line time case user key path form call set get new '
         'one two six ten red blue green cat dog sun sea sky big old hot low').split()


def xla_flags(devices: int) -> str:
  """XLA_FLAGS of a test process: `devices` fake CPU devices, and LLVM optimization level 0
  (the tests' programs are tiny and run once or twice, so compiling is most of their cost:
  test_grad_accum + test_model take 180 s against 263 s at the default level)."""
  return f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0'


JIT_CACHE = Path(tempfile.gettempdir()) / f'electra_jax_test_jit_cache_{os.getuid()}'


def write_vocab(path: Path, size: int = VOCAB_SIZE) -> Path:
  """[PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4, as the builtin vocab), words, letters, ##letters."""
  letters = [chr(c) for c in range(ord('a'), ord('z') + 1)]
  tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + list(WORDS) + letters
  tokens += ['##' + c for c in letters] + [str(d) for d in range(10)] + ['.', ',']
  tokens = list(dict.fromkeys(tokens))
  if len(tokens) < size:
    tokens += [f'[unused{i}]' for i in range(size - len(tokens))]
  path.write_text('\n'.join(tokens[:size]) + '\n')
  return path


def write_corpus(path: Path, num_docs: int = 120, seed: int = 0) -> Path:
  """Documents of a few sentences drawn from WORDS, a blank line between documents."""
  rng = random.Random(seed)
  docs = []
  for _ in range(num_docs):
    sents = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + '.'
             for _ in range(rng.randint(2, 6))]
    docs.append('\n'.join(sents))
  path.write_text('\n\n'.join(docs) + '\n')
  return path


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
  """(corpus file, vocab file, data cache dir), shared by every test of the session."""
  root = tmp_path_factory.mktemp('runtime_corpus')
  return (write_corpus(root / 'corpus.txt'), write_vocab(root / 'vocab.txt'), root / 'cache')


def overrides(corpus_files, **extra) -> list[str]:
  """--config.* flags of the shrunk tiny config on the test corpus."""
  text, vocab, _ = corpus_files
  o = {'model.vocab_size': VOCAB_SIZE, 'model.num_layers': 2, 'model.hidden_size': 64,
       'train.seq_len': 32, 'train.batch_size': 8, 'train.eval_batch_size': 8,
       'data.source': str(text), 'data.vocab': str(vocab), 'data.num_workers': 0,
       'data.num_shards': 2, 'data.eval_fraction': 0.2}
  o.update(extra)
  return [f'--config.{k}={v}' for k, v in o.items()]


def main_args(workdir, corpus_files, **extra) -> list[str]:
  return [sys.executable, '-m', 'electra_jax.main', '--config=configs/pretrain.py:tiny,runlocal=True',
          f'--workdir={workdir}', f'--cache_dir={corpus_files[2]}', '--noprogress',
          *overrides(corpus_files, **extra)]


def env() -> dict:
  e = dict(os.environ)
  e.update(XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu',
           JAX_COMPILATION_CACHE_DIR=str(JIT_CACHE),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2',
           PYTHONPATH=str(REPO))
  return e


def run_main(workdir, corpus_files, timeout: float = 240, **extra) -> subprocess.CompletedProcess:
  return subprocess.run(main_args(workdir, corpus_files, **extra), cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=timeout)


def start_main(workdir, corpus_files, **extra) -> subprocess.Popen:
  return subprocess.Popen(main_args(workdir, corpus_files, **extra), cwd=REPO, env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 240) -> int:
  """Polls metrics.jsonl until it logs `step` (or more); returns the last logged step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if metrics.exists():
      lines = [l for l in metrics.read_text().splitlines() if l.strip()]
      if lines:
        import json  # pylint: disable=g-import-not-at-top
        try:
          last = json.loads(lines[-1])['step']
        except json.JSONDecodeError:
          last = -1
        if last >= step:
          return last
    if proc.poll() is not None:
      out = proc.stdout.read() if proc.stdout else ''
      raise AssertionError(f'run ended (rc {proc.returncode}) before step {step}:\n{out[-3000:]}')
    time.sleep(0.005)
  proc.kill()
  raise AssertionError(f'step {step} not reached in {timeout}s')
