"""The sweep's slurm and print backends, without a cluster.

End to end with submitit's LocalExecutor (`--slurm_cluster=local`: the jobs run
as local processes through submitit's job, pickling and requeue code): a
two-trial sweep of the real tiny pre-training and fine-tuning; one trial's
pre-training is killed (SIGKILL), the other is preempted through submitit's
checkpoint hook (USR2 -> SIGTERM -> checkpoint saved -> job requeued ->
resumed in the same sweep run); re-running the sweep command skips the finished
trial and resubmits the killed one, which resumes from its checkpoint.

The SLURM side proper runs against fake `sbatch` / `sacct` executables: the
batch script submitit writes, and a re-run that leaves a still-running job
alone and resubmits a failed one.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from electra_jax import rundir
from electra_jax import sweep
from electra_jax import sweep_slurm
from runtime_util import REPO, corpus, env  # noqa: F401  (corpus: fixture)
from runtime_util import overrides as overrides_of
from test_resume import RUN
from test_sweep import FAKE_FINETUNE, FAKE_MAIN, SWEEP_FILE

submitit = pytest.importorskip('submitit')

# ---------------------------------------------------------------- fast: no processes


def test_time_formats_and_resource_precedence():
  assert [sweep_slurm.minutes(t) for t in (90, '90', '1:30', '2:00:00', '1-0', '1-2:30',
                                           '0-0:0:1')] == [90, 90, 2, 120, 1440, 1590, 1]
  for bad in ('', 'abc', '1:2:3:4', '-5', '0'):
    with pytest.raises(ValueError, match='time'):
      sweep_slurm.minutes(bad)

  class Module:
    SLURM = dict(gpus_per_node=4, time='4:00:00', extra={'account': 'abc'}, setup=['module load x'])

  trial = sweep.Trial('t', '', {}, None, slurm=dict(nodes=2, time=30))
  res = sweep_slurm.trial_resources(Module, trial, {'time': '1-0', 'extra': {'qos': 'high'}})
  assert res == dict(nodes=2, gpus_per_node=4, cpus_per_task=None, mem_gb=None, time='1-0',
                     partition=None, extra={'account': 'abc', 'qos': 'high'},
                     setup=['module load x'])
  assert sweep_slurm.srun_prefix(res) == ['srun', '--nodes=2', '--ntasks-per-node=1',
                                          '--kill-on-bad-exit=1']
  assert sweep_slurm.srun_prefix({**res, 'nodes': 1}) is None
  with pytest.raises(ValueError, match=r"add\(slurm=...\) of t: unknown keys \['gpus'\]"):
    sweep_slurm.trial_resources(Module, sweep.Trial('t', '', {}, None, slurm={'gpus': 1}))


@pytest.fixture
def fakes(tmp_path, monkeypatch):
  """The fake entry points and sweep file of test_sweep, plus fake sbatch/sacct/srun."""
  (tmp_path / 'fake_main.py').write_text(FAKE_MAIN)
  (tmp_path / 'fake_finetune.py').write_text(FAKE_FINETUNE)
  (tmp_path / 'study.py').write_text(SWEEP_FILE + textwrap.dedent('''
      SLURM = dict(partition='gpu', time='2:00:00')
      '''))
  monkeypatch.setenv('FAKE_CALLS', str(tmp_path / 'calls.jsonl'))
  monkeypatch.delenv('FAKE_CRASH_AT', raising=False)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  # sbatch keeps the script and answers like SLURM; sacct reports $FAKE_SACCT_STATE for every job.
  (bin_dir / 'sbatch').write_text(textwrap.dedent(f'''\
      #!/bin/sh
      n=$(ls {bin_dir} | grep -c '^script_')
      cp "$1" {bin_dir}/script_$((4200 + n)).sh
      echo "Submitted batch job $((4200 + n))"
      '''))
  (bin_dir / 'sacct').write_text(textwrap.dedent(f'''\
      #!/bin/sh
      echo "JobID|State|NodeList"
      for f in {bin_dir}/script_*.sh; do
        id=$(basename $f .sh); echo "${{id#script_}}|$FAKE_SACCT_STATE|node1"
      done
      '''))
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 1\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  cmds = dict(main_cmd=f'{sys.executable} {tmp_path / "fake_main.py"}',
              finetune_cmd=f'{sys.executable} {tmp_path / "fake_finetune.py"}')
  return tmp_path, bin_dir, cmds


def test_slurm_batch_scripts_and_resubmission(fakes, monkeypatch):
  tmp, bin_dir, cmds = fakes
  runs = tmp / 'runs'
  kw = dict(backend='slurm', wait=False, **cmds)
  flags = {'cluster': 'slurm', 'max_timeouts': 10, 'resources': {'gpus_per_node': 8}}
  (runs / 'trial_a').mkdir(parents=True)
  (runs / 'trial_a' / 'DONE').touch()
  (runs / 'trial_a' / 'result.json').write_text('{"trial": "trial_a"}')
  sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, only=['trial_a', 'crash_c'],
                  slurm=flags, **kw)
  # trial_b on two nodes, through the flags of this one run.
  sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, only=['trial_b'],
                  slurm={**flags, 'resources': {'gpus_per_node': 8, 'nodes': 2,
                                                'cpus_per_task': 16}}, **kw)
  scripts = sorted(bin_dir.glob('script_*.sh'))
  assert [s.name for s in scripts] == ['script_4200.sh', 'script_4201.sh']  # trial_a is DONE
  crash, b = (s.read_text() for s in scripts)
  for script, nodes in ((crash, 1), (b, 2)):
    assert f'#SBATCH --nodes={nodes}\n' in script
    assert '#SBATCH --gpus-per-node=8\n' in script
    assert '#SBATCH --partition=gpu\n' in script  # from the sweep file's SLURM
    assert '#SBATCH --time=120\n' in script
    assert '#SBATCH --ntasks-per-node=1\n' in script
    assert '#SBATCH --signal=B:USR2@120\n' in script
    # The job runs in the batch shell itself (exec: USR2 reaches submitit), not under srun.
    assert f'\nexec {shlex.quote(sys.executable)} -u -m submitit.core._submit ' in script
    assert '\nsrun' not in script
    assert f'export PYTHONPATH={REPO}' in script
  assert '#SBATCH --cpus-per-task=16\n' in b
  rec = json.loads((runs / 'trial_b' / 'slurm' / 'job.json').read_text())
  assert rec['job_id'] == '4201' and rec['cluster'] == 'slurm'
  assert rec['command'][1:3] == ['-m', 'electra_jax.sweep']
  assert '--only=trial_b' in rec['command'] and '--noreport' in rec['command']
  assert ('--pretrain_launcher=srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 '
          '--cpus-per-task=16') in rec['command']

  # Re-running: a job still queued or running is followed, not submitted again...
  monkeypatch.setenv('FAKE_SACCT_STATE', 'RUNNING')
  sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, only=['crash_c', 'trial_b'],
                  slurm=flags, **kw)
  assert len(list(bin_dir.glob('script_*.sh'))) == 2
  # ...one that failed (or was cancelled, preempted, timed out) is.
  monkeypatch.setenv('FAKE_SACCT_STATE', 'FAILED')
  submitit.SlurmJob.watcher.clear()
  sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, only=['crash_c'], slurm=flags, **kw)
  assert len(list(bin_dir.glob('script_*.sh'))) == 3
  assert json.loads((runs / 'crash_c' / 'slurm' / 'job.json').read_text())['job_id'] == '4202'


def test_sigterm_reaches_the_stages_and_srun_tasks_through_scancel(fakes, monkeypatch):
  """The trial command passes SIGTERM on; a stage under srun gets it via scancel, since
  srun itself would answer SIGTERM by killing its tasks."""
  _, bin_dir, _ = fakes
  (bin_dir / 'scancel').write_text(f'#!/bin/sh\necho "$@" > {bin_dir}/scancel.args\n')
  (bin_dir / 'scancel').chmod(0o755)
  (bin_dir / 'srun').write_text('#!/bin/sh\nexec sleep 30\n')
  monkeypatch.setenv('SLURM_JOB_ID', '4242')
  plain = subprocess.Popen(['sleep', '30'])
  under_srun = subprocess.Popen(['srun', '--nodes=2', 'sleep', '30'])
  monkeypatch.setattr(sweep, '_CHILDREN', {plain, under_srun})
  monkeypatch.setattr(sweep, '_STOPPING', sweep.threading.Event())
  try:
    sweep._on_sigterm(signal.SIGTERM, None)
    assert plain.wait(timeout=10) == -signal.SIGTERM
    assert (bin_dir / 'scancel.args').read_text().split() == ['--signal=TERM', '4242']
    assert under_srun.poll() is None  # srun was left alone
    with pytest.raises(RuntimeError, match='stopped by SIGTERM'):  # and no new stage starts
      sweep._run(['true'], bin_dir / 'x.log', dry_run=False)
  finally:
    under_srun.kill()
    plain.kill()
    under_srun.wait()


def test_print_backend_lines_run_the_trials(fakes, capsys):
  tmp, _, cmds = fakes
  runs = tmp / 'runs'
  args = dict(backend='print', only=['trial_a', 'trial_b'], **cmds)
  assert sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, **args) == []
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if not l.startswith('#')]
  assert len(lines) == 2 and '--only=trial_a' in lines[0] and '--only=trial_b' in lines[1]
  assert '# trial_a: electra, ' in out and 'fine-tuning rte mrpc x 3 seeds; 1 node' in out
  assert not runs.exists()  # nothing ran
  # A printed line runs its trial, with the local layout and DONE markers. It locks only its
  # trial's dir, so it runs while a launcher holds the sweep's root (as a SLURM job does)...
  run_line = lambda line: subprocess.run(['bash', '-c', line], capture_output=True, text=True,
                                         timeout=120, env={**os.environ, 'PYTHONPATH': str(REPO)})
  runs.mkdir()
  with rundir.WorkdirLock(runs, 'sweep'):
    r = run_line(lines[0])
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert (runs / 'trial_a' / 'DONE').is_file() and (runs / 'trial_a' / 'result.json').is_file()
  assert not (runs / 'results.csv').exists()  # --noreport: the report comes once, at the end
  # ...but never while another process runs the same trial.
  (runs / 'trial_b').mkdir()
  with rundir.WorkdirLock(runs / 'trial_b', 'sweep trial'):
    r = run_line(lines[1])
  assert r.returncode == 1 and 'is in use by a sweep trial (PID' in r.stdout, r.stdout[-2000:]
  assert not (runs / 'trial_b' / 'pretrain').exists()
  sweep.run_sweep(str(tmp / 'study.py') + ':size=tiny', runs, **args)
  out = capsys.readouterr().out
  assert '# trial_a: done' in out and len([l for l in out.splitlines() if '--only=' in l]) == 1


# ------------------------------------------- end to end: submitit's local executor, real runs

# test_resume's shrunk tiny config, so the persistent compilation cache already holds its
# programs when the suite gets here; the trials differ only in the seed (not compiled in).
NUM_STEPS = 40
E2E_SWEEP = """
from configs import pretrain

