"""The sweep launcher, with fake pre-training / fine-tuning commands.

The fakes write the files the real entry points write (metrics.jsonl, export/,
seed_<s>/results.json), can be told to crash half-way, and log every call, so
the tests check expansion, skipping of completed trials, resuming of
interrupted ones and the reports without training anything.
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from electra_jax import sweep

FAKE_MAIN = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    wd = Path(args['workdir']); wd.mkdir(parents=True, exist_ok=True)
    calls = Path(os.environ['FAKE_CALLS'])
    ckpt = wd / 'checkpoint'
    start = int(ckpt.read_text()) if ckpt.exists() else 0
    with open(calls, 'a') as f:
      f.write(json.dumps({'cmd': 'main', 'workdir': str(wd), 'start': start,
                          'config': args['config']}) + '\\n')
    crash = os.environ.get('FAKE_CRASH_AT')
    for step in range(start + 1, 11):
      with open(wd / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({'step': step, 'loss': 10.0 / step, 'disc_accuracy': 0.9}) + '\\n')
      ckpt.write_text(str(step))
      if crash and step == int(crash) and 'crash' in str(wd):
        sys.exit(3)
    (wd / 'export').mkdir(exist_ok=True)
    (wd / 'eval.jsonl').write_text(json.dumps({'step': 10, 'eval_disc_accuracy': 0.95}) + '\\n')
''')

FAKE_FINETUNE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    wd = Path(args['workdir'])
    task = args['config'].split(':', 1)[1].split(',')[0].split('=')[1]
    with open(os.environ['FAKE_CALLS'], 'a') as f:
      f.write(json.dumps({'cmd': 'finetune', 'task': task, 'workdir': str(wd),
                          'init': args['config.train.init_from']}) + '\\n')
    assert Path(args['config.train.init_from']).is_dir()
    # Score depends on the trial (its lr override) and the seed: known medians.
    lr = float(args.get('config.optimizer.learning_rate', '0.001'))
    seeds = int(args['config.num_seeds'])
    if os.environ.get('FAKE_FT_PREEMPT') and 'trial_b' in str(wd):
      seeds = 1  # as a preempted multi-seed run: it saves, exits 0, and one seed is missing
    for s in range(seeds):
      d = wd / f'seed_{s}'; d.mkdir(parents=True, exist_ok=True)
      value = 0.5 + 0.1 * s + (0.1 if 'trial_b' in str(wd) else 0.0)
      (d / 'results.json').write_text(json.dumps(
          {'task': task, 'seed': s, 'main_metric': 'accuracy',
           'dev': {'dev': {'accuracy': value, 'f1': 0.0}}}))
''')

SWEEP_FILE = textwrap.dedent('''
    from configs import pretrain

    FINETUNE = dict(config='configs/finetune.py', arg='size=tiny', tasks=('rte', 'mrpc'),
                    num_seeds=3, overrides={'data.data_dir': '/nowhere'})

    def get_config(arg=None):
      return pretrain.get_config(arg)

    def sweep(add):
      add(name='trial_a', arg='objective=electra', **{'model.generator_fraction': 0.25})
      add(name='trial_b', arg='objective=electra', **{'model.generator_fraction': 0.5})
      add(name='crash_c', arg='objective=electra_15', finetune={'tasks': ('rte',)})
      add(arg='objective=bert_mlm', finetune=False,
          **{'model.sharing': 'all', 'model.generator_fraction': 1.0})
''')


@pytest.fixture
def env(tmp_path, monkeypatch):
  (tmp_path / 'fake_main.py').write_text(FAKE_MAIN)
  (tmp_path / 'fake_finetune.py').write_text(FAKE_FINETUNE)
  (tmp_path / 'study.py').write_text(SWEEP_FILE)
  monkeypatch.setenv('FAKE_CALLS', str(tmp_path / 'calls.jsonl'))
  monkeypatch.delenv('FAKE_CRASH_AT', raising=False)

  def run(**kw):
    return sweep.run_sweep(str(tmp_path / 'study.py') + kw.pop('arg', ''), tmp_path / 'runs',
                           main_cmd=f'{sys.executable} {tmp_path / "fake_main.py"}',
                           finetune_cmd=f'{sys.executable} {tmp_path / "fake_finetune.py"}', **kw)

  def calls():
    p = tmp_path / 'calls.jsonl'
    out = [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
    p.unlink(missing_ok=True)
    return out

  return tmp_path, run, calls


def test_expand_names_args_and_finetune_specs(env):
  tmp, _, _ = env
  module = sweep.load_module(str(tmp / 'study.py'))
  trials = sweep.expand(module, base_arg='size=tiny')
  assert [t.name for t in trials] == ['trial_a', 'trial_b', 'crash_c',
                                      'objective-bert_mlm_generator_fraction-1_sharing-all']
  assert trials[0].arg == 'size=tiny,objective=electra'
  assert trials[0].overrides == {'model.generator_fraction': 0.25}
  assert trials[0].finetune['tasks'] == ('rte', 'mrpc') and trials[0].finetune['num_seeds'] == 3
  assert trials[2].finetune['tasks'] == ('rte',)
  assert trials[3].finetune is None
  c = sweep.resolved_config(module, trials[1])
  assert c.model.generator_fraction == 0.5 and c.size == 'tiny'
  cmd = sweep.pretrain_command('python -m electra_jax.main', 'study.py', trials[1], Path('/w'))
  assert cmd[3:] == ['--config=study.py:size=tiny,objective=electra',
                     '--config.model.generator_fraction=0.5', '--workdir=/w', '--noprogress']


def test_expand_rejects_duplicates_and_bad_keys(env):
  tmp, _, _ = env
  (tmp / 'dup.py').write_text(SWEEP_FILE + '  add(name="trial_a")\n')
  with pytest.raises(ValueError, match="duplicate trial name 'trial_a'"):
    sweep.expand(sweep.load_module(str(tmp / 'dup.py')))
  (tmp / 'bad.py').write_text(SWEEP_FILE.replace("'model.generator_fraction': 0.25",
                                                 "'model.generator_fractoin': 0.25"))
  module = sweep.load_module(str(tmp / 'bad.py'))
  with pytest.raises(ValueError, match='generator_fractoin'):
    sweep.resolved_config(module, sweep.expand(module)[0])


def test_runs_skips_completed_and_resumes_interrupted(env, monkeypatch):
  tmp, run, calls = env
  monkeypatch.setenv('FAKE_CRASH_AT', '4')  # crash_c's pre-training dies after step 4
  run(arg=':size=tiny')
  first = calls()
  assert sum(c['cmd'] == 'main' for c in first) == 4
  assert sum(c['cmd'] == 'finetune' for c in first) == 4  # a and b: rte + mrpc
  runs = tmp / 'runs'
  for name in ('trial_a', 'trial_b'):
    assert (runs / name / 'DONE').is_file()
  assert not (runs / 'crash_c' / 'DONE').exists()
  assert not (runs / 'crash_c' / 'pretrain.DONE').exists()

  monkeypatch.delenv('FAKE_CRASH_AT')
  results = run(arg=':size=tiny')
  second = calls()
  # Only the interrupted trial ran again, resuming after its last checkpoint.
  assert [(c['cmd'], Path(c['workdir']).parts[-2 if c['cmd'] == 'main' else -3])
          for c in second] == [('main', 'crash_c'), ('finetune', 'crash_c')]
  assert second[0]['start'] == 4
  steps = [json.loads(l)['step'] for l in
           (runs / 'crash_c' / 'pretrain' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == list(range(1, 11))

  by_name = {r['trial']: r for r in results}
  assert len(by_name) == 4
  # Median over seeds 0.5 / 0.6 / 0.7 (+0.1 for trial_b) -> 60 / 70, the mean over tasks.
  assert by_name['trial_a']['glue'] == pytest.approx(60.0)
  assert by_name['trial_b']['glue'] == pytest.approx(70.0)
  assert by_name['trial_a']['rte_seeds'] == '50.0 60.0 70.0'
  assert by_name['trial_a']['steps'] == 10
  assert by_name['trial_a']['eval_disc_accuracy'] == 0.95
  assert by_name['trial_a']['pretrain_flops'] > 0
  assert by_name['trial_a']['pretrain_wall_s'] > 0 and by_name['trial_a']['finetune_wall_s'] > 0
  assert 'glue' not in by_name['objective-bert_mlm_generator_fraction-1_sharing-all']
  for f in ('results.csv', 'results.md', 'glue_vs_flops.png', 'glue_vs_generator_size.png'):
    assert (runs / f).stat().st_size > 0, f
  md = (runs / 'results.md').read_text()
  assert md.count('\n') == 2 + 4 and '| trial_b |' in md

  run(arg=':size=tiny')  # everything done: nothing runs
  assert calls() == []


def test_report_only_and_dry_run_run_nothing(env):
  tmp, run, calls = env
  assert run(arg=':size=tiny', dry_run=True) == []
  assert run(arg=':size=tiny', report_only=True) == []
  assert calls() == []
  assert not (tmp / 'runs' / 'trial_a' / 'pretrain').exists()


def test_pretrain_only_then_finetune(env):
  tmp, run, calls = env
  run(arg=':size=tiny', pretrain_only=True)
  assert {c['cmd'] for c in calls()} == {'main'}
  assert not (tmp / 'runs' / 'trial_a' / 'DONE').exists()
  run(arg=':size=tiny')
  assert {c['cmd'] for c in calls()} == {'finetune'}  # pre-training is not repeated
  assert (tmp / 'runs' / 'trial_a' / 'DONE').is_file()


def test_only_selects_trials(env):
  _, run, calls = env
  run(arg=':size=tiny', only=['trial_b'])
  assert {Path(c['workdir']).parts[-2] for c in calls() if c['cmd'] == 'main'} == {'trial_b'}
  with pytest.raises(ValueError, match='no such trials'):
    run(only=['nope'])


def test_finetune_only_trials_from_a_checkpoint(env):
  tmp, run, calls = env
  export = tmp / 'ckpt' / 'export'
  export.mkdir(parents=True)
  (tmp / 'seeds.py').write_text(textwrap.dedent(f'''
      def sweep(add, arg=None):  # a two-parameter sweep() gets the :ARG itself
        num_seeds = int(arg.split('=')[1])
        for task in ('rte', 'mrpc'):
          add(init={str(export)!r}, finetune=dict(config='configs/finetune.py', arg='size=tiny',
              tasks=(task,), num_seeds=num_seeds, overrides={{}}))
      '''))
  trials = sweep.expand(sweep.load_module(str(tmp / 'seeds.py')), 'num_seeds=5')
  assert [(t.name, t.init, t.arg, t.finetune['num_seeds']) for t in trials] == [
      ('rte', str(export), '', 5), ('mrpc', str(export), '', 5)]
  results = sweep.run_sweep(str(tmp / 'seeds.py:num_seeds=5'), tmp / 'runs', main_cmd='false',
                            finetune_cmd=f'{sys.executable} {tmp / "fake_finetune.py"}')
  made = calls()
  assert [c['cmd'] for c in made] == ['finetune', 'finetune']  # no pre-training
  assert {c['init'] for c in made} == {str(export)}
  assert [(r['trial'], r['init'], r['glue']) for r in results] == [
      ('rte', str(export), pytest.approx(70.0)), ('mrpc', str(export), pytest.approx(70.0))]
  assert results[0]['rte_seeds'] == '50.0 60.0 70.0 80.0 90.0'
  assert 'pretrain_flops' not in results[0] and (tmp / 'runs' / 'results.md').is_file()
  assert not (tmp / 'runs' / 'glue_vs_flops.png').exists()  # no pre-training axis to plot
  (tmp / 'bad.py').write_text(f'def sweep(add):\n  add(init={str(export)!r})\n')
  with pytest.raises(ValueError, match='it needs fine-tuning tasks'):
    sweep.expand(sweep.load_module(str(tmp / 'bad.py')))
  (tmp / 'bad.py').write_text(f'def sweep(add):\n  add(init={str(export)!r}, arg="size=small", '
                              'finetune={"tasks": ("rte",)})\n')
  with pytest.raises(ValueError, match='has no pre-training'):
    sweep.expand(sweep.load_module(str(tmp / 'bad.py')))


def test_glue_seeds_sweep_file(tmp_path):
  module = sweep.load_module(str(sweep.REPO / 'configs' / 'glue_seeds.py'))
  trials = sweep.expand(module, f'init={tmp_path},tasks=rte+mrpc,size=base')
  assert [(t.name, t.init, t.finetune['num_seeds'], t.finetune['arg'], t.finetune['tasks'])
          for t in trials] == [('rte', str(tmp_path), 10, 'size=base,seed=0', ('rte',)),
                               ('mrpc', str(tmp_path), 10, 'size=base,seed=0', ('mrpc',))]
  assert len(sweep.expand(module, f'init={tmp_path}')) == 8  # the GLUE score's eight tasks
  with pytest.raises(ValueError, match='needs init=PATH'):
    sweep.expand(module, 'num_seeds=3')


def test_preempted_finetuning_is_not_done(env, monkeypatch):
  tmp, run, calls = env
  monkeypatch.setenv('FAKE_FT_PREEMPT', '1')
  run(arg=':size=tiny', only=['trial_a', 'trial_b'])
  runs = tmp / 'runs'
  assert (runs / 'trial_a' / 'DONE').is_file()
  assert not (runs / 'trial_b' / 'finetune_rte.DONE').exists()  # 1 of 3 seeds: not done
  assert not (runs / 'trial_b' / 'DONE').exists()
  calls()
  monkeypatch.delenv('FAKE_FT_PREEMPT')
  results = run(arg=':size=tiny', only=['trial_a', 'trial_b'])
  assert [c['cmd'] for c in calls()] == ['finetune', 'finetune']  # trial_b's tasks only
  assert {r['trial']: r['glue'] for r in results} == {'trial_a': pytest.approx(60.0),
                                                      'trial_b': pytest.approx(70.0)}
