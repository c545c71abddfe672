"""Train state and the jitted, sharded pre-training step.

    state = create_train_state(config, model, tx, mesh, rng)
    step = make_train_step(config, model, tx, schedule, mesh, shardings)
    state, metrics = step(state, batch, rng)

`rng` is the run's base key; each step folds in `state.step` and splits it
into named keys (inputs: mask and per-example samples; dropout), so a resumed
run draws exactly what an uninterrupted one would. train.grad_accum_steps=K
sums the gradients of K microbatches before the update (pretrain/microbatch.py).

The pre-training loop, `train_and_evaluate(config, workdir)`, is at the end:
data -> resume (or init) -> steps with async checkpoints, logs and periodic
evaluation -> export of the discriminator and generator params.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import pathlib
import time
import jax
import jax.numpy as jnp
import optax
from absl import logging
from tqdm import tqdm

from electra_jax import membudget
from electra_jax import plot
from electra_jax import rundir
from electra_jax import runlog
from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.io import checkpoint
from electra_jax.io import common
from electra_jax.io import weights
from electra_jax.models import electra
from electra_jax.models import layers
from electra_jax.pretrain import evaluation
from electra_jax.pretrain import microbatch
from electra_jax.pretrain import objectives
from electra_jax.pretrain import registry
# The run's model, optimizer and sharded state (electra_jax.pretrain.build), part of this API.
from electra_jax.pretrain.build import (  # noqa: F401
    abstract_train_state, build_model, build_optimizer, create_train_state, dummy_batch,
    state_shardings)


TrainState = state_lib.TrainState


def step_keys(rng, step):
  """The step's key: fold the step into the run's base key."""
  return jax.random.fold_in(rng, step)


def _tree_norm(tree):
  return optax.global_norm(tree)


def train_step(state: TrainState, batch: dict, rng, *, model, tx, obj_cfg,
               objective: objectives.Objective, schedule, skip_nonfinite: bool,
               accum_steps: int = 1, mesh=None, grad_shardings=None):
  """One optimizer step. Returns (new_state, metrics dict of float32 scalars).

  The objective's inputs (masking, sampling keys) are drawn for the whole
  global batch, then the loss and gradient are summed over `accum_steps`
  microbatches (pretrain/microbatch.py) before the one update.
  """
  key = step_keys(rng, state.step)
  k_inputs, k_dropout = objectives.step_keys(key)
  inputs = objective.prepare(batch, k_inputs, obj_cfg)
  params = state.params
  if objective.prepare_params is not None:
    params = objective.prepare_params(params, state.step, obj_cfg)

  def loss_fn(p, inputs_mb, index):
    return objective.prepared_loss(p, inputs_mb, jax.random.fold_in(k_dropout, index),
                                   model=model, cfg=obj_cfg, step=state.step)

  loss, grads, metrics = microbatch.value_and_grad(loss_fn, params, inputs, accum_steps,
                                                   mesh=mesh, grad_shardings=grad_shardings)
  metrics = objectives.finalize(metrics)
  updates, new_opt_state = tx.update(grads, state.opt_state, params)
  if objective.update_mask is not None:
    mask = objective.update_mask(params, state.step, obj_cfg)
    updates = jax.tree.map(lambda u, m: u * m, updates, mask)
  new_params = optax.apply_updates(params, updates)
  grad_norm = _tree_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_params = keep(new_params, state.params)
    new_opt_state = keep(new_opt_state, state.opt_state)
  metrics = dict(metrics)
  metrics.update(grad_norm=grad_norm, param_norm=_tree_norm(new_params),
                 learning_rate=schedule(state.step), finite=finite.astype(jnp.float32))
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state)
  return new_state, metrics


def eval_step(params, batch: dict, rng, step, *, model, obj_cfg,
              objective: objectives.Objective):
  """Loss and metrics without dropout, plus per-token discriminator outputs."""
  _, (metrics, aux) = objective.loss(params, batch, rng, model=model, cfg=obj_cfg, step=step,
                                     deterministic=True)
  return metrics, aux


def make_train_step(config, model, tx, schedule, mesh, shardings):
  """jit(train_step) with explicit shardings; the state is donated."""
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  accum_steps = config.train.grad_accum_steps
  microbatch.check(config.train.batch_size, accum_steps, mesh.shape['data'] * mesh.shape['fsdp'])
  fn = functools.partial(train_step, model=model, tx=tx, obj_cfg=obj_cfg,
                         objective=registry.get_objective(obj_cfg.name), schedule=schedule,
                         skip_nonfinite=config.train.nan_policy == 'skip',
                         accum_steps=accum_steps, mesh=mesh, grad_shardings=shardings.params)
  return state_lib.jit(fn, mesh, (shardings, 'batch', 'replicated'), (shardings, 'replicated'),
                       donate_argnums=0)


def make_eval_step(config, model, mesh, shardings):
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  fn = functools.partial(eval_step, model=model, obj_cfg=obj_cfg,
                         objective=registry.get_objective(obj_cfg.name))
  return state_lib.jit(fn, mesh, (shardings.params, 'batch', 'replicated', 'replicated'),
                       ('replicated', 'batch'))


# ----------------------------------------------------------------------------- the loop
#
# train_and_evaluate(config, workdir) is the program researchers run for days:
# data -> (resume | init) -> steps with async checkpoints, logs and evals ->
# export. Everything it needs comes from `config`; it never reads defaults.

EVAL_RNG_SALT = 0x5EED  # eval key = fold_in(key(seed), salt): fixed, so evals are comparable


class NonFiniteError(FloatingPointError):
  """Raised (nan_policy='stop') when a step's loss or gradient norm is NaN/Inf."""


