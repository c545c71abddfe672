r"""Runs the sweep defined in a config file: pre-training, then fine-tuning, per trial.

    python -m electra_jax.sweep --config=configs/ablations/efficiency.py --workdir=runs/eff
    python -m electra_jax.sweep --config=configs/ablations/generator_size.py:size=tiny \
        --workdir=DIR --parallel=2 --dry_run
    python -m electra_jax.sweep --config=configs/ablations/generator_size.py --workdir=DIR \
        --backend=slurm --slurm_partition=gpu --slurm_gpus_per_node=1 --slurm_time=24:00:00

`--config=FILE:ARG` puts ARG in front of every trial's own config argument (a
`sweep(add, arg)` with two parameters gets ARG itself instead).

Backends (`--backend`):
  local  runs the trials here, `--parallel` at a time (the default)
  slurm  one SLURM job per trial through submitit; electra_jax/sweep_slurm.py
         has the details (resources, multi-node pre-training under srun,
         requeue on preemption and time-out)
  print  prints one command line per unfinished trial (it runs that trial,
         with the layout below) and runs nothing: for any other scheduler

A sweep file is an ordinary config file (`get_config(arg)`) with one more function:

    def sweep(add):
      for frac in (0.25, 0.5, 1.0):
        add(name=f'gen{frac}', arg='size=small',
            **{'model.generator_fraction': frac, 'train.num_steps': 100_000})

`add(name=None, arg='', finetune=True, init=None, slurm=None, **overrides)` declares
one trial:
  arg        the config argument: the trial pre-trains with `--config=FILE:arg`
  overrides  dotted config keys, passed as `--config.KEY=VALUE`
  finetune   True = the file's FINETUNE spec (below), False = pre-training only,
             or a dict replacing keys of FINETUNE for this trial
  init       a checkpoint to fine-tune (export dir, pre-training workdir, Hugging
             Face dir) instead of pre-training one: a fine-tuning-only trial
             (configs/glue_seeds.py)
  slurm      SLURM resources of this trial (keys as the file's SLURM dict,
             electra_jax/sweep_slurm.py)
  name       the trial's directory name (default: built from arg and overrides)
The file may define `FINETUNE = dict(config='configs/finetune.py', arg='size=tiny',
tasks=('rte', ...), num_seeds=3, overrides={'data.data_dir': ...})`; every task
is fine-tuned from the trial's export with `num_seeds` seeds.

Per trial, under WORKDIR/<name>/:
  pretrain/          `python -m electra_jax.main` (metrics.jsonl, export/); resumes
                     from its checkpoints when re-run
  finetune/<task>/   `python -m electra_jax.finetune ... --config.num_seeds=N`
                     (seed_<s>/results.json)
  logs/*.log         each command's output; *.DONE markers per finished stage
  result.json        the trial's final metrics; DONE once every stage finished
  slurm/             --backend=slurm only: submitit's job files and the job's log
Completed stages are skipped on a re-run; an interrupted pre-training resumes.
At the end (and with --report_only) WORKDIR gets results.csv, results.md and the
plots: GLUE score against pre-training FLOPs per objective, and, when the trials
vary the generator size, GLUE score against generator size.

GLUE score of a trial = mean over tasks of the median (over seeds) of each
task's main dev metric, x 100, as the paper reports.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import flags

from electra_jax import cli
from electra_jax import sweep_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MAIN_CMD = f'{shlex.quote(sys.executable)} -m electra_jax.main'
DEFAULT_FINETUNE_CMD = f'{shlex.quote(sys.executable)} -m electra_jax.finetune'

FINETUNE_DEFAULTS = dict(config='configs/finetune.py', arg='size=tiny', tasks=(), num_seeds=1,
                         overrides={})


@dataclasses.dataclass
class Trial:
  name: str
  arg: str
  overrides: dict
  finetune: dict | None  # None = pre-training only
  init: str | None = None  # a checkpoint to fine-tune: no pre-training stage
  slurm: dict = dataclasses.field(default_factory=dict)  # this trial's SLURM resources


def _fmt_value(v) -> str:
  if isinstance(v, float):
    return f'{v:g}'
  return str(v)


def _default_name(arg: str, overrides: dict) -> str:
  parts = [arg.replace('=', '-').replace(',', '_')] if arg else []
  parts += [f'{k.split(".")[-1]}-{_fmt_value(v)}' for k, v in sorted(overrides.items())]
  name = '_'.join(parts) or 'default'
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in name)


def load_module(path: str):
  """Imports a config file by path (as ml_collections' config_flags does)."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'sweep config {path!r} not found')
  spec = importlib.util.spec_from_file_location(f'sweep_config_{p.stem}', p)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'sweep'):
    raise ValueError(f'{path} has no sweep(add) function; expected one that calls add(...) '
                     'per trial')
  return module


