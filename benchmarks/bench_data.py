r"""Input-pipeline speed: example builder tokens/s and loader batches/s.

    python benchmarks/bench_data.py                       # enwiki sample + BERT vocab from $ELECTRA_JAX_DATA
    python benchmarks/bench_data.py --input 'corpus/*.txt' --vocab vocab.txt --num_workers 2
    python benchmarks/bench_data.py --measure_step        # also time a real ELECTRA-Small step

Builder: `electra_jax.data.corpus.build_pretraining_data` on the corpus (default:
$ELECTRA_JAX_DATA/corpus/enwiki-2015-wikiextractor-sample, else builtin:python-docs), wall time of
the whole build (reading, tokenizing, packing, writing shards). tokens/s counts the WordPiece
tokens the tokenizer produced from the text (before packing/truncation). The CPU time of the
build (this process + its workers) is printed too: on a shared machine the wall-clock rate
depends on other load, tokens per CPU-second much less.

Loader: `PretrainingLoader` over the shards just built, batch 128 x 128 (one host): load time,
then batches/s over `--loader_batches` batches. Against a train step: `--step_seconds S` (a step
time you measured) or `--measure_step` (runs benchmarks/bench_step.py for ELECTRA-Small at the
same batch in a subprocess) gives the ratio loader rate / step rate (goal >= 20x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from electra_jax import runlog  # noqa: E402
from electra_jax.data import loader as loader_lib  # noqa: E402
from electra_jax.data import corpus  # noqa: E402
from electra_jax.data import tokenizer as tok_lib  # noqa: E402

SHARED = Path(os.environ.get('ELECTRA_JAX_DATA') or REPO / 'data')  # the public data root
ENWIKI = SHARED / 'corpus' / 'enwiki-2015-wikiextractor-sample'
BERT_VOCAB = SHARED / 'vocab' / 'bert-base-uncased-vocab.txt'


def _cpu_seconds() -> float:
  """User+system CPU of this process and its finished children (the builder's workers)."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure_step(batch: int, seq_len: int) -> float:
  """Median ELECTRA-Small train-step seconds from benchmarks/bench_step.py (fresh process)."""
  with tempfile.TemporaryDirectory() as d:
    out = Path(d) / 'step.json'
    cmd = [sys.executable, str(REPO / 'benchmarks' / 'bench_step.py'), '--size', 'small', '--batch',
           str(batch), '--seq-len', str(seq_len), '--warmup', '1', '--steps', '3', '--json', str(out),
           '--quiet']
    subprocess.run(cmd, check=True, cwd=REPO)
    return float(json.loads(out.read_text().splitlines()[-1])['step_s'])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--input', default=str(ENWIKI) if ENWIKI.exists() else 'builtin:python-docs')
  p.add_argument('--vocab', default=str(BERT_VOCAB) if BERT_VOCAB.exists() else 'builtin')
  p.add_argument('--num_workers', type=int, default=os.cpu_count() or 1)
  p.add_argument('--num_shards', type=int, default=8)
  p.add_argument('--max_seq_length', type=int, default=128)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--loader_batches', type=int, default=2000)
  p.add_argument('--step_seconds', type=float, default=None, help='a measured train-step time')
  p.add_argument('--measure_step', action='store_true', help='time an ELECTRA-Small step too')
  p.add_argument('--json', help='append the results as one JSON line to this file')
  args = p.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    if args.vocab == 'builtin':
      from electra_jax.data import builtin_corpus
      vocab = builtin_corpus.builtin_vocab(runlog.cache_dir())
    else:
      vocab = args.vocab
    tok = tok_lib.WordPieceTokenizer.from_vocab(vocab)
    out = Path(tmp) / 'shards'
    load_avg = os.getloadavg()[0]
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    meta = corpus.build_pretraining_data(
        args.input, tok, out, max_seq_length=args.max_seq_length, num_shards=args.num_shards,
        num_workers=args.num_workers, seed=0, progress=False)
    build_s = time.perf_counter() - t0
    build_cpu = _cpu_seconds() - cpu0
    tokens_per_s = meta['num_text_tokens'] / build_s

    t0 = time.perf_counter()
    ld = loader_lib.PretrainingLoader(out, args.batch, args.max_seq_length, seed=0,
                                      process_index=0, process_count=1)
    load_s = time.perf_counter() - t0
    next(ld)
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
      next(ld)
    batches_per_s = args.loader_batches / (time.perf_counter() - t0)

  step_s = args.step_seconds
  if args.measure_step:
    step_s = measure_step(args.batch, args.max_seq_length)

  rows = [
      ('builder input', args.input),
      ('vocab', f'{vocab} ({tok.vocab_size} tokens)'),
      ('builder workers', args.num_workers),
      ('text tokens', f'{meta["num_text_tokens"]:,}'),
      ('examples written', f'{meta["num_examples"]:,} ({meta["num_tokens"]:,} tokens incl. specials)'),
      ('build wall time', f'{build_s:.1f} s'),
      ('builder tokens/s', f'{tokens_per_s / 1e6:.2f} M  (goal >= 1.00 M)'),
      ('builder CPU time', f'{build_cpu:.1f} s  ({meta["num_text_tokens"] / build_cpu / 1e6:.2f} M tokens per '
                           f'CPU-second; 1-min load average at start {load_avg:.1f} on {os.cpu_count()} cores)'),
      ('loader load time', f'{load_s:.2f} s for {ld.num_examples:,} examples'),
      (f'loader batches/s ({args.batch}x{args.max_seq_length})', f'{batches_per_s:,.0f}'),
  ]
  result = {'input': args.input, 'num_workers': args.num_workers, 'text_tokens': meta['num_text_tokens'],
            'build_s': build_s, 'build_cpu_s': build_cpu, 'load_avg': load_avg, 'tokens_per_s': tokens_per_s, 'loader_batches_per_s': batches_per_s,
            'batch': args.batch, 'seq_len': args.max_seq_length}
  rows.append(('20x a train step rate if step >=', f'{20e3 / batches_per_s:.1f} ms'))
  if step_s:
    ratio = batches_per_s * step_s
    rows += [('Small train step', f'{step_s:.2f} s ({1 / step_s:.3f} steps/s)'),
             ('loader rate / step rate', f'{ratio:,.0f}x  (goal >= 20x)')]
    result.update(step_s=step_s, loader_over_step=ratio)
  width = max(len(k) for k, _ in rows)
  print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows))
  if args.json:
    with open(args.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  main()
