"""Exact resume through `python -m electra_jax.main` in subprocesses (8 fake CPU devices).

One uninterrupted run is the reference. Against it: a run killed with SIGKILL and
restarted logs bit-identical per-step metrics; SIGTERM saves a checkpoint and
exits 0; a corrupt latest checkpoint is reported, the previous one is used, and
the steps redone from it are bit-identical too.
"""

import json
import shutil
import signal

import pytest

from electra_jax import runlog
from runtime_util import corpus  # noqa: F401  (fixture)
from runtime_util import run_main, start_main, wait_for_step

NUM_STEPS = 40
# log_every=1 so every step's loss is compared; no eval, to keep the runs short.
RUN = {'train.num_steps': NUM_STEPS, 'train.log_every': 1, 'train.checkpoint_every': 10,
       'train.keep_checkpoints': 3, 'train.eval_batches': 0, 'train.eval_every': 1000}
COMPARED = ('loss', 'gen_loss', 'disc_loss', 'gen_accuracy', 'disc_accuracy', 'grad_norm',
            'param_norm', 'learning_rate')


def _metrics(workdir):
  return {r['step']: r for r in runlog.read_jsonl(workdir / 'metrics.jsonl')}


def _assert_bit_identical(got: dict, want: dict, steps):
  for s in steps:
    for k in COMPARED:
      # JSON floats round-trip exactly, so == is a bitwise comparison of the float32 values.
      assert got[s][k] == want[s][k], f'step {s} {k}: {got[s][k]!r} != {want[s][k]!r}'


@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory):  # noqa: F811
  wd = tmp_path_factory.mktemp('reference') / 'run'
  r = run_main(wd, corpus, **RUN)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  m = _metrics(wd)
  assert sorted(m) == list(range(1, NUM_STEPS + 1))
  return wd, m


def test_sigkill_then_resume_is_bit_identical(reference, corpus, tmp_path):  # noqa: F811
  _, want = reference
  wd = tmp_path / 'run'
  proc = start_main(wd, corpus, **RUN)
  killed_at = wait_for_step(proc, wd / 'metrics.jsonl', 23)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  assert killed_at < NUM_STEPS, 'the run finished before the kill; nothing was tested'
  before = _metrics(wd)

  r = run_main(wd, corpus, **RUN)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  resumed = int(r.stdout.split('Resumed from the checkpoint at step ')[1].split()[0])
  # The newest checkpoint may still have been in flight (async) when the kill came.
  assert 10 <= resumed <= killed_at and resumed % 10 == 0
  got = _metrics(wd)
  assert sorted(got) == list(range(1, NUM_STEPS + 1))
  _assert_bit_identical(got, want, range(resumed + 1, NUM_STEPS + 1))
  # What the killed run logged before dying matches too.
  _assert_bit_identical(before, want, range(1, killed_at + 1))


def test_sigterm_saves_a_checkpoint_and_exits_0(reference, corpus, tmp_path):  # noqa: F811
  wd = tmp_path / 'run'
  proc = start_main(wd, corpus, **RUN)
  wait_for_step(proc, wd / 'metrics.jsonl', 13)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in out
  step = int(out.split('saved a checkpoint at step ')[1].split()[0])
  assert 13 <= step < NUM_STEPS
  saved = sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved[-1] == step  # the preemption checkpoint, not just the periodic ones
  meta = json.loads((wd / 'checkpoints' / str(step) / 'meta' / 'metadata').read_text())
  assert meta['step'] == step


def test_corrupt_latest_checkpoint_falls_back(reference, corpus, tmp_path):  # noqa: F811
  ref_wd, want = reference
  wd = tmp_path / 'run'
  shutil.copytree(ref_wd, wd)
  latest = wd / 'checkpoints' / str(NUM_STEPS)
  for f in (latest / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\0corrupt' * 4)

  r = run_main(wd, corpus, **RUN)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert f'checkpoint at step {NUM_STEPS} is corrupt or partial' in r.stdout
  assert f'Resumed from the checkpoint at step {NUM_STEPS - 10}' in r.stdout
  assert list((wd / 'checkpoints.corrupt').iterdir())
  assert (wd / 'checkpoints' / str(NUM_STEPS) / 'state').is_dir()  # saved again
  # The log is rolled back to the restored step, so the redone steps appear once.
  logged = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in logged] == list(range(1, NUM_STEPS + 1))
  _assert_bit_identical({x['step']: x for x in logged}, want, range(1, NUM_STEPS + 1))