def expand(module, base_arg: str = '') -> list[Trial]:
  """Calls module.sweep(add) and returns the trials in order; names must be unique.

  `base_arg` (from `--config=FILE:base_arg`) is put before every trial's arg,
  so the trial's own keys win; a `sweep(add, arg)` gets it as `arg` instead.
  """
  base_ft = {**FINETUNE_DEFAULTS, **getattr(module, 'FINETUNE', {})}
  trials: list[Trial] = []
  takes_arg = len(inspect.signature(module.sweep).parameters) > 1

  def add(name: str | None = None, arg: str = '', finetune: bool | dict = True,
          init: str | None = None, slurm: dict | None = None, **overrides):
    if finetune is True:
      ft = dict(base_ft) if base_ft['tasks'] else None
    elif finetune is False:
      ft = None
    elif isinstance(finetune, dict):
      unknown = sorted(set(finetune) - set(FINETUNE_DEFAULTS))
      if unknown:
        raise ValueError(f'add(finetune=...) keys {unknown}; expected a subset of '
                         f'{sorted(FINETUNE_DEFAULTS)}')
      ft = {**base_ft, **finetune}
    else:
      raise ValueError(f'add(finetune={finetune!r}); expected True, False or a dict')
    if init is not None:
      if ft is None:
        raise ValueError(f'add(init={init!r}) fine-tunes a checkpoint: it needs fine-tuning tasks')
      if arg or overrides:
        raise ValueError(f'add(init={init!r}) has no pre-training; arg/overrides '
                         f'{arg or sorted(overrides)} would be ignored')
      init = str(Path(init).resolve()) if Path(init).exists() else init
      name = name or '_'.join(ft['tasks'])
    name = name or _default_name(arg, overrides)
    full_arg = arg if takes_arg else ','.join(a for a in (base_arg, arg) if a)
    trial = Trial(name, full_arg, dict(overrides), ft, init, dict(slurm or {}))
    if any(t.name == trial.name for t in trials):
      raise ValueError(f'duplicate trial name {trial.name!r}; pass add(name=...) to tell them apart')
    trials.append(trial)

  if takes_arg:
    module.sweep(add, base_arg or None)
  else:
    module.sweep(add)
  if not trials:
    raise ValueError('sweep(add) added no trials')
  return trials


def resolved_config(module, trial: Trial):
  """The trial's pre-training config: get_config(arg) with the overrides applied."""
  c = module.get_config(trial.arg or None)
  for key, value in trial.overrides.items():
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    if last not in node:
      raise ValueError(f'trial {trial.name}: unknown config key {key!r}')
    node[last] = value
  return c


def pretrain_command(main_cmd: str, config_path: str, trial: Trial, workdir: Path,
                     launcher: list[str] | None = None) -> list[str]:
  """`main_cmd` with the trial's config; under `launcher` (e.g. srun) with --multihost."""
  cmd = shlex.split(main_cmd) + [f'--config={config_path}' + (f':{trial.arg}' if trial.arg else '')]
  cmd += [f'--config.{k}={_fmt_value(v)}' for k, v in trial.overrides.items()]
  cmd += [f'--workdir={workdir}', '--noprogress']
  return list(launcher) + cmd + ['--multihost'] if launcher else cmd


