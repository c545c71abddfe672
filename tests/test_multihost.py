"""Multi-host, rehearsed on one machine: real processes on localhost, jax.distributed + gloo.

Each multi-process run starts `python -m electra_jax.main` (or electra_jax.finetune) N times
with --coordinator_address=localhost:PORT --num_processes=N --process_id=i, every process
with its own --xla_force_host_platform_device_count=D CPU devices, so the mesh spans N x D
devices joined by gloo CPU collectives: what a pod slice runs, one process per host. The
reference is one process with the same global device count.

Pre-training tests share one configuration (the tiny runlocal config shrunk further, see
runtime_util.overrides, to one layer; 40 steps, a loss logged every step, a checkpoint every
10), one data cache built once per session, and the session's runs: the uninterrupted ones,
and one resumed across process counts and preempted on the way. A process costs ~30 s of CPU
(imports, compiling), so each run is checked for all it can show. Every wait has a bound; a
run that overstays it is killed and its logs are shown. `pytest -m multihost` runs only
these; `-m 'not multihost'` skips them.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from electra_jax.io import checkpoint
from electra_jax.io import weights
from electra_jax import runlog
import runtime_util
from runtime_util import REPO, corpus  # noqa: F401  (corpus: session fixture)

pytestmark = pytest.mark.multihost

NUM_STEPS = 40
CKPT_EVERY = 10
RUN = {'model.num_layers': 1, 'train.num_steps': NUM_STEPS, 'train.log_every': 1,
       'train.checkpoint_every': CKPT_EVERY, 'train.keep_checkpoints': NUM_STEPS // CKPT_EVERY,
       'train.eval_batches': 0, 'train.eval_every': 1000}
# The tolerances of tests/test_train_step.py::test_one_device_equals_eight_devices_and_fsdp.
LOSS_RTOL, GRAD_NORM_RTOL, PARAM_ATOL = 1e-5, 1e-4, 1e-5
RUN_TIMEOUT = 900  # s, for a whole run, compiling included (3 min on 2 cores under heavy load)
FAIL_BOUND = 60  # s, for the survivor of a killed or stalled process to exit


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def env(local_devices: int, nproc: int) -> dict:
  """The environment of one process of an `nproc`-process run.

  Multi-process runs compile afresh in every process. With the persistent compilation
  cache, process 0 would load its programs while process 1 compiled its own (its cache
  key differs, and only process 0 writes the cache), reach the first collective long
  before it, and give up after gloo's 30 s rendezvous timeout on a busy machine.
  """
  e = {k: v for k, v in runtime_util.env().items()
       if k not in ('JAX_COORDINATOR_ADDRESS', 'ELECTRA_JAX_MULTIHOST')}
  e.update(XLA_FLAGS=runtime_util.xla_flags(local_devices), PYTHONUNBUFFERED='1')
  if nproc > 1:
    e.pop('JAX_COMPILATION_CACHE_DIR', None)
  return e


_LIVE: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
  """No process outlives its test, whatever the test's outcome."""
  yield
  while _LIVE:
    p = _LIVE.pop()
    if p.poll() is None:
      p.kill()
      p.wait(timeout=30)


