r"""Host memory as a benchmark: peak RSS and wall time of whole runs, per allocator, beside the PyTorch peer.

Each case runs as its own child process, once per allocator setting
(`default`: no ELECTRA_JAX_MALLOC, what a user gets; `system`: ELECTRA_JAX_MALLOC=system;
`tuned`: ELECTRA_JAX_MALLOC=tuned, the glibc tunables of electra_jax/hostmem.py forced on,
which was the default for fine-tuning before issue 18). Peak RSS is the child's own
(`os.wait4`'s ru_maxrss, which also covers the re-exec and any child it waited for).

Cases (each skipped when its data is absent):
  quickstart   `python -m electra_jax.main --config=configs/pretrain.py:tiny`, shortened to
               --steps (300) with a held-out evaluation every steps/2
  small_steps  ELECTRA-Small pre-training steps at 32 x 128 (benchmarks/bench_step.py,
               synthetic batches): also seconds per step, the allocator's speed effect
  mrpc, sst2   `python -m electra_jax.finetune` at size=small, batch 32 x 128, one epoch over
               --glue-train examples, evaluation on --glue-eval dev examples
  squad        SQuAD 1.1 at length 384 (train_from_dev / eval_from_dev of dev-v1.1.json),
               --squad-train / --squad-eval questions
  peer_*       benchmarks/torch_finetune_peer.py on the same features, batches and size

    python benchmarks/bench_memory.py --glue /path/to/glue --squad /path/to/squad \
        --vocab /path/to/bert-base-uncased-vocab.txt --out benchmarks/results/memory

writes OUT.md (the table) and OUT.json (every run: command, peak RSS, wall time, exit
status, steps/s where measured, load average). Memory is robust to a busy machine (and to
--jobs 2); wall times are not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOCATORS = {'default': None, 'system': 'system', 'tuned': 'tuned'}


def run_child(argv: list[str], env_update: dict, log_path: Path, timeout: float) -> dict:
  """Runs argv; returns its peak RSS (MB), wall time and exit status."""
  env = {k: v for k, v in os.environ.items() if k not in ('ELECTRA_JAX_MALLOC', 'GLIBC_TUNABLES')}
  env.update({k: v for k, v in env_update.items() if v is not None})
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = t0 + timeout
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if time.perf_counter() > deadline:
        proc.kill()
        pid, status, usage = os.wait4(proc.pid, 0)
        break
      time.sleep(0.2)
  proc.returncode = os.waitstatus_to_exitcode(status)
  return dict(peak_rss_mb=round(usage.ru_maxrss / 1024), wall_s=round(time.perf_counter() - t0, 1),
              rc=proc.returncode, load_average=[round(load, 1), round(os.getloadavg()[0], 1)])


def cases(a, work: Path) -> list[dict]:
  """[{name, kind: ours|peer, argv(workdir), needs, ...}] for the data that is present."""
  py = sys.executable
  out = []
  out.append(dict(
      name='quickstart', what=f'pre-training quickstart (tiny), {a.steps} steps',
      kind='ours', pretrain=True,
      argv=lambda w: [py, '-m', 'electra_jax.main', '--config=configs/pretrain.py:tiny',
                      f'--config.train.num_steps={a.steps}',
                      f'--config.train.eval_every={max(1, a.steps // 2)}', '--noprogress',
                      f'--workdir={w}']))
  out.append(dict(
      name='small_steps', what=f'ELECTRA-Small pre-training, 32x128, {a.small_steps} steps',
      kind='ours', pretrain=True,
      argv=lambda w: [py, 'benchmarks/bench_step.py', '--size', 'small', '--warmup', '1',
                      '--steps', str(a.small_steps), '--peak-seconds', '0.2', '--peak-sizes',
                      '512', '--quiet', '--json', f'{w}.json']))
  vocab = a.vocab and Path(a.vocab).is_file()
  ft = [py, '-m', 'electra_jax.finetune', '--noprogress']  # then --config=, before its keys
  ft_keys = [f'--config.data.vocab={a.vocab}', '--config.data.test_splits=',
             '--config.train.epochs=1']
  peer = [py, 'benchmarks/torch_finetune_peer.py', '--vocab', str(a.vocab), '--size', 'small']
  for task, folder in (('mrpc', 'MRPC'), ('sst2', 'SST-2')):
    if not (vocab and a.glue and (Path(a.glue) / folder / 'train.tsv').is_file()):
      continue
    what = (f'fine-tuning {task.upper()}, small, 32x128, {a.glue_train} train / {a.glue_eval} '
            'dev examples')
    out.append(dict(name=task, what=what, kind='ours', argv=lambda w, task=task: ft + [
        f'--config=configs/finetune.py:task={task},size=small', *ft_keys,
        f'--config.data.data_dir={a.glue}', f'--config.data.max_train_examples={a.glue_train}',
        f'--config.data.max_eval_examples={a.glue_eval}', f'--workdir={w}']))
    out.append(dict(name=f'peer_{task}', what=what + ' (PyTorch peer)', kind='peer',
                    argv=lambda w, task=task, folder=folder: peer + [
                        '--task', task, '--data-dir', str(Path(a.glue) / folder),
                        '--max-train-examples', str(a.glue_train),
                        '--max-eval-examples', str(a.glue_eval)]))
  if vocab and a.squad and (Path(a.squad) / 'dev-v1.1.json').is_file():
    what = (f'fine-tuning SQuAD 1.1, small, 32x384, {a.squad_train} train / {a.squad_eval} eval '
            'questions')
    out.append(dict(name='squad', what=what, kind='ours', argv=lambda w: ft + [
        '--config=configs/finetune.py:task=squad1,size=small', *ft_keys,
        f'--config.data.data_dir={a.squad}',
        '--config.data.train_split=train_from_dev', '--config.data.eval_splits=eval_from_dev',
        f'--config.data.max_train_examples={a.squad_train}',
        f'--config.data.max_eval_examples={a.squad_eval}', f'--workdir={w}']))
    out.append(dict(name='peer_squad', what=what + ' (PyTorch peer)', kind='peer', argv=lambda w: peer + [
        '--task', 'squad1', '--data-dir', str(a.squad), '--train-split', 'train_from_dev',
        '--eval-split', 'eval_from_dev', '--max-train-examples', str(a.squad_train),
        '--max-eval-examples', str(a.squad_eval)]))
  return [c for c in out if not a.only or c['name'] in a.only]


def steps_per_s(case: dict, workdir: Path) -> float | None:
  """Pre-training speed: bench_step's median step, or the quickstart's last logged rate."""
  try:
    if case['name'] == 'small_steps':
      return 1.0 / json.loads(Path(f'{workdir}.json').read_text())['step_s']
    rates = [json.loads(l).get('steps_per_s') for l in (workdir / 'metrics.jsonl').open()]
    rates = [r for r in rates if r]
    return rates[-1] if rates else None
  except (OSError, ValueError, KeyError):
    return None


def table(rows: list[dict]) -> str:
  lines = ['| run | allocator | peak RSS MB | vs system | vs peer | wall s | steps/s | exit |',
           '|---|---|---|---|---|---|---|---|']
  by = {(r['name'], r['allocator']): r for r in rows}
  for r in rows:
    system = by.get((r['name'], 'system'))
    peer = by.get(('peer_' + r['name'], 'system'))
    vs_sys = (f"{r['peak_rss_mb'] / system['peak_rss_mb']:.2f}x" if system and r['kind'] == 'ours'
              else '')
    vs_peer = f"{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x" if peer else ''
    sps = f"{r['steps_per_s']:.3g}" if r.get('steps_per_s') else ''
    lines.append(f"| {r['what']} | {r['allocator']} | {r['peak_rss_mb']} | {vs_sys} | {vs_peer} "
                 f"| {r['wall_s']} | {sps} | {r['rc']} |")
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--glue', help='GLUE root (holding MRPC/, SST-2/)')
  p.add_argument('--squad', help='folder with dev-v1.1.json')
  p.add_argument('--vocab', help='BERT uncased vocab.txt (the fine-tuning runs need one)')
  p.add_argument('--allocators', default='default,system',
                 help=f'comma-separated, of {",".join(ALLOCATORS)}; the peer runs once')
  p.add_argument('--only', nargs='*', help='case names to run (default: all present)')
  p.add_argument('--steps', type=int, default=300, help='quickstart steps')
  p.add_argument('--small-steps', type=int, default=4)
  p.add_argument('--glue-train', type=int, default=64)
  p.add_argument('--glue-eval', type=int, default=128)
  p.add_argument('--squad-train', type=int, default=48)
  p.add_argument('--squad-eval', type=int, default=48)
  p.add_argument('--timeout', type=float, default=900, help='seconds per run')
  p.add_argument('--jobs', type=int, default=1,
                 help='runs at a time (peak RSS is per run; wall times then share the CPUs)')
  p.add_argument('--out', default='benchmarks/results/memory',
                 help='writes OUT.md and OUT.json')
  a = p.parse_args()
  allocators = [x.strip() for x in a.allocators.split(',') if x.strip()]
  for x in allocators:
    if x not in ALLOCATORS:
      p.error(f'--allocators: unknown {x!r}; expected {", ".join(ALLOCATORS)}')
  work = Path(tempfile.mkdtemp(prefix='bench_memory_'))
  jobs = [(case, alloc) for case in cases(a, work)
          for alloc in (['system'] if case['kind'] == 'peer' else allocators)]

  def run(job):
    case, alloc = job
    workdir = work / f"{case['name']}_{alloc}"
    argv = case['argv'](workdir)
    r = run_child(argv, {'ELECTRA_JAX_MALLOC': ALLOCATORS[alloc]}, work / f'{workdir.name}.log',
                  a.timeout)
    r.update(name=case['name'], what=case['what'], kind=case['kind'], allocator=alloc,
             command=' '.join(argv).replace(str(workdir), 'WORKDIR').replace(sys.executable,
                                                                            'python'))
    if case.get('pretrain'):
      r['steps_per_s'] = steps_per_s(case, workdir)
    if r['rc'] != 0:
      r['log_tail'] = (work / f'{workdir.name}.log').read_text()[-2000:]
    print(json.dumps({k: v for k, v in r.items() if k != 'log_tail'}), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    done[jobs.index(job)] = r  # kept even when a later run is interrupted

  done = {}
  try:
    # --jobs 2: the two allocators of a case run side by side, under the same load.
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
      list(pool.map(run, jobs))
  finally:
    rows = [done[i] for i in sorted(done)]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"Host memory benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} CPUs; `python {' '.join(sys.argv)}`\n\n")
    out.with_suffix('.md').write_text(header + table(rows) + '\n')
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1) + '\n')
    print(table(rows))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