def finetune_command(finetune_cmd: str, ft: dict, task: str, export: Path, workdir: Path) -> list[str]:
  arg = f'task={task}' + (f',{ft["arg"]}' if ft['arg'] else '')
  cmd = shlex.split(finetune_cmd) + [f'--config={ft["config"]}:{arg}',
                                     f'--config.train.init_from={export}',
                                     f'--config.num_seeds={ft["num_seeds"]}']
  cmd += [f'--config.{k}={_fmt_value(v)}' for k, v in ft['overrides'].items()]
  return cmd + [f'--workdir={workdir}']


_CHILDREN: set[subprocess.Popen] = set()  # the stage processes running now
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()


def _on_sigterm(signum, frame):  # pylint: disable=unused-argument
  """SIGTERM (a SLURM job stopped or preempted, a scheduler's kill): passes it on to
  the running stages (pre-training saves a checkpoint and exits) and starts no
  new one; the trials then fail, and re-running the sweep resumes them.

  A stage under srun is not sent SIGTERM itself: srun would SIGKILL its tasks
  ("forcing job termination"). `scancel --signal=TERM $SLURM_JOB_ID` signals
  the tasks of the job's steps on every node instead (not the batch script).
  """
  _STOPPING.set()
  with _CHILDREN_LOCK:
    procs = list(_CHILDREN)
  for p in procs:
    try:
      if p.args[0] == 'srun' and os.environ.get('SLURM_JOB_ID'):
        subprocess.run(['scancel', '--signal=TERM', os.environ['SLURM_JOB_ID']], check=False,
                       timeout=60)
      else:
        os.kill(p.pid, signal.SIGTERM)
    except (ProcessLookupError, OSError, subprocess.TimeoutExpired):
      pass


def _run(cmd: list[str], log_path: Path, dry_run: bool) -> None:
  """Runs `cmd` from the repo root, appending its output to `log_path`; adds the
  wall time to logs/timings.json (seconds per stage, summed over resumed runs).

  If this thread is interrupted (Ctrl-C), the command gets SIGTERM (pre-training
  saves a checkpoint) rather than being left running.
  """
  print('  $ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)
  if dry_run:
    return
  if _STOPPING.is_set():
    raise RuntimeError('stopped by SIGTERM before this stage started')
  log_path.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  try:
    with open(log_path, 'a') as log:
      log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(cmd)}\n')
      log.flush()
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
      with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
      try:
        rc = proc.wait()
      except BaseException:
        if proc.poll() is None:
          proc.terminate()
          try:
            proc.wait(timeout=60)
          except subprocess.TimeoutExpired:
            proc.kill()
        raise
      finally:
        with _CHILDREN_LOCK:
          _CHILDREN.discard(proc)
  finally:
    timings_path = log_path.parent / 'timings.json'
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    timings[log_path.stem] = round(timings.get(log_path.stem, 0.0) + time.time() - t0, 3)
    timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True))
  if rc != 0:
    raise RuntimeError(f'command failed with exit code {rc} (log: {log_path}): {" ".join(cmd)}')