class Procs:
  """N processes of one run; process i writes stdout+stderr to `logs[i]`."""

  def __init__(self, cmds: list[list[str]], environ: dict, log_stem: Path,
               owned_by_test: bool = True):
    self.logs = [log_stem.with_name(f'{log_stem.name}.p{i}.log') for i in range(len(cmds))]
    self.procs = []
    self.started = time.time()
    for cmd, log in zip(cmds, self.logs):
      with open(log, 'w') as f:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=f,
                                           stderr=subprocess.STDOUT))
    if owned_by_test:  # else its owner kills it (the session's runs)
      _LIVE.extend(self.procs)

  def log(self, i: int) -> str:
    return self.logs[i].read_text(errors='replace')

  def tails(self, n: int = 3000) -> str:
    return '\n'.join(f'--- process {i} (rc {p.poll()}) ---\n{self.log(i)[-n:]}'
                     for i, p in enumerate(self.procs))

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      p.wait(timeout=30)

  def wait(self, timeout: float = RUN_TIMEOUT) -> list[int]:
    """Exit codes, once every process has exited; kills them all after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if all(p.poll() is not None for p in self.procs):
        return [p.returncode for p in self.procs]
      time.sleep(0.05)
    self.kill()
    raise AssertionError(f'run did not finish in {timeout:.0f}s:\n{self.tails()}')

  def wait_ok(self, timeout: float = RUN_TIMEOUT) -> None:
    rcs = self.wait(timeout)
    assert rcs == [0] * len(rcs), f'exit codes {rcs}:\n{self.tails()}'


def distributed_flags(nproc: int) -> list[list[str]]:
  if nproc == 1:
    return [[]]
  port = free_port()
  return [[f'--coordinator_address=localhost:{port}', f'--num_processes={nproc}',
           f'--process_id={i}'] for i in range(nproc)]


def launch_main(workdir: Path, corpus_files, nproc: int, local_devices: int,  # noqa: F811
                owned_by_test: bool = True, log_stem: Path | None = None,
                heartbeat: int | None = None, **overrides) -> Procs:
  """`python -m electra_jax.main` as `nproc` processes of `local_devices` CPU devices each.

  `heartbeat`: their --heartbeat_timeout (s).

  The logs go to `log_stem`.p{i}.log (default: beside the workdir, named after it).
  """
  base = runtime_util.main_args(workdir, corpus_files, **{**RUN, **overrides})
  if heartbeat is not None:
    base.append(f'--heartbeat_timeout={heartbeat}')
  return Procs([base + d for d in distributed_flags(nproc)], env(local_devices, nproc),
               log_stem or workdir, owned_by_test)


def last_step(procs: Procs, workdir: Path) -> int:
  """The last step in metrics.jsonl (written by process 0), 0 before the first; every process
  must still be running."""
  if any(p.poll() is not None for p in procs.procs):
    procs.kill()
    raise AssertionError(f'a process ended before it was expected to:\n{procs.tails()}')
  recs = runlog.read_jsonl(workdir / 'metrics.jsonl')
  return recs[-1]['step'] if recs else 0


def wait_for_step(procs: Procs, workdir: Path, step: int, timeout: float = RUN_TIMEOUT) -> int:
  """Polls until process 0 has logged `step`; returns the last step logged."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if (last := last_step(procs, workdir)) >= step:
      return last
    time.sleep(0.01)
  procs.kill()
  raise AssertionError(f'step {step} not reached in {timeout:.0f}s:\n{procs.tails()}')


# ----------------------------------------------------------------------------- comparisons


def metrics(workdir: Path) -> dict[int, dict]:
  return {r['step']: r for r in runlog.read_jsonl(workdir / 'metrics.jsonl')}


def assert_same_losses(got: dict, want: dict, steps) -> float:
  """Per-step loss and grad norm within the sharding tests' tolerance; the largest rel. diff."""
  steps = list(steps)
  assert set(steps) <= set(got), f'steps {sorted(set(steps) - set(got))} were not logged'
  worst = 0.0
  for s in steps:
    np.testing.assert_allclose(got[s]['loss'], want[s]['loss'], rtol=LOSS_RTOL,
                               err_msg=f'loss at step {s}')
    np.testing.assert_allclose(got[s]['grad_norm'], want[s]['grad_norm'], rtol=GRAD_NORM_RTOL,
                               err_msg=f'grad_norm at step {s}')
    worst = max(worst, abs(got[s]['loss'] - want[s]['loss']) / abs(want[s]['loss']))
  return worst


