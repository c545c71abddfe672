r"""`python -m electra_jax.sweep --backend=slurm`: one SLURM job per trial, through submitit.

    python -m electra_jax.sweep --config=configs/ablations/generator_size.py \
        --workdir=$SCRATCH/runs/gen_size --backend=slurm \
        --slurm_partition=gpu --slurm_gpus_per_node=1 --slurm_time=24:00:00

Every unfinished trial becomes one job, which runs the trial's own command:
`python -m electra_jax.sweep --config=... --workdir=... --only=TRIAL --noreport`,
the line --backend=print prints. So a job runs the trial's stages exactly as the
local backend does (pre-training, then fine-tuning; the same workdir layout, logs
and DONE markers), and the report step reads both alike. submitit's files (the
pickled job, the job's stdout/stderr) go to WORKDIR/<trial>/slurm/, with
job.json naming the last job submitted and its command.

Resources, later ones winning: the defaults (1 node, 1 GPU per node, 24 h),
the sweep file's `SLURM = dict(...)`, the trial's `add(..., slurm=dict(...))`,
then the --slurm_* flags. Keys: nodes, gpus_per_node, cpus_per_task, mem_gb,
time (minutes or SLURM's [D-]HH:MM:SS), partition, extra (more sbatch options,
{'account': 'abc', 'qos': 'high'}), setup (shell lines run first: module load,
venv activation).

The job runs in the batch script itself, on the first node (no srun around it).
Multi-node trials (nodes > 1) launch pre-training as
`srun --nodes=N --ntasks-per-node=1 --kill-on-bad-exit=1 python -m electra_jax.main
--multihost ...` (--pretrain_launcher; one process per node, jax.distributed
detects SLURM: README "Scale out") and fine-tune in one process on the first
node. To keep N nodes only for pre-training: run with --pretrain_only, then
again with --slurm_nodes=1.

Resume. Re-running the same command skips finished trials (DONE), leaves alone
trials whose last job is still pending or running (job.json + sacct), and
submits the others again (failed, cancelled, timed out, preempted): their
pre-training resumes from its newest checkpoint and finished stages are skipped.
Within a job, SLURM sends USR2 to the batch script (`--signal=B:USR2@120`) two
minutes before the time limit, and at preemption where slurm.conf has
`PreemptParameters=send_user_signal`; submitit's handler calls
`TrialJob.checkpoint`, which SIGTERMs the trial command (it passes SIGTERM on to
the running stage: pre-training saves a checkpoint and exits 0; the tasks of a
multi-node srun get it through `scancel --signal=TERM`, as srun itself would
SIGKILL them), waits for it, and requeues the job, which resumes the trial.
Time-outs are requeued up to --slurm_max_timeouts times, preemptions always. A
preemption by plain SIGTERM stops a one-node trial the same way, without the
requeue: re-running the sweep resumes it (or SLURM's PreemptMode=REQUEUE does).
(That SIGTERM also reaches srun, which then kills a multi-node pre-training
without a save; it resumes from its last periodic checkpoint.)

--slurm_cluster=local runs the same jobs with submitit's LocalExecutor, as local
processes (tests/test_sweep_slurm.py; no cluster needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULT_RESOURCES = dict(nodes=1, gpus_per_node=1, cpus_per_task=None, mem_gb=None,
                         time='24:00:00', partition=None, extra={}, setup=[])
# USR2 comes this long before the time limit: time for the stage to save a checkpoint.
SIGNAL_DELAY_S = 120
STOP_TIMEOUT_S = 90  # how long the preemption hook waits for the stage to save and exit
# sacct states of a job that may still run (so a re-run does not submit the trial again).
ACTIVE_STATES = {'PENDING', 'RUNNING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'CONFIGURING',
                 'COMPLETING', 'SUSPENDED', 'RESIZING', 'SIGNALING', 'STAGE_OUT'}


def minutes(value) -> int:
  """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> minutes."""
  text = str(value).strip()
  try:
    days, _, rest = text.rpartition('-') if '-' in text else ('0', '', text)
    parts = [int(p) for p in rest.split(':')]
    d = int(days)
    if d < 0 or any(p < 0 for p in parts) or not 1 <= len(parts) <= 3:
      raise ValueError
  except ValueError:
    raise ValueError(f'time {value!r}: expected minutes or [D-]HH:MM:SS') from None
  if '-' in text:  # D-HH, D-HH:MM, D-HH:MM:SS
    h, m, s = (parts + [0, 0])[:3]
  elif len(parts) == 3:
    h, m, s = parts
  else:  # minutes, minutes:seconds
    h, m, s = 0, parts[0], parts[1] if len(parts) == 2 else 0
  total = d * 24 * 60 + h * 60 + m + (1 if s else 0)
  if total < 1:
    raise ValueError(f'time {value!r}: expected at least one minute')
  return total


def trial_resources(module, trial, overrides: dict | None = None) -> dict:
  """The trial's resources: defaults < module.SLURM < add(slurm=) < `overrides` (flags)."""
  res = {**DEFAULT_RESOURCES, 'extra': {}, 'setup': []}
  sources = ((getattr(module, 'SLURM', {}), 'the sweep file\'s SLURM'),
             (trial.slurm, f'add(slurm=...) of {trial.name}'),
             (overrides or {}, 'the --slurm_* flags'))
  for source, where in sources:
    unknown = sorted(set(source) - set(DEFAULT_RESOURCES))
    if unknown:
      raise ValueError(f'{where}: unknown keys {unknown}; expected some of '
                       f'{sorted(DEFAULT_RESOURCES)}')
    for key, value in source.items():
      if key == 'extra':
        res['extra'] = {**res['extra'], **dict(value)}
      elif key == 'setup':
        res['setup'] = res['setup'] + ([value] if isinstance(value, str) else list(value))
      else:
        res[key] = value
  if not isinstance(res['nodes'], int) or res['nodes'] < 1:
    raise ValueError(f'trial {trial.name}: nodes={res["nodes"]!r}; expected an integer >= 1')
  minutes(res['time'])  # fails early on a bad format
  return res