def run_trial(module, config_path: str, trial: Trial, root: Path, *, main_cmd: str,
              finetune_cmd: str, dry_run: bool = False, pretrain_only: bool = False,
              launcher: list[str] | None = None) -> dict:
  """Runs (or resumes) one trial and writes its result.json; returns the result.

  `launcher`: a prefix for the pre-training command, which then gets --multihost
  (the SLURM backend's `srun ...` for multi-node trials). The trial's directory is
  locked while it runs (WORKDIR/<trial>/.lock, electra_jax/rundir.py): trials of
  one sweep run at once in several jobs, never one trial twice.
  """
  tdir = root / trial.name
  if (tdir / 'DONE').is_file():
    print(f'[{trial.name}] done, skipped', flush=True)
    return json.loads((tdir / 'result.json').read_text())
  config = None if trial.init else resolved_config(module, trial)
  tdir.mkdir(parents=True, exist_ok=True)
  from electra_jax import rundir  # pylint: disable=g-import-not-at-top
  with contextlib.nullcontext() if dry_run else rundir.WorkdirLock(tdir, 'sweep trial'):
    (tdir / 'trial.json').write_text(json.dumps(dataclasses.asdict(trial), indent=2,
                                                default=str))
    pre = tdir / 'pretrain'
    export = Path(trial.init) if trial.init else pre / 'export'
    if not trial.init and not (tdir / 'pretrain.DONE').is_file():
      print(f'[{trial.name}] pre-training', flush=True)
      _run(pretrain_command(main_cmd, config_path, trial, pre, launcher),
           tdir / 'logs' / 'pretrain.log', dry_run)
      if not dry_run:
        if not (pre / 'export').is_dir():
          raise RuntimeError(f'[{trial.name}] pre-training exited 0 before its last step and '
                             f'wrote no {pre / "export"} (stopped by SIGTERM/SIGINT: preempted '
                             'or cancelled?); re-run to resume it')
        (tdir / 'pretrain.DONE').touch()
    if pretrain_only:
      return {}
    ft_scores = {}
    if trial.finetune:
      for task in trial.finetune['tasks']:
        tw = tdir / 'finetune' / task
        if not (tdir / f'finetune_{task}.DONE').is_file():
          print(f'[{trial.name}] fine-tuning {task}', flush=True)
          _run(finetune_command(finetune_cmd, trial.finetune, task, export, tw),
               tdir / 'logs' / f'finetune_{task}.log', dry_run)
          if dry_run:
            continue
          if not sweep_report.finetune_finished(tw, trial.finetune['num_seeds']):
            raise RuntimeError(f'[{trial.name}] fine-tuning {task} exited 0 before its last seed '
                               'finished (stopped by SIGTERM/SIGINT: preempted or cancelled?); '
                               're-run to resume it')
          (tdir / f'finetune_{task}.DONE').touch()
        if not dry_run:
          ft_scores[task] = sweep_report.finetune_scores(tw)
    if dry_run:
      return {}
    result = sweep_report.collect(config, trial, tdir, ft_scores)
    (tdir / 'result.json').write_text(json.dumps(result, indent=2, sort_keys=True))
    (tdir / 'DONE').touch()
    print(f'[{trial.name}] done: glue={result.get("glue")}', flush=True)
    return result


def describe(module, trial: Trial) -> str:
  """One line: the trial's objective, steps and FLOPs (or its checkpoint) and fine-tuning."""
  from electra_jax.pretrain import flops  # pylint: disable=g-import-not-at-top
  if trial.init:
    head = f'no pre-training: init {trial.init}'
  else:
    c = resolved_config(module, trial)  # fails fast on bad keys
    head = (f'{c.objective.name}, {c.train.num_steps} steps, '
            f'{flops.train_flops_per_step(c) * c.train.num_steps:.3g} pre-training FLOPs')
  if trial.finetune:
    head += (f'; fine-tuning {" ".join(trial.finetune["tasks"])} x '
             f'{trial.finetune["num_seeds"]} seeds')
  return head


def trial_command(config_arg: str, root: Path, trial: Trial, *, main_cmd: str, finetune_cmd: str,
                  pretrain_only: bool = False, launcher: list[str] | None = None) -> list[str]:
  """The command that runs one trial, from the repo root: this launcher restricted to it.

  What --backend=print prints and what each --backend=slurm job runs.
  """
  cmd = [sys.executable, '-m', 'electra_jax.sweep', f'--config={config_arg}',
         f'--workdir={root}', f'--only={trial.name}', '--noreport']
  if main_cmd != DEFAULT_MAIN_CMD:
    cmd.append(f'--main_cmd={main_cmd}')
  if finetune_cmd != DEFAULT_FINETUNE_CMD:
    cmd.append(f'--finetune_cmd={finetune_cmd}')
  if pretrain_only:
    cmd.append('--pretrain_only')
  if launcher:
    cmd.append(f'--pretrain_launcher={shlex.join(launcher)}')
  return cmd


def trial_done(root: Path, trial: Trial, pretrain_only: bool = False) -> bool:
  tdir = root / trial.name
  if pretrain_only and not trial.init:
    return (tdir / 'pretrain.DONE').is_file() or (tdir / 'DONE').is_file()
  return (tdir / 'DONE').is_file()