# SIGTERM/SIGINT -> save and stop (shared with fine-tuning).
_Preemption = checkpoint.Preemption


def check_vocab(config, tokenizer, where: str = '') -> None:
  """config.model.vocab_size and config.tokens.* must match the data's vocabulary."""
  where = f' ({where})' if where else ''
  if config.model.vocab_size != tokenizer.vocab_size:
    raise ValueError(f'vocab mismatch: config.model.vocab_size={config.model.vocab_size} but the '
                     f'vocabulary{where} has {tokenizer.vocab_size} tokens; set '
                     f'--config.model.vocab_size={tokenizer.vocab_size} or use the matching vocab')
  for name in ('pad_id', 'unk_id', 'cls_id', 'sep_id', 'mask_id'):
    want, got = config.tokens[name], getattr(tokenizer, name)
    if want != got:
      raise ValueError(f'vocab mismatch: config.tokens.{name}={want} but the vocabulary{where} has '
                       f'it at id {got}; set --config.tokens.{name}={got} or use the matching vocab')


def check_train_config(config, mesh) -> None:
  t = config.train
  if t.nan_policy not in ('stop', 'skip'):
    raise ValueError(f"train.nan_policy={t.nan_policy!r}; expected 'stop' or 'skip'")
  if not 0 <= t.get('max_skipped_fraction', 0.0) <= 1:
    raise ValueError(f'train.max_skipped_fraction={t.max_skipped_fraction}; expected a share '
                     'in [0, 1]')
  if t.get('skip_window', 1) < 1:
    raise ValueError(f'train.skip_window={t.skip_window}; expected >= 1')
  if t.seq_len > config.model.max_position_embeddings:
    raise ValueError(f'train.seq_len={t.seq_len} is longer than model.max_position_embeddings='
                     f'{config.model.max_position_embeddings}; lower train.seq_len or raise '
                     'model.max_position_embeddings')
  for name in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
               'batch_size', 'eval_batch_size'):
    if t[name] < 1:
      raise ValueError(f'train.{name}={t[name]}; expected >= 1')
  if t.eval_batches < 0:
    raise ValueError(f'train.eval_batches={t.eval_batches}; expected >= 0')
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  for name in ('batch_size', 'eval_batch_size'):
    if t[name] % shards or t[name] % jax.process_count():
      raise ValueError(f'train.{name}={t[name]} must divide over the {shards} batch shards of the '
                       f'mesh and the {jax.process_count()} hosts; expected a multiple of {shards}')
  microbatch.check(t.batch_size, t.grad_accum_steps, shards)