def srun_prefix(res: dict) -> list[str] | None:
  """How a multi-node trial launches pre-training (None: one process, no srun)."""
  if res['nodes'] <= 1:
    return None
  cmd = ['srun', f'--nodes={res["nodes"]}', '--ntasks-per-node=1', '--kill-on-bad-exit=1']
  if res['cpus_per_task']:  # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05)
    cmd.append(f'--cpus-per-task={res["cpus_per_task"]}')
  return cmd


def describe(res: dict) -> str:
  out = [f'{res["nodes"]} node' + ('s' if res['nodes'] > 1 else ''),
         f'{res["gpus_per_node"]} GPU/node', f'time {res["time"]}']
  out += [f'{k} {res[k]}' for k in ('cpus_per_task', 'mem_gb', 'partition') if res[k]]
  out += [f'{k}={v}' for k, v in res['extra'].items()]
  return ', '.join(out)


@dataclasses.dataclass
class JobSpec:
  """One trial to submit: the command that runs it (sweep.trial_command) and its resources."""
  name: str
  tdir: Path
  command: list[str]
  resources: dict
  marker: str = 'DONE'  # the file that says the trial finished (pretrain.DONE: --pretrain_only)


_PROC: subprocess.Popen | None = None  # the job's running trial command (not pickled)