FINETUNE = dict(config='configs/finetune.py', arg='size=tiny', tasks=('rte',), num_seeds=3)
SLURM = dict(gpus_per_node=0, time=20)


def get_config(arg=None):
  c = pretrain.get_config('tiny,runlocal=True')
  c.update_from_flattened_dict({overrides!r})
  return c


def sweep(add):
  add(name='seed_0', seed=0)
  add(name='seed_1', seed=1)
"""


def _typed(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value  # a path


def _pids(*needles: str) -> list[int]:
  """Processes whose command line contains every needle."""
  out = []
  for d in Path('/proc').iterdir():
    if d.name.isdigit():
      try:
        cmdline = (d / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
      except OSError:
        continue
      if all(n in cmdline for n in needles):
        out.append(int(d.name))
  return out


def _steps(metrics: Path) -> list[int]:
  try:
    return [json.loads(l)['step'] for l in metrics.read_text().splitlines() if l.strip()] or [0]
  except (OSError, ValueError, KeyError):  # not there yet, a line being written
    return [0]


@pytest.mark.slow
def test_local_executor_two_trials_kill_preempt_resume(corpus, tmp_path):  # noqa: F811
  _, _, cache = corpus
  overrides = {k[len('--config.'):]: _typed(v) for k, v in
               (a.split('=', 1) for a in overrides_of(corpus))}
  overrides.update(RUN)
  study = tmp_path / 'study.py'
  study.write_text(E2E_SWEEP.format(overrides=overrides))
  (tmp_path / 'fake_finetune.py').write_text(FAKE_FINETUNE)
  runs = tmp_path / 'runs'
  cmd = [sys.executable, '-m', 'electra_jax.sweep', f'--config={study}', f'--workdir={runs}',
         '--backend=slurm', '--slurm_cluster=local',
         f'--finetune_cmd={sys.executable} {tmp_path / "fake_finetune.py"}']
  e = {**env(), 'ELECTRA_JAX_CACHE': str(cache), 'FAKE_CALLS': str(tmp_path / 'calls.jsonl')}
  log1 = tmp_path / 'sweep1.log'
  a, b = runs / 'seed_0', runs / 'seed_1'
  with open(log1, 'w') as out:
    launcher = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=out, stderr=subprocess.STDOUT)
  try:
    killed_at = preempted_at = None
    deadline = time.time() + 300
    while (killed_at is None or preempted_at is None) and time.time() < deadline:
      if killed_at is None and _steps(a / 'pretrain' / 'metrics.jsonl')[-1] >= 23:
        main_a = _pids('electra_jax.main', f'--workdir={a}/pretrain')
        assert len(main_a) == 1, main_a
        os.kill(main_a[0], signal.SIGKILL)  # a crash, a lost node: the trial fails
        killed_at = _steps(a / 'pretrain' / 'metrics.jsonl')[-1]
      if preempted_at is None and _steps(b / 'pretrain' / 'metrics.jsonl')[-1] >= 13:
        job_b = _pids('submitit.core._submit', str(b / 'slurm'))
        assert len(job_b) == 1, job_b
        os.kill(job_b[0], signal.SIGUSR2)  # what SLURM sends the job before its time limit
        preempted_at = _steps(b / 'pretrain' / 'metrics.jsonl')[-1]
      time.sleep(0.005)
    assert killed_at is not None and preempted_at is not None, log1.read_text()[-3000:]
    assert killed_at < NUM_STEPS and preempted_at < NUM_STEPS, 'a run ended before its signal'
    launcher.wait(timeout=300)
  finally:
    if launcher.poll() is None:  # (local jobs outlive their launcher, as SLURM jobs do)
      for pid in [launcher.pid] + _pids(str(tmp_path)):
        os.kill(pid, signal.SIGKILL)
  out1 = log1.read_text()
  print(out1)
  assert launcher.returncode == 1, out1[-3000:]
  assert '[seed_0] FAILED (job ' in out1 and 'exit code -9' in out1, out1[-3000:]
  assert '[seed_1] done (job ' in out1, out1[-3000:]

  # seed_1: USR2 -> submitit's checkpoint hook -> SIGTERM -> checkpoint -> requeued -> resumed.
  job_log = next((b / 'slurm').glob('*_0_log.out')).read_text()
  assert 'preempted or at the time limit' in job_log, job_log[-3000:]
  pre_b = (b / 'logs' / 'pretrain.log').read_text()
  print(''.join(l for l in (job_log + pre_b).splitlines(keepends=True)
                if l.startswith(('[seed_1]', '===')) or 'SIGTERM' in l or 'Resumed' in l))
  saved = int(pre_b.split('SIGTERM: saved a checkpoint at step ')[1].split()[0])
  assert preempted_at <= saved < NUM_STEPS
  assert f'Resumed from the checkpoint at step {saved}' in pre_b
  assert _steps(b / 'pretrain' / 'metrics.jsonl') == list(range(1, NUM_STEPS + 1))
  assert (b / 'DONE').is_file() and not (a / 'pretrain.DONE').exists()

  # Re-running the same command: seed_1 is skipped, seed_0 resubmitted and resumed.
  try:
    r = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
  finally:
    for pid in _pids(str(tmp_path)):
      os.kill(pid, signal.SIGKILL)
  print(r.stdout)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert '[seed_1] done, skipped' in r.stdout and '[seed_0] submitted job' in r.stdout
  assert '[seed_0] done (job ' in r.stdout and '2/2 trials finished' in r.stdout
  pre_a = (a / 'logs' / 'pretrain.log').read_text()
  print(''.join(l for l in pre_a.splitlines(keepends=True)
                if l.startswith('===') or 'Resumed' in l))
  resumed = int(pre_a.split('Resumed from the checkpoint at step ')[1].split()[0])
  # (the newest checkpoint may still have been in flight, async, when the kill came)
  assert 10 <= resumed <= killed_at and resumed % 10 == 0
  steps = _steps(a / 'pretrain' / 'metrics.jsonl')
  assert steps[-1] == NUM_STEPS and sorted(set(steps)) == list(range(1, NUM_STEPS + 1))

  # The report: what the local backend writes, from the same trial dirs.
  md = (runs / 'results.md').read_text()
  assert md.count('\n') == 4 and '| seed_0 |' in md and '| seed_1 |' in md
  for f in ('results.csv', 'glue_vs_flops.png'):
    assert (runs / f).stat().st_size > 0, f
  results = sweep.run_sweep(str(study), runs, report_only=True, main_cmd='', finetune_cmd='')
  assert (runs / 'results.md').read_text() == md
  by_name = {r['trial']: r for r in results}
  assert sorted(by_name) == ['seed_0', 'seed_1']
  assert by_name['seed_0']['steps'] == NUM_STEPS and by_name['seed_0']['glue'] == pytest.approx(60)