def assert_same_params(a, b) -> float:
  """Leaf-wise allclose (atol PARAM_ATOL) of two param trees; the largest abs. diff."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=PARAM_ATOL)
    worst = max(worst, float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)))
  return worst


def exported(workdir: Path):
  return checkpoint.load_exported(workdir / 'export', which='pretrainer')[1]


def checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def loader_record(workdir: Path, step: int) -> dict:
  return json.loads((workdir / 'checkpoints' / str(step) / 'loader' / 'metadata').read_text())


def resumed_from(log: str) -> int:
  marker = 'Resumed from the checkpoint at step '
  assert marker in log, log[-3000:]
  return int(log.split(marker)[1].split()[0])


def copy_until(src: Path, dest: Path, step: int) -> Path:
  """A copy of workdir `src` as it was after `step`: later checkpoints and logs dropped."""
  shutil.copytree(src, dest, ignore=shutil.ignore_patterns('export', 'tensorboard', '*.png'))
  for s in checkpoint_steps(dest):
    if s > step:
      shutil.rmtree(dest / 'checkpoints' / str(s))
  for name in ('metrics.jsonl',):
    lines = (dest / name).read_text().splitlines()
    (dest / name).write_text(''.join(l + '\n' for l in lines if json.loads(l)['step'] <= step))
  return dest


def report(line: str) -> None:
  """Numbers for the record: shown with `pytest -s`."""
  print(f'\n[multihost] {line}', flush=True)


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope='session')
def data_cache(corpus):  # noqa: F811
  """The session's data cache, built once here, before any run (the runs only read it)."""
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  from electra_jax.data import loader  # pylint: disable=g-import-not-at-top
  c = pretrain.get_config('tiny,runlocal=True')
  over = dict(a[len('--config.'):].split('=', 1) for a in runtime_util.overrides(corpus))
  for k in ('source', 'vocab'):
    c.data[k] = over[f'data.{k}']
  c.data.num_workers, c.data.num_shards = 0, 2
  c.data.eval_fraction = float(over['data.eval_fraction'])
  data = loader.make_pretraining_data(c.data, int(over['train.seq_len']), 8, 8, c.seed, corpus[2])
  return data.data_dir


class Runs:
  """The session's uninterrupted runs of the shared configuration, all started at once.

  (processes, devices per process, fsdp): 1 x 2 (data parallel: the reference of the
  resume, preemption, failure and fine-tuning tests), 2 x 2 and 1 x 4 (FSDP over each
  process's 2 devices, data parallel across the processes). Running side by side they
  fill the cores while a second process compiles (process 1 never hits the persistent
  compilation cache: its key differs from process 0's, and only process 0 writes the cache).
  """

  KEYS = ((1, 2, 1), (2, 2, 2), (1, 4, 2))

  def __init__(self, corpus_files, root: Path):
    self.runs = {k: launch_main(self._workdir(root, *k), corpus_files, k[0], k[1],
                                owned_by_test=False, **{'mesh.fsdp': k[2]})
                 for k in self.KEYS}
    self.done: dict[tuple, Path] = {}

  @staticmethod
  def _workdir(root: Path, nproc: int, local_devices: int, fsdp: int) -> Path:
    return root / f'run_{nproc}x{local_devices}_fsdp{fsdp}'

  def get(self, nproc: int, local_devices: int, fsdp: int = 1) -> Path:
    """The finished run's workdir (waits for it)."""
    key = (nproc, local_devices, fsdp)
    if key not in self.done:
      procs = self.runs[key]
      procs.wait_ok()
      wd = procs.logs[0].with_name(procs.logs[0].name.split('.p0.log')[0])
      report(f'uninterrupted run {nproc} proc x {local_devices} dev, fsdp={fsdp}: done '
             f'{time.time() - procs.started:.0f}s after its start')
      assert sorted(metrics(wd)) == list(range(1, NUM_STEPS + 1))
      self.done[key] = wd
    return self.done[key]

  def close(self):
    for procs in self.runs.values():
      procs.kill()


@pytest.fixture(scope='session')
def runs(corpus, data_cache, tmp_path_factory):  # noqa: F811
  del data_cache  # built before the first run
  r = Runs(corpus, tmp_path_factory.mktemp('multihost_runs'))
  yield r
  r.close()


# ----------------------------------------------------------------------------- 1. equivalence