class TrialJob:
  """What one job runs: the trial's command, `python -m electra_jax.sweep ... --only=NAME`.

  Picklable by submitit (strings only). `checkpoint` is submitit's preemption /
  time-out hook (called on USR2): it SIGTERMs the trial command, which passes
  SIGTERM on to its running stage (pre-training saves a checkpoint and exits),
  waits for it to exit, and returns itself for submitit to requeue; the
  requeued job runs the same command, which resumes the trial.
  """

  def __init__(self, name: str, command: list[str], tdir: str, marker: str = 'DONE'):
    self.name = name
    self.command = list(command)
    self.tdir = str(tdir)
    self.marker = marker

  def __call__(self) -> dict:
    global _PROC
    import submitit  # pylint: disable=g-import-not-at-top
    try:  # a result left by an earlier run of this job (requeued by SLURM) is stale now
      submitit.JobEnvironment().paths.result_pickle.unlink(missing_ok=True)
    except (KeyError, RuntimeError):  # not inside a submitit job (a direct call)
      pass
    print(f'[{self.name}] $ {shlex.join(self.command)}', flush=True)
    _PROC = subprocess.Popen(self.command, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
    failed = []
    for line in _PROC.stdout:  # echoed to the job's log; the FAILED lines name the cause
      sys.stdout.write(line)
      sys.stdout.flush()
      if 'FAILED: ' in line or line.startswith('error:'):
        failed.append(line.strip().split('FAILED: ', 1)[-1])
    rc = _PROC.wait()
    tdir = Path(self.tdir)
    if not (tdir / self.marker).is_file():
      raise RuntimeError(f'trial {self.name} did not finish (exit code {rc}): '
                         + (failed[-1] if failed else f'see {tdir / "logs"}'))
    result = tdir / 'result.json'
    return json.loads(result.read_text()) if self.marker == 'DONE' and result.is_file() else {}

  def checkpoint(self, *args, **kwargs):
    import submitit  # pylint: disable=g-import-not-at-top
    print(f'[{self.name}] preempted or at the time limit: stopping the trial (SIGTERM; '
          'pre-training saves a checkpoint), then requeueing', flush=True)
    if _PROC is not None:
      _stop(_PROC.pid, STOP_TIMEOUT_S)
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _stop(pid: int, timeout: float) -> None:
  """SIGTERM to a child, then wait up to `timeout` s for it to exit.

  Runs in submitit's signal handler while the main thread may be blocked in
  Popen.wait() (holding its lock), so it only peeks at the exit (waitid
  WNOWAIT) and leaves reaping the child to that wait.
  """
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    return
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return
    except ChildProcessError:  # already reaped
      return
    time.sleep(0.2)


def make_executor(folder: Path, res: dict, *, cluster: str, name: str, max_timeouts: int):
  """A submitit executor for one trial's job (cluster 'slurm' or 'local')."""
  import submitit  # pylint: disable=g-import-not-at-top
  from submitit.core import job_environment  # pylint: disable=g-import-not-at-top
  pythonpath = str(REPO)
  params = dict(name=name, timeout_min=minutes(res['time']), nodes=res['nodes'], tasks_per_node=1,
                gpus_per_node=res['gpus_per_node'] or 0)
  if cluster == 'slurm':
    # The trial runs in the batch script itself (no srun around it): `exec` makes
    # python the batch shell, so `--signal=B:USR2@...` reaches submitit's handler
    # and no stage gets a signal it would die of.
    if not shutil.which('sbatch'):
      raise ValueError('--backend=slurm needs sbatch on the PATH (a SLURM login node); '
                       '--slurm_cluster=local runs the same jobs on this machine, '
                       '--backend=print prints the commands for another scheduler')
    ex = submitit.AutoExecutor(folder=folder, cluster='slurm', slurm_max_num_timeout=max_timeouts,
                               slurm_python='exec ' + shlex.quote(sys.executable))
    usr = job_environment.JobEnvironment.USR_SIG
    params.update(
        slurm_use_srun=False, slurm_signal_delay_s=SIGNAL_DELAY_S,
        slurm_additional_parameters={'signal': f'B:{usr}@{SIGNAL_DELAY_S}', **res['extra']},
        slurm_setup=[f'export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}',
                     *res['setup']])
    if res['partition']:
      params['slurm_partition'] = res['partition']
    if res['cpus_per_task']:
      params['cpus_per_task'] = res['cpus_per_task']
    if res['mem_gb']:
      params['mem_gb'] = res['mem_gb']
  elif cluster == 'local':
    ex = submitit.AutoExecutor(folder=folder, cluster='local', local_max_num_timeout=max_timeouts)
    # Local jobs inherit this environment (a setup line would put a shell around them).
    paths = os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if pythonpath not in paths:
      os.environ['PYTHONPATH'] = os.pathsep.join([pythonpath] + [p for p in paths if p])
  else:
    raise ValueError(f'slurm cluster {cluster!r}; expected slurm or local')
  ex.update_parameters(**params)
  return ex


def _pid_alive(pid: str) -> bool:
  try:
    return b'submitit' in Path(f'/proc/{int(pid)}/cmdline').read_bytes()
  except (OSError, ValueError):
    return False


def previous_jobs(tdirs: list[Path], cluster: str) -> dict:
  """{trial dir: its last submitted job} for the jobs that may still run (one sacct call)."""
  import submitit  # pylint: disable=g-import-not-at-top
  jobs = {}
  for tdir in tdirs:
    record = tdir / 'slurm' / 'job.json'
    rec = json.loads(record.read_text()) if record.is_file() else {}
    if rec.get('cluster') != cluster:
      continue
    if cluster == 'local':
      if _pid_alive(rec['job_id']):
        jobs[tdir] = submitit.LocalJob(folder=tdir / 'slurm', job_id=rec['job_id'])
    else:
      jobs[tdir] = submitit.SlurmJob(folder=tdir / 'slurm', job_id=rec['job_id'])
  if cluster == 'slurm' and jobs:
    submitit.SlurmJob.watcher.update()
    # sacct, not the result file: a job requeued by SLURM may have left one from before.
    jobs = {t: j for t, j in jobs.items() if _slurm_state(j, 'cache') in ACTIVE_STATES}
  return jobs


def _slurm_state(job, mode: str = 'standard') -> str:
  return (job.get_info(mode=mode).get('State') or 'UNKNOWN').split()[0]


def _job_done(job) -> bool:
  if getattr(job, '_process', True) is None:  # a local job from an earlier launcher
    return not _pid_alive(job.job_id)
  if hasattr(job, '_process'):  # a local job
    return job.done()
  state = _slurm_state(job)  # (PREEMPTED counts as ended: if SLURM requeues it, a re-run follows)
  if state == 'UNKNOWN':  # not in sacct (yet, or no accounting): the result file decides
    return job.paths.result_pickle.exists()
  return state not in ACTIVE_STATES


def _job_state(job) -> str:
  if getattr(job, '_process', True) is None:
    return 'RUNNING'
  return str(job.state).split()[0]


def _failure(job) -> str:
  """The job's error in one line (the exception of the trial, or SLURM's state)."""
  deadline = time.time() + (0 if hasattr(job, '_process') else 15)  # (NFS: files come late)
  while not job.paths.result_pickle.exists() and time.time() < deadline:
    time.sleep(1)
  if not job.paths.result_pickle.exists():  # (job.exception() would wait on a PREEMPTED job)
    state = 'killed' if hasattr(job, '_process') else _job_state(job)
    return (f'the job ended ({state}) before the trial finished: killed, cancelled, preempted '
            'or out of time')
  try:
    exc = job.exception()
  except Exception as e:  # pylint: disable=broad-except
    exc = e
  if exc is None:
    return 'the job ended without finishing the trial'
  text = str(exc)
  if '----------------------' in text:  # FailedJobError: the job's traceback between rulers
    text = text.split('----------------------')[1]
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1].strip().removeprefix('RuntimeError: ') if lines else type(exc).__name__