def load_data(config, cache_dir=None, tokenizer=None):
  """The run's PretrainingData (train/eval loaders, tokenizer); see electra_jax.data.corpus."""
  from electra_jax.data import loader  # pylint: disable=g-import-not-at-top
  cache_dir = runlog.cache_dir(cache_dir)
  return loader.make_pretraining_data(
      config.data, config.train.seq_len, config.train.batch_size, config.train.eval_batch_size,
      config.seed, cache_dir, tokenizer=tokenizer)


def load_tokenizer(config, cache_dir=None):
  """(tokenizer, vocab file) of config.data, without building any data."""
  from electra_jax.data import loader  # pylint: disable=g-import-not-at-top
  return loader.load_tokenizer(config.data, runlog.cache_dir(cache_dir))


def _write_config(config, workdir) -> None:
  """workdir/config.json := the resolved config (written once the start has succeeded)."""
  if jax.process_index() == 0:
    path = workdir / 'config.json'
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(json.loads(config.to_json()), indent=1, sort_keys=True) + '\n')
    tmp.replace(path)


def _check_checkpoint_vocab(workdir, tokenizer) -> None:
  """Refuses, before any restore, checkpoints written with another vocab than the data's."""
  ck = pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR
  for meta in sorted(ck.glob('*/meta/metadata')) if ck.is_dir() else []:
    try:
      saved = json.loads(meta.read_text()).get('vocab_hash')
    except (OSError, ValueError):
      continue  # a corrupt checkpoint: the restore reports it
    if saved and saved != tokenizer.vocab_hash:
      raise ValueError(f'vocab mismatch: the checkpoints in {workdir} were trained with vocab '
                       f'{saved} but {tokenizer.name} is {tokenizer.vocab_hash}; use the vocab '
                       'they were trained with, or pass another --workdir')


def export(workdir, config, params, step: int, tokenizer=None) -> pathlib.Path:
  """Writes workdir/export/: discriminator, generator and full params, model_config.json, vocab.txt."""
  sharing = config.model.sharing
  towers = {'discriminator': electra.discriminator_params(params, sharing),
            'generator': electra.generator_params(params, sharing),
            'pretrainer': params}  # both heads too: what conversion to HF needs
  model_config = {'model': config.model.to_dict(), 'tokens': config.tokens.to_dict(),
                  'step': int(step), 'lowercase': bool(config.data.lowercase),
                  'vocab_hash': getattr(tokenizer, 'vocab_hash', None)}
  out = workdir / checkpoint.EXPORT_DIR
  checkpoint.export_params(out, towers, model_config,
                           list(tokenizer.tokens) if tokenizer is not None else None)
  return out


def init_from_pretrained(config, model, tx, mesh, path, tokenizer) -> TrainState:
  """Step-0 TrainState from pre-trained generator + discriminator weights.

  `path`: anything electra_jax.io.weights.load reads (an export or converted
  dir, a pre-training run, a Hugging Face dir with `discriminator/` and
  `generator/`, an original TF1 ELECTRA checkpoint). The weights must fit
  config.model and the data's vocab.
  """
  ckpt = weights.load(path, 'pretrainer')
  if ckpt.vocab_tokens is not None and list(ckpt.vocab_tokens) != list(tokenizer.tokens):
    raise ValueError(f'vocab mismatch: train.init_from={path} was trained with a different '
                     f'vocabulary ({len(ckpt.vocab_tokens)} tokens) than config.data.vocab '
                     f'({tokenizer.vocab_size} tokens)')
  state, _ = init_train_state(config, model, tx, mesh, ckpt.converted)
  return state