def run_local(module, config_path: str, trials: list[Trial], root: Path, *, parallel: int,
              **kw) -> list[str]:
  """Runs the trials here, `parallel` at a time; returns the names of the failed ones."""
  print(f'{len(trials)} trials, {parallel} at a time, in {root}', flush=True)
  failures = []
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    futures = {pool.submit(run_trial, module, config_path, t, root, **kw): t for t in trials}
    for fut in concurrent.futures.as_completed(futures):
      try:
        fut.result()
      except Exception as e:  # pylint: disable=broad-except  (report, keep the others going)
        failures.append(futures[fut].name)
        print(f'[{futures[fut].name}] FAILED: {e}', flush=True)
  return failures


def run_slurm(module, config_arg: str, trials: list[Trial], root: Path, *, slurm: dict,
              wait: bool, main_cmd: str, finetune_cmd: str, dry_run: bool,
              pretrain_only: bool) -> tuple[list[str], bool]:
  """One SLURM job per unfinished trial, running its trial_command (sweep_slurm.run).

  Returns (the failed trials, whether it waited for the jobs).
  """
  from electra_jax import sweep_slurm  # pylint: disable=g-import-not-at-top
  config_path = config_arg.partition(':')[0]
  jobs = []
  for t in trials:
    if trial_done(root, t, pretrain_only):
      print(f'[{t.name}] done, skipped', flush=True)
      continue
    res = sweep_slurm.trial_resources(module, t, slurm.get('resources'))
    srun = sweep_slurm.srun_prefix(res)
    cmd = trial_command(config_arg, root, t, main_cmd=main_cmd, finetune_cmd=finetune_cmd,
                        pretrain_only=pretrain_only, launcher=srun)
    if dry_run:
      print(f'[{t.name}] one job ({sweep_slurm.describe(res)}) running\n  $ {shlex.join(cmd)}',
            flush=True)
      run_trial(module, config_path, t, root, main_cmd=main_cmd, finetune_cmd=finetune_cmd,
                dry_run=True, pretrain_only=pretrain_only, launcher=srun)
      continue
    jobs.append(sweep_slurm.JobSpec(t.name, root / t.name, cmd, res,
                                    'pretrain.DONE' if pretrain_only and not t.init else 'DONE'))
  if dry_run:
    return [], True
  return sweep_slurm.run(jobs, name=Path(config_path).stem, wait=wait,
                         cluster=slurm.get('cluster', 'slurm'),
                         max_timeouts=slurm.get('max_timeouts', 10), poll_s=slurm.get('poll_s'))