def test_two_processes_equal_one_with_the_same_devices(runs):
  """2 processes x 2 devices == 1 process x 4 devices: per-step losses and final params.

  FSDP over each process's 2 devices, data parallel across the processes: the gradients
  and the loader's batches cross processes as in plain data parallel, and the parameters
  are sharded too. Plain data parallel, 2 x 1 == 1 x 2, is checked from a checkpoint on
  (test_resume_on_a_different_process_count) and from the start (the runs of
  test_sigkill_of_one_process_fails_the_other_promptly, at their last checkpoint).
  """
  multi, single = runs.get(2, 2, 2), runs.get(1, 4, 2)
  loss_diff = assert_same_losses(metrics(multi), metrics(single), range(1, NUM_STEPS + 1))
  param_diff = assert_same_params(exported(multi), exported(single))
  report(f'2 proc x 2 dev vs 1 proc x 4 dev, fsdp=2: max rel loss diff {loss_diff:.3g} over '
         f'{NUM_STEPS} steps, max abs param diff {param_diff:.3g}')
  # Every process saved the same (global) loader position with every checkpoint.
  rec = loader_record(multi, NUM_STEPS)
  assert rec['process_count'] == 2
  assert [s['step'] for s in rec['states']] == [NUM_STEPS, NUM_STEPS]


# ------------------------------------------------------------------------ 2-3. resume, preemption


class Chain:
  """The uninterrupted 1 x 2 run's checkpoint at step CKPT_EVERY, resumed by 2 processes x 1
  device, SIGTERM to process 1 only a few steps later, then resumed by 1 process x 2 devices
  to the end: a resume in each direction, and a preemption, in 3 processes."""

  def __init__(self, runs, corpus_files, root: Path):
    self.reference = runs.get(1, 2)
    self.wd = copy_until(self.reference, root / 'chain', CKPT_EVERY)
    self.saved_by_one = loader_record(self.wd, CKPT_EVERY)
    self.two = launch_main(self.wd, corpus_files, 2, 1, owned_by_test=False)
    try:
      wait_for_step(self.two, self.wd, CKPT_EVERY + 3)
      self.two.procs[1].send_signal(signal.SIGTERM)
      self.two.wait_ok(timeout=120)
    finally:
      self.two.kill()
    # The workdir as the preempted run left it (the resume below adds to it).
    self.preempted = root / 'preempted'
    shutil.copytree(self.wd, self.preempted)
    self.one = launch_main(self.wd, corpus_files, 1, 2, owned_by_test=False,
                           log_stem=root / 'resumed')
    try:
      self.one.wait_ok()
    finally:
      self.one.kill()


@pytest.fixture(scope='session')
def chain(runs, corpus, tmp_path_factory):  # noqa: F811
  return Chain(runs, corpus, tmp_path_factory.mktemp('multihost_chain'))


def preemption_step(procs: Procs) -> int:
  """The step after which every process of `procs` stopped (each says so once)."""
  stops = []
  for i in range(len(procs.procs)):
    line = [l for l in procs.log(i).splitlines()
            if f'process {i} of {len(procs.procs)}: preemption' in l]
    assert len(line) == 1, procs.tails()
    stops.append(int(line[0].rsplit('stopped after step ', 1)[1]))
  assert stops == [stops[0]] * len(stops), stops
  return stops[0]


def test_resume_on_a_different_process_count(chain):
  """Checkpoints written by 1 process resume in 2, and by 2 in 1; the losses go on alike.

  Both directions keep 2 devices in all (1 x 2, 2 x 1): the chain of runs of Chain.
  """
  reference, step = chain.reference, preemption_step(chain.two)
  # 1 -> 2, from the reference's periodic checkpoint.
  assert chain.saved_by_one['process_count'] == 1
  assert [s['step'] for s in chain.saved_by_one['states']] == [CKPT_EVERY]
  assert resumed_from(chain.two.log(0)) == CKPT_EVERY
  got = metrics(chain.preempted)
  assert sorted(got) == list(range(1, step + 1))
  loss_diff = assert_same_losses(got, metrics(reference), range(CKPT_EVERY + 1, step + 1))
  # Every process of the new run went on from the restored (global) loader position.
  rec = loader_record(chain.preempted, step)
  assert rec['process_count'] == 2
  assert [s['step'] for s in rec['states']] == [step, step]
  report(f'resume 1 -> 2 proc from step {CKPT_EVERY}: max rel loss diff {loss_diff:.3g} '
         f'(steps {CKPT_EVERY + 1}-{step})')
  # 2 -> 1, from the checkpoint the 2 processes saved when preempted.
  assert resumed_from(chain.one.log(0)) == step
  got = metrics(chain.wd)
  assert sorted(got) == list(range(1, NUM_STEPS + 1))
  loss_diff = assert_same_losses(got, metrics(reference), range(step + 1, NUM_STEPS + 1))
  param_diff = assert_same_params(exported(chain.wd), exported(reference))
  rec = loader_record(chain.wd, NUM_STEPS)
  assert rec['process_count'] == 1
  assert [s['step'] for s in rec['states']] == [NUM_STEPS]
  report(f'resume 2 -> 1 proc from step {step}: max rel loss diff {loss_diff:.3g} (steps '
         f'{step + 1}-{NUM_STEPS}), max abs param diff {param_diff:.3g}')