def init_train_state(config, model, tx, mesh, conv):
  """A TrainState for continued pre-training from `conv` (a 'pretrainer' io.common.Converted).

  The params are checked against the run's config, placed in the run's
  sharded layout, and get a fresh optimizer state at step 0. Returns
  (state, shardings) like create_train_state.
  """
  if conv.kind != 'pretrainer':
    raise ValueError(f'continued pre-training needs a generator + discriminator pair '
                     f'(kind "pretrainer"); got kind {conv.kind!r}')
  weights.check_compatible(conv, config.model)
  common.check_tree(conv.params, common.expected_shapes(
      electra.ModelConfig.from_config(config.model), 'pretrainer'),
      what='imported params vs config.model', model=dict(config.model))
  shardings = state_shardings(config, model, tx, mesh)
  return state_lib.from_params(conv.params, tx, shardings), shardings


def train_and_evaluate(config, workdir, *, cache_dir=None, export_only: bool = False,
                       progress: bool = True) -> dict:
  """Pre-trains (or resumes) in `workdir`; returns a summary dict (step, last metrics, paths).

  Raises NonFiniteError (nan_policy='stop', or too many skipped steps, or a non-finite
  held-out loss) naming the step, ValueError / FileNotFoundError for bad configs, data or
  workdirs. A start that is refused leaves the workdir as it was: the config is checked
  against the vocab, the model and the config the checkpoints were written under before
  anything is written (see electra_jax.rundir). The workdir is locked for the life of the
  run. On SIGTERM/SIGINT it saves a checkpoint and returns with summary['preempted'] set.
  """
  workdir = rundir.check_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  check_train_config(config, mesh)
  model = build_model(config)  # validates config.model before the (slow) data build
  with rundir.RunStart(workdir, 'pre-training run') as run_start:
    changes = rundir.check_resume_config(workdir, config)
    tokenizer, vocab_path = load_tokenizer(config, cache_dir)
    check_vocab(config, tokenizer, str(vocab_path))  # before the (slow) data build
    _check_checkpoint_vocab(workdir, tokenizer)
    return _train(config, workdir, run_start, mesh, model, tokenizer, changes,
                  cache_dir=cache_dir, export_only=export_only, progress=progress)