def run_sweep(config_path: str, root: Path, *, parallel: int = 1, only=(), dry_run=False,
              report_only=False, pretrain_only=False, main_cmd: str, finetune_cmd: str,
              backend: str = 'local', report_at_end: bool = True, slurm: dict | None = None,
              wait: bool = True, launcher: list[str] | None = None,
              failed: list | None = None) -> list[dict]:
  """Expands the sweep file, runs its unfinished trials on `backend`, then reports.

  slurm: the --slurm_* settings (electra_jax/sweep_slurm.py: cluster, resource
  overrides, max_timeouts). launcher: the local backend's pre-training prefix
  (--pretrain_launcher). failed: gets the names of the trials that failed.
  """
  config_path, _, base_arg = config_path.partition(':')
  config_path = str(Path(config_path).resolve())
  config_arg = config_path + (f':{base_arg}' if base_arg else '')
  module = load_module(config_path)
  trials = expand(module, base_arg)
  if only:
    unknown = sorted(set(only) - {t.name for t in trials})
    if unknown:
      raise ValueError(f'--only {unknown}: no such trials; expected some of '
                       f'{[t.name for t in trials]}')
    trials = [t for t in trials if t.name in only]
  if backend == 'print':
    todo = [t for t in trials if not trial_done(root, t, pretrain_only)]
    print(f'# {len(todo)} of {len(trials)} trials of {config_arg} to run, one command each '
          f'(the layout and DONE markers of --backend=local); then the report:\n'
          f'#   cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m electra_jax.sweep '
          f'--config={shlex.quote(config_arg)} --workdir={shlex.quote(str(root))} --report_only')
    from electra_jax import sweep_slurm  # pylint: disable=g-import-not-at-top  (no submitit)
    for t in trials:
      if t in todo:
        res = sweep_slurm.trial_resources(module, t, (slurm or {}).get('resources'))
        print(f'# {t.name}: {describe(module, t)}; {sweep_slurm.describe(res)}')
        cmd = trial_command(config_arg, root, t, main_cmd=main_cmd, finetune_cmd=finetune_cmd,
                            pretrain_only=pretrain_only, launcher=launcher)
        print(f'cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}')
      else:
        print(f'# {t.name}: done')
    return []
  for t in trials:  # fail fast on bad keys before any run
    print(f'  {t.name}: {describe(module, t)}', flush=True)
  run = lambda: _run_trials(module, config_arg, trials, root, parallel=parallel, dry_run=dry_run,
                            report_only=report_only, pretrain_only=pretrain_only,
                            main_cmd=main_cmd, finetune_cmd=finetune_cmd, backend=backend,
                            report_at_end=report_at_end, slurm=slurm, wait=wait,
                            launcher=launcher, failed=failed)
  if dry_run or (backend == 'local' and not report_at_end):
    # A dry run locks nothing; a trial command (what a SLURM job or a --backend=print line
    # runs: --noreport) locks only the dirs of the trials it runs, so they run at once.
    root.mkdir(parents=True, exist_ok=True)
    return run()
  from electra_jax import rundir  # pylint: disable=g-import-not-at-top
  root.parent.mkdir(parents=True, exist_ok=True)
  with rundir.RunStart(rundir.check_workdir(root), 'sweep') as start:  # one sweep per root
    start.started()
    return run()


def _run_trials(module, config_arg: str, trials: list[Trial], root: Path, *, parallel: int,
                dry_run: bool, report_only: bool, pretrain_only: bool, main_cmd: str,
                finetune_cmd: str, backend: str, report_at_end: bool, slurm: dict | None,
                wait: bool, launcher: list[str] | None, failed: list | None) -> list[dict]:
  config_path = config_arg.partition(':')[0]
  if not report_only:
    kw = dict(main_cmd=main_cmd, finetune_cmd=finetune_cmd, dry_run=dry_run,
              pretrain_only=pretrain_only)
    if backend == 'slurm':
      failures, waited = run_slurm(module, config_arg, trials, root, slurm=slurm or {},
                                   wait=wait, **kw)
      if not waited:
        return []
    elif backend == 'local':
      failures = run_local(module, config_path, trials, root, parallel=parallel,
                           launcher=launcher, **kw)
    else:
      raise ValueError(f'backend={backend!r}; expected local, slurm or print')
    if failures:
      print(f'failed trials: {failures}; fix and re-run the same command to resume', flush=True)
      if failed is not None:
        failed.extend(failures)
    if dry_run or pretrain_only:
      return []
  if not report_at_end:
    return []
  return sweep_report.report(root, trials)