def test_sigterm_to_one_process_stops_all_at_one_step(chain):
  """SIGTERM to process 1 only: both stop after the same step, save it once, exit 0."""
  reference, wd, procs = chain.reference, chain.preempted, chain.two
  step = preemption_step(procs)
  assert CKPT_EVERY + 3 <= step < NUM_STEPS, f'stopped at {step}; the preemption came too late'
  assert f'preemption: saved a checkpoint at step {step}' in procs.log(0)
  # One checkpoint of that step, complete and consistent: no temporary directory left.
  assert checkpoint_steps(wd)[-1] == step
  assert sorted(p.name for p in (wd / 'checkpoints').iterdir()) == sorted(
      str(s) for s in checkpoint_steps(wd))
  rec = loader_record(wd, step)
  assert rec['process_count'] == 2 and [s['step'] for s in rec['states']] == [step, step]
  meta = json.loads((wd / 'checkpoints' / str(step) / 'meta' / 'metadata').read_text())
  assert meta['step'] == step and meta['process_count'] == 2
  assert max(metrics(wd)) == step
  assert_same_losses(metrics(wd), metrics(reference), range(1, step + 1))

  # Resumed (in one process with the same 2 devices) and finished: as if never stopped.
  assert resumed_from(chain.one.log(0)) == step
  loss_diff = assert_same_losses(metrics(chain.wd), metrics(reference),
                                 range(step + 1, NUM_STEPS + 1))
  param_diff = assert_same_params(exported(chain.wd), exported(reference))
  report(f'preempted at step {step}, resumed: max rel loss diff {loss_diff:.3g}, '
         f'max abs param diff {param_diff:.3g}')


# ----------------------------------------------------------------------------- 4. failure


# Each case: (process hit, signal). A killed process's sockets close, so the survivor's next
# collective usually fails at once; a stopped (stalled) one keeps them open, and only the
# coordination service's heartbeat timeout notices it: the fallback for any survivor that
# waits where no collective fails (in one CI run a SIGKILLed worker left the coordinator
# waiting past 60 s, under JAX's default timeout of 100 s).
FAILURES = ((0, signal.SIGKILL), (1, signal.SIGSTOP))
HEARTBEAT_TIMEOUT = 20  # s, --heartbeat_timeout of these runs (JAX's default is 100)