def _train(config, workdir, run_start, mesh, model, tokenizer, changes, *, cache_dir,
           export_only, progress) -> dict:
  t = config.train
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  data = load_data(config, cache_dir, tokenizer)

  tx, schedule = build_optimizer(config)
  abstract = abstract_train_state(config, model, tx, mesh)
  ckpt = checkpoint.Checkpointer(workdir, t.keep_checkpoints, abstract)
  init_rng, rng = jax.random.split(jax.random.key(config.seed))
  try:
    restored = ckpt.restore_latest()
    if export_only and restored is None:
      raise FileNotFoundError(f'--export_only: no checkpoint in {ckpt.directory} to export')
    if restored is not None:
      state, rng, start = restored.state, restored.rng, restored.step
      data.train.set_state(restored.loader_state)
    elif t.init_from:
      state = init_from_pretrained(config, model, tx, mesh, t.init_from, data.tokenizer)
      start = 0
    else:
      state, _ = create_train_state(config, model, tx, mesh, init_rng)
      start = 0
  except BaseException:
    ckpt.close()
    raise
  run_start.started()  # from here on the workdir is the run's
  if restored is not None:
    logging.info('resumed from step %d in %s', start, ckpt.directory)
    runlog.console(f'Resumed from the checkpoint at step {start} in {ckpt.directory}')
    if changes:
      runlog.console('Changed since the checkpoints were written (allowed on resume): '
             + rundir.describe_changes(changes))
  elif t.init_from:
    runlog.console(f'Continuing pre-training from the weights in {t.init_from}')
  # Each checkpoint records the config it was written under: what a resume is checked against.
  extra_meta = {'vocab_hash': data.tokenizer.vocab_hash, 'config': json.loads(config.to_json())}
  if export_only:
    ckpt.close()
    out = export(workdir, config, state.params, start, data.tokenizer)
    return {'step': start, 'export_dir': str(out), 'preempted': None}
  _write_config(config, workdir)
  if jax.process_index() == 0:
    # Steps after the checkpoint are redone: their old records go (each step logged once).
    dropped = sum(rundir.truncate_jsonl(workdir / name, start)
                  for name in runlog.FILES.values())
    if dropped:
      runlog.console(f'Rolled the logs back to step {start}: removed {dropped} record(s) of later steps')

  train_step = make_train_step(config, model, tx, schedule, mesh, state_lib.shardings_of(abstract))
  eval_step = make_eval_step(config, model, mesh, state_lib.shardings_of(abstract))
  eval_rng = jax.random.fold_in(jax.random.key(config.seed), EVAL_RNG_SALT)
  eval_batches = _take(data.eval, t.eval_batches) if t.eval_batches and data.eval else []
  # Compiled ahead of time, each checked against the machine's memory before it first runs.
  host_bytes = membudget.nbytes(eval_batches)
  train_step = membudget.Precompiled(train_step, 'training step', host_bytes=host_bytes,
                                     key_argnums=(1,))
  eval_step = membudget.Precompiled(eval_step, 'evaluation step', host_bytes=host_bytes,
                                    key_argnums=(1, 3))
  if t.eval_batches and not eval_batches:
    logging.warning('no held-out data (data.eval_fraction=%s); periodic evaluation is off',
                    config.data.eval_fraction)
  elif len(eval_batches) < t.eval_batches:
    runlog.console(f'note: the held-out set has {len(eval_batches)} batches of {t.eval_batch_size}, '
           f'fewer than train.eval_batches={t.eval_batches} (raise data.eval_fraction for more)')
  writer = runlog.MetricsWriter(workdir, purge_step=start + 1)
  tokens_per_batch = t.batch_size * t.seq_len
  skipped = restored.meta.get('skipped_steps', 0) if restored is not None else 0
  summary = {'step': start, 'train': {}, 'eval': {}, 'preempted': None, 'skipped_steps': skipped,
             'workdir': str(workdir)}
  # nan_policy=skip: finite flags of the last steps; too many skipped ones stop the run.
  window = collections.deque(maxlen=max(1, min(t.get('skip_window', 100), t.num_steps)))
  max_skipped = t.get('max_skipped_fraction', 1.0) * window.maxlen

  def run_eval(step):
    m = evaluation.evaluate(eval_step, state.params, eval_batches, eval_rng, step, mesh,
                               obj_cfg)
    writer.write(step, m, split='eval')
    summary['eval'] = m
    runlog.console(f'eval  step {step:>7}: ' + evaluation.describe(m))
    if not math.isfinite(m.get('eval_loss', 0.0)):
      good = ckpt.all_steps()
      raise NonFiniteError(
          f'the held-out loss at step {step} is {m["eval_loss"]}: the model\'s outputs are not '
          'finite, so it is not exported (train.nan_policy=' + t.nan_policy + '). The last '
          'checkpoint is ' + (f'step {good[-1]} in {ckpt.directory}' if good else 'none'))

  clock = {'time': time.perf_counter(), 'step': start}
  bar = tqdm(total=t.num_steps, initial=start, unit='step', dynamic_ncols=True, smoothing=0.1,
             disable=not progress or jax.process_index() != 0, mininterval=1.0)

  def handle(step, metrics):
    """Fetches step's metrics (the step has been followed by another dispatch) and logs."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if step == start + 1 and step % t.log_every:
      clock.update(time=time.perf_counter(), step=step)  # keep compilation out of seq_per_s
    window.append(m['finite'] == 0)
    if m['finite'] == 0:
      if t.nan_policy == 'stop':
        good = ckpt.all_steps()
        raise NonFiniteError(
            f'non-finite loss or gradient at step {step} (loss={m["loss"]}, grad_norm='
            f'{m["grad_norm"]}); stopping (train.nan_policy=stop). The last good checkpoint is '
            + (f'step {good[-1]} in {ckpt.directory}' if good else 'none (no checkpoint yet)'))
      summary['skipped_steps'] += 1
      logging.log_every_n_seconds(logging.WARNING, 'step %d: non-finite loss or gradient; update '
                                  'skipped (%d so far)', 60, step, summary['skipped_steps'])
    over = m['finite'] == 0 and sum(window) > max_skipped  # stop, once the step is logged
    if step % t.log_every == 0 or step == t.num_steps:
      now = time.perf_counter()
      dt = max(now - clock['time'], 1e-9)
      steps = step - clock['step']
      m.update(seq_per_s=steps * t.batch_size / dt, tokens_per_s=steps * tokens_per_batch / dt,
               steps_per_s=steps / dt, skipped_steps=summary['skipped_steps'])
      clock.update(time=now, step=step)
      writer.write(step, m)
      summary['train'] = m
      bar.set_postfix(loss=f'{m["loss"]:.3f}', tok_s=f'{m["tokens_per_s"]:.0f}', refresh=False)
      runlog.console(f'train step {step:>7}: ' + _fmt(m, ('loss', 'gen_loss', 'disc_loss', 'gen_accuracy',
                                                  'disc_accuracy', 'learning_rate', 'seq_per_s')),
             bar)
    if over:
      good = ckpt.all_steps()
      raise NonFiniteError(
          f'{sum(window)} of the last {window.maxlen} steps (up to step {step}) had a non-finite '
          f'loss or gradient and were skipped: more than train.max_skipped_fraction='
          f'{t.max_skipped_fraction} of them (the window is train.skip_window={t.skip_window}, or '
          'train.num_steps when shorter); stopping: the run diverged. The last checkpoint is '
          + (f'step {good[-1]} in {ckpt.directory}' if good else 'none (no checkpoint yet)'))

  train_iter = iter(data.train)
  step = start
  pending = None
  try:
    with _Preemption(ckpt) as preempt:
      stop = False
      while step < t.num_steps and not stop:
        batch = sharding.global_batch(next(train_iter), mesh)
        # The first call compiles: do it with the unrolled threefry lowering on CPU
        # (the same random bits, ~8x faster draws; models/layers.py).
        with layers.unrolled_threefry_on_cpu() if step == start else contextlib.nullcontext():
          state, metrics = train_step(state, batch, rng)
        step += 1
        if pending is not None:
          handle(*pending)  # step - 1: fetched after step was dispatched
        pending = (step, metrics)
        bar.update(1)
        stop = preempt.requested(step)
        ckpt_due = step % t.checkpoint_every == 0 or step == t.num_steps
        eval_due = bool(eval_batches) and (step % t.eval_every == 0 or step == t.num_steps)
        if ckpt_due or eval_due or stop:
          handle(*pending)  # never save a state whose step was not checked
          pending = None
        if ckpt_due or stop:
          ckpt.save(step, state, data.train.get_state(), rng,
                    {**extra_meta, 'skipped_steps': summary['skipped_steps']})
        if eval_due:
          run_eval(step)
        if ckpt_due or eval_due:
          clock.update(time=time.perf_counter(), step=step)  # keep evals out of seq_per_s
      if pending is not None:
        handle(*pending)
      summary['preempted'] = preempt.signal if stop else None
  finally:
    bar.close()
    ckpt.close()  # waits for the async saves in flight
    writer.close()
  summary['step'] = step
  if summary['preempted']:
    # Every process says where it stopped (the same step on all: see checkpoint.Preemption).
    logging.warning('process %d of %d: %s, stopped after step %d', jax.process_index(),
                    jax.process_count(), summary['preempted'], step)
    runlog.console(f'{summary["preempted"]}: saved a checkpoint at step {step} in {ckpt.directory}; '
           'run the same command again to resume')
    return summary
  summary['export_dir'] = str(export(workdir, config, state.params, step, data.tokenizer))
  if jax.process_index() == 0:
    summary['curves'] = str(plot.plot_workdirs([workdir], workdir / 'curves.png'))
  if summary['eval']:
    summary['verdict'] = evaluation.verdict(summary['eval'])
  return summary


def _take(loader, n: int) -> list:
  """The first n batches of a (fresh) loader as a list: the fixed held-out set."""
  out = []
  for batch in loader:
    out.append(batch)
    if len(out) == n:
      break
  return out


def _fmt(m: dict, keys) -> str:
  return '  '.join(f'{k}={m[k]:.4g}' for k in keys if k in m)