def run(jobs: list[JobSpec], *, name: str, cluster: str = 'slurm', max_timeouts: int = 10,
        wait: bool = True, poll_s: float | None = None) -> tuple[list[str], bool]:
  """Submits one job per trial (unless its last job is still queued or running);
  with `wait`, follows them to the end. Returns (failed trials, whether it waited)."""
  submitted, follow = 0, {}
  previous = previous_jobs([spec.tdir for spec in jobs], cluster)
  for spec in jobs:
    prev = previous.get(spec.tdir)
    if prev is not None:
      print(f'[{spec.name}] job {prev.job_id} is still {_job_state(prev)}: not submitted again',
            flush=True)
      follow[spec.name] = (spec, prev)
      continue
    folder = spec.tdir / 'slurm'
    folder.mkdir(parents=True, exist_ok=True)
    ex = make_executor(folder, spec.resources, cluster=cluster, max_timeouts=max_timeouts,
                       name=f'{name}.{spec.name}')
    job = ex.submit(TrialJob(spec.name, spec.command, str(spec.tdir), spec.marker))
    (folder / 'job.json').write_text(json.dumps(
        {'job_id': job.job_id, 'cluster': cluster, 'submitted': time.strftime('%Y-%m-%d %H:%M:%S'),
         'command': spec.command, 'resources': spec.resources}, indent=1))
    submitted += 1
    print(f'[{spec.name}] submitted job {job.job_id} ({describe(spec.resources)}); its log: '
          f'{job.paths.stdout}', flush=True)
    follow[spec.name] = (spec, job)
  if not wait:
    print(f'Jobs submitted: {submitted}; still queued or running from before: '
          f'{len(follow) - submitted}. Re-run the same command to follow them (nothing is '
          'submitted twice) and to resume failed or preempted trials; --report_only writes '
          'the tables.', flush=True)
    return [], False
  print(f'waiting for {len(follow)} job' + ('s' if len(follow) != 1 else ''), flush=True)
  if poll_s is None:
    poll_s = 1.0 if cluster == 'local' else 30.0
  return _wait(follow, poll_s), True


def _wait(follow: dict, poll_s: float) -> list[str]:
  failures, states = [], {}
  pending = dict(follow)
  while pending:
    for name, (spec, job) in list(pending.items()):
      if _job_done(job):
        del pending[name]
        if (spec.tdir / spec.marker).is_file():
          result = spec.tdir / 'result.json'
          glue = json.loads(result.read_text()).get('glue') if result.is_file() else None
          print(f'[{name}] done (job {job.job_id})'
                + (f': glue={glue}' if glue is not None else ''), flush=True)
        else:
          failures.append(name)
          print(f'[{name}] FAILED (job {job.job_id}): {_failure(job)}\n'
                f'  logs: {spec.tdir / "logs"}, {job.paths.stdout}', flush=True)
        continue
      state = _job_state(job)
      if state != states.get(name):
        states[name] = state
        print(f'[{name}] job {job.job_id}: {state}', flush=True)
    if pending:
      time.sleep(poll_s)
  return failures