def test_killed_or_stalled_process_ends_the_other_promptly(runs, corpus, tmp_path):  # noqa: F811
  """SIGKILL of the coordinator and SIGSTOP of the worker: two runs side by side, with
  --heartbeat_timeout=20.

  The survivor ends within FAIL_BOUND s either way: its failed collective makes it exit 1 with
  one clear `error:` line, or JAX's coordination service, having lost the other process (its
  coordinator gone, or its heartbeats stopped), ends it with its own fatal message. A survivor
  blocked where no collective fails (a stalled peer) is what the heartbeat timeout is for.
  The newest complete checkpoint loads and holds what the uninterrupted run had at that step.
  """
  reference = runs.get(1, 2)
  launched = {}
  for victim, sig in FAILURES:
    wd = tmp_path / f'{sig.name.lower()}{victim}'
    launched[victim, sig] = (wd, launch_main(wd, corpus, 2, 1, heartbeat=HEARTBEAT_TIMEOUT))
  hit_at, deadline = {}, time.time() + RUN_TIMEOUT
  while len(hit_at) < len(launched):  # each as soon as it has passed a checkpoint
    for (victim, sig), (wd, procs) in launched.items():
      if (victim, sig) not in hit_at and last_step(procs, wd) >= CKPT_EVERY + 5:
        procs.procs[victim].send_signal(sig)
        hit_at[victim, sig] = time.time()
    assert time.time() < deadline, 'step not reached in time'
    time.sleep(0.01)
  took = {}  # case -> seconds from the signal until the survivor had exited
  while len(took) < len(launched) and time.time() < max(hit_at.values()) + FAIL_BOUND:
    for (victim, sig), (_, procs) in launched.items():
      if (victim, sig) not in took and procs.procs[1 - victim].poll() is not None:
        took[victim, sig] = time.time() - hit_at[victim, sig]
    time.sleep(0.01)
  for (victim, sig), (wd, procs) in launched.items():
    survivor = 1 - victim
    case = f'{sig.name} of process {victim}'
    assert (victim, sig) in took, f'process {survivor} still runs {FAIL_BOUND}s after the ' \
        f'{case}:\n{procs.tails()}'
    if sig == signal.SIGSTOP:
      procs.procs[victim].kill()
    rcs = procs.wait(timeout=10)
    log = procs.log(survivor)
    assert rcs[victim] == -signal.SIGKILL and rcs[survivor] != 0, f'{rcs}:\n{procs.tails()}'
    errors = [l for l in log.splitlines() if l.startswith('error:')]
    fatal = [l for l in log.splitlines() if 'JAX distributed service detected fatal' in l]
    if errors:
      assert rcs[survivor] == 1 and len(errors) == 1, procs.tails()
      assert errors[0].startswith(f'error: process {survivor} of 2 stopped: ')
      assert 'Another process has probably died or stalled: see its log' in errors[0]
      assert 'Run the same command on every host again' in errors[0]
      how = errors[0]
    else:
      assert fatal, procs.tails()
      how = fatal[0]
    if sig == signal.SIGSTOP:  # nothing failed; the missed heartbeats ended it
      assert fatal and 'stopped sending heartbeats' in log, procs.tails()
    report(f'{case}: process {survivor} exited {rcs[survivor]} after '
           f'{took[victim, sig]:.1f}s: {how[:230]}')

    _, params = weights.load_pretraining_checkpoint(wd, which='pretrainer')
    step = checkpoint_steps(wd)[-1]
    assert step >= CKPT_EVERY and step % CKPT_EVERY == 0
    _, want = weights.load_pretraining_checkpoint(reference, which='pretrainer', step=step)
    assert_same_params(params, want)


# ----------------------------------------------------------------------------- 5. fine-tuning