def define_flags():
  flags.DEFINE_string('config', None, 'Sweep file and its argument, FILE.py[:ARG]: a config file '
                      'with get_config(arg) and sweep(add), e.g. configs/ablations/efficiency.py.')
  flags.DEFINE_string('workdir', None, 'Root directory; one subdirectory per trial.')
  flags.DEFINE_integer('parallel', 1, 'Trials run at the same time (local backend).')
  flags.DEFINE_list('only', [], 'Run only these trial names.')
  flags.DEFINE_bool('dry_run', False, "Print the commands (slurm: and each job's resources), "
                    'run and submit nothing.')
  flags.DEFINE_bool('report_only', False, 'Only collect results and plot.')
  flags.DEFINE_bool('report', True, 'Write results.csv/.md and the plots at the end (--noreport: '
                    'not; the per-trial commands of --backend=print use it).')
  flags.DEFINE_bool('pretrain_only', False, 'Run only the pre-training stage of every trial '
                    '(then re-run without the flag to fine-tune): all objectives get '
                    'pre-trained before any fine-tuning.')
  flags.DEFINE_string('main_cmd', DEFAULT_MAIN_CMD, 'Pre-training command (tests substitute a '
                      'fake).')
  flags.DEFINE_string('finetune_cmd', DEFAULT_FINETUNE_CMD, 'Fine-tuning command (tests '
                      'substitute a fake).')
  flags.DEFINE_string('pretrain_launcher', '', 'A prefix for the pre-training command, which '
                      'then gets --multihost: how a multi-node trial starts one process per host '
                      '(slurm jobs pass "srun --nodes=N --ntasks-per-node=1 ..." here).')
  flags.DEFINE_enum('backend', 'local', ['local', 'slurm', 'print'],
                    'local: run the trials on this machine, --parallel at a time. slurm: submit '
                    'one job per trial with submitit (--slurm_* flags). print: print one command '
                    'line per unfinished trial, run nothing.')
  flags.DEFINE_bool('wait', True, 'slurm: wait for the jobs, then report. --nowait submits and '
                    'returns; re-run the same command to follow or resume.')
  flags.DEFINE_enum('slurm_cluster', 'slurm', ['slurm', 'local'],
                    "slurm: sbatch. local: submitit's LocalExecutor, the same job code run as "
                    'local processes (tests; a machine without SLURM).')
  flags.DEFINE_integer('slurm_nodes', None, 'Nodes per trial (>1: pre-training runs as '
                       'electra_jax.main --multihost under srun).')
  flags.DEFINE_integer('slurm_gpus_per_node', None, 'GPUs per node (default 1).')
  flags.DEFINE_integer('slurm_cpus_per_task', None, 'CPUs per node.')
  flags.DEFINE_integer('slurm_mem_gb', None, 'Memory per node in GB.')
  flags.DEFINE_string('slurm_time', None, 'Time limit per job: minutes or [D-]HH:MM:SS (default '
                      '24:00:00); a job that reaches it saves, is requeued and resumes.')
  flags.DEFINE_string('slurm_partition', None, 'SLURM partition.')
  flags.DEFINE_multi_string('slurm_extra', [], 'More sbatch options, KEY=VALUE each (repeat): '
                            'account=abc, qos=high, constraint=a100, gres=gpu:4.')
  flags.DEFINE_multi_string('slurm_setup', [], 'Shell lines each job runs first (repeat): '
                            'module load ..., source .venv/bin/activate.')
  flags.DEFINE_integer('slurm_max_timeouts', 10, 'Requeue a job after at most this many '
                       'time-outs (preemptions are not counted); then re-run the sweep command.')


def slurm_settings(f) -> dict:
  """The --slurm_* flags: cluster, max_timeouts and the resources given on the command line."""
  resources = {k: f[f'slurm_{k}'].value for k in ('nodes', 'gpus_per_node', 'cpus_per_task',
                                                   'mem_gb', 'time', 'partition')
               if f[f'slurm_{k}'].value is not None}
  extra = {}
  for kv in f.slurm_extra:
    key, sep, value = kv.partition('=')
    if not sep or not key:
      raise cli.UsageError(f'--slurm_extra={kv!r}; expected KEY=VALUE (an sbatch option)')
    extra[key.strip().lstrip('-')] = value.strip()
  if extra:
    resources['extra'] = extra
  if f.slurm_setup:
    resources['setup'] = list(f.slurm_setup)
  return dict(cluster=f.slurm_cluster, resources=resources, max_timeouts=f.slurm_max_timeouts)


def main(argv):
  f = flags.FLAGS
  cli.no_positional(argv)
  cli.require(config=f.config, workdir=f.workdir)
  signal.signal(signal.SIGTERM, _on_sigterm)
  failed = []
  run_sweep(f.config, Path(f.workdir).resolve(), parallel=f.parallel, only=f.only,
            dry_run=f.dry_run, report_only=f.report_only, pretrain_only=f.pretrain_only,
            main_cmd=f.main_cmd, finetune_cmd=f.finetune_cmd, backend=f.backend,
            report_at_end=f.report, slurm=slurm_settings(f), wait=f.wait,
            launcher=shlex.split(f.pretrain_launcher), failed=failed)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main, define_flags)