def test_finetune_two_processes_equal_one(runs, tmp_path):
  """electra_jax.finetune from a pre-training export: 2 x 1 devices == 1 x 2 devices."""
  import test_finetune  # pylint: disable=g-import-not-at-top  (its synthetic RTE)
  export = runs.get(1, 2) / 'export'
  write_rte = test_finetune._write_rte  # pylint: disable=protected-access
  write_rte(tmp_path / 'data', n_train=64, n_dev=32)
  launched = {}
  for nproc in (2, 1):  # side by side
    wd = tmp_path / f'ft_{nproc}'
    base = [sys.executable, '-m', 'electra_jax.finetune',
            '--config=configs/finetune.py:task=rte,runlocal=True', f'--workdir={wd}',
            f'--config.train.init_from={export}', f'--config.data.data_dir={tmp_path / "data"}',
            '--config.train.seq_len=32', '--config.train.epochs=2',
            '--config.train.log_every=1']
    launched[nproc] = (wd, Procs([base + d for d in distributed_flags(nproc)],
                                 env(2 // nproc, nproc), wd))
  results = {}
  for nproc, (wd, procs) in launched.items():
    procs.wait_ok()
    results[nproc] = json.loads((wd / 'results.json').read_text())
    records = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
    results[nproc]['train'] = {r['step']: r['train'] for r in records if 'train' in r}
    results[nproc]['records'] = len(records)
  two, one = results[2], results[1]
  assert two['init_kind'] == one['init_kind'] == 'export'
  assert two['num_steps'] == one['num_steps'] == len(one['train']) == 2 * (64 // 8)
  # Process 0 alone wrote the logs: one record per step, one per epoch.
  assert sorted(two['train']) == list(range(1, two['num_steps'] + 1))
  assert two['records'] == one['records'] == two['num_steps'] + 2
  assert [r['epoch'] for r in two['history']] == [1, 2]
  loss_diff = assert_same_losses(two['train'], one['train'], range(1, one['num_steps'] + 1))
  for a, b in zip(two['history'], one['history']):
    for k, v in b['dev'].items():
      np.testing.assert_allclose(a['dev'][k], v, rtol=LOSS_RTOL, err_msg=f'epoch {b["epoch"]} {k}')
  report(f'fine-tuning 2 proc x 1 dev vs 1 proc x 2 dev: max rel train loss diff '
         f'{loss_diff:.3g}; dev {two["dev"]["dev"]} vs {one["dev"]["dev"]}')


# ----------------------------------------------------------------------------- 6. data cache

_BUILD = r'''
import json, os, sys, time
from ml_collections import ConfigDict
from electra_jax.data import loader
source, vocab, cache, me, everyone = sys.argv[1:6]
open(me, 'w').close()  # imported: start the builds together
while not all(os.path.exists(p) for p in everyone.split(',')):
  time.sleep(0.001)
cfg = ConfigDict(dict(source=source, vocab=vocab, lowercase=True, eval_fraction=0.2,
                      num_shards=2, num_workers=0))
data = loader.make_pretraining_data(cfg, 32, 8, 8, 0, cache)
print(json.dumps({'data_dir': str(data.data_dir), 'n': data.train.num_examples}))
'''


def test_two_processes_build_one_empty_cache(corpus, tmp_path):  # noqa: F811
  """Two processes on one empty shared cache: the shards of a build alone, no temp dirs left.

  The corpus is big enough (~1 s to build) that both usually build, and one rename wins.
  """
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from electra_jax.data import loader  # pylint: disable=g-import-not-at-top
  text = runtime_util.write_corpus(tmp_path / 'corpus.txt', num_docs=3000, seed=1)
  vocab = corpus[1]
  cfg = ConfigDict(dict(source=str(text), vocab=str(vocab), lowercase=True, eval_fraction=0.2,
                        num_shards=2, num_workers=0))
  alone = loader.make_pretraining_data(cfg, 32, 8, 8, 0, tmp_path / 'alone').data_dir

  cache = tmp_path / 'cache'
  ready = [str(tmp_path / f'ready{i}') for i in range(2)]
  cmds = [[sys.executable, '-c', _BUILD, str(text), str(vocab), str(cache), me, ','.join(ready)]
          for me in ready]
  procs = Procs(cmds, env(1, 1), tmp_path / 'build')
  procs.wait_ok(timeout=120)
  outs = [json.loads(procs.log(i).strip().splitlines()[-1]) for i in range(2)]
  assert outs[0] == outs[1]
  built = Path(outs[0]['data_dir'])
  assert built.parent == cache and built.name == alone.name
  assert sorted(p.name for p in cache.iterdir()) == [alone.name]  # no temporary directory
  files = sorted(p.relative_to(alone) for p in alone.rglob('*')
                 if p.is_file() and p.name != 'build_stats.json')
  assert files and files == sorted(p.relative_to(built) for p in built.rglob('*')
                                   if p.is_file() and p.name != 'build_stats.json')
  for f in files:
    assert (built / f).read_bytes() == (alone / f).read_bytes(), f
  builders = sum('building ' in procs.log(i) for i in range(2))  # its progress bar
  report(f'empty cache, 2 processes: {builders} of them built it ({outs[0]["n"]} examples); '
         f'one cache of {len(files)} files, byte-identical to a build alone')
