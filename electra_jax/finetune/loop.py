"""Fine-tuning and evaluation on a downstream task (GLUE, SQuAD, chunking).

    python -m electra_jax.finetune --config=configs/finetune.py:task=rte,size=small \
        --config.data.data_dir=/path/to/glue --workdir=runs/ft_rte

`finetune_and_evaluate(config, workdir)` loads the task (electra_jax.finetune.tasks),
the tokenizer and the starting weights (random, a pre-training checkpoint, an
export or Hugging Face weights; see electra_jax.io.weights), trains with the
same sharded `jax.jit` step as pre-training (in/out shardings over the mesh,
state donated) and evaluates on every dev split after each epoch. Outputs in
`workdir`: metrics.jsonl (train loss every `log_every` steps and dev metrics
per epoch), results.json (final dev metrics, history, missing / unexpected
keys, truncation counts, wall time), test_predictions/ (GLUE leaderboard
files) and, for SQuAD, predictions_<split>.json.

With `config.num_seeds > 1` the entry point runs electra_jax.finetune.multiseed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from electra_jax import membudget
from electra_jax import optim
from electra_jax import rundir
from electra_jax.io import checkpoint
from electra_jax.io import finetuned
from electra_jax.io import weights
from electra_jax import runlog
from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.finetune import inference
from electra_jax.finetune import plots
from electra_jax.finetune import resolve
from electra_jax.finetune import taskdata
from electra_jax.finetune.tasks import base as task_base
from electra_jax.models import electra
from electra_jax.models import heads

log = logging.getLogger(__name__)

# The task and its data: electra_jax.finetune.taskdata (re-exported for callers).
build_task, load_features, task_source = (taskdata.build_task, taskdata.load_features,
                                          taskdata.task_source)
SQUAD_SETTINGS, _split_list = taskdata.SQUAD_SETTINGS, taskdata.split_list
write_test_predictions = taskdata.write_test_predictions

# --------------------------------------------------------------------------- model and state


def build_model(model_cfg: electra.ModelConfig, task, config) -> heads.FinetuneModel:
  """The encoder and task head. SQuAD: config.head.qa_joint picks the joint or independent
  start / end head; the answerability classifier is on for SQuAD 2.0 with
  config.head.qa_answerable (never for 1.1, whose questions all have answers)."""
  h = config.head
  span = task.kind == 'span'
  head = heads.HeadConfig(kind=task.kind, num_labels=task.num_labels,
                          dropout_rate=h.dropout_rate, form=h.form,
                          answerability=span and getattr(task, 'version', 1) == 2
                          and bool(h.get('qa_answerable', True)),
                          joint=span and bool(h.get('qa_joint', False)),
                          beam_size=int(h.get('qa_beam_size', 20)),
                          answerable_weight=float(h.get('qa_answerable_weight', 0.5)))
  return heads.FinetuneModel(model_cfg, head)


def _init_params(model, seq_len: int, rng):
  z = jnp.zeros((1, seq_len), jnp.int32)
  return model.init({'params': rng}, z, jnp.ones_like(z), z, True)['params']


def merge_params(init_params, loaded_params) -> tuple[Any, list[str], list[str]]:
  """Overlays `loaded_params` on `init_params` by path.

  Returns (params, missing, unexpected): missing = paths of init_params not in
  the loaded tree (kept at their init, e.g. the task head), unexpected = loaded
  paths the model does not have (e.g. the pre-training heads). A shared path
  with a different shape raises.
  """
  from flax import traverse_util
  flat_init = traverse_util.flatten_dict(init_params, sep='/')
  flat_loaded = traverse_util.flatten_dict(loaded_params, sep='/')
  merged, missing = {}, []
  for k, v in flat_init.items():
    if k in flat_loaded:
      w = np.asarray(flat_loaded[k])
      if w.shape != tuple(v.shape):
        raise ValueError(f'checkpoint parameter {k} has shape {w.shape}, the model expects '
                         f'{tuple(v.shape)}')
      merged[k] = w.astype(np.asarray(v).dtype)
    else:
      merged[k] = v
      missing.append(k)
  unexpected = sorted(k for k in flat_loaded if k not in flat_init)
  return traverse_util.unflatten_dict(merged, sep='/'), sorted(missing), unexpected


def make_optimizer(config, params_shape, num_layers: int, num_steps: int):
  """optim.make_optimizer with warmup as a fraction of steps and layer-wise LR decay."""
  o = config.optimizer
  opt_cfg = ml_collections.ConfigDict(dict(
      learning_rate=o.learning_rate, warmup_steps=int(o.warmup_fraction * num_steps),
      decay_power=o.decay_power, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
      bias_correction=o.bias_correction, clip_norm=o.clip_norm))
  multipliers = None
  if o.layerwise_lr_decay != 1.0:
    multipliers = optim.layerwise_lr_multipliers(params_shape, num_layers, o.layerwise_lr_decay,
                                                 o.fixed_top_layer)
  return optim.make_optimizer(opt_cfg, num_steps, multipliers)


def create_state(model, tx, mesh, seq_len: int, rng, loaded_params=None):
  """Sharded TrainState: params initialised (or overlaid with `loaded_params`) in place.

  Returns (state, shardings, missing, unexpected).
  """
  init = functools.partial(_init_params, model, seq_len)
  if loaded_params is None:
    st, shardings = state_lib.create(init, tx, mesh, rng)
    return st, shardings, [], []
  shardings = state_lib.shardings(init, tx, mesh)
  params = state_lib.init_params(init, shardings, rng)
  host, missing, unexpected = merge_params(inference.to_host(params), loaded_params)
  return state_lib.from_params(host, tx, shardings), shardings, missing, unexpected


# --------------------------------------------------------------------------- steps


def train_step(state: state_lib.TrainState, batch: dict, rng, *, model, tx, schedule):
  """One optimizer step with dropout. Returns (new_state, float32 scalar metrics)."""
  key = jax.random.fold_in(rng, state.step)

  # The joint span head conditions its end logits on the gold start in training.
  starts = batch['start_positions'] if model.head.kind == 'span' and model.head.joint else None

  def loss_fn(params):
    out = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                      batch['segment_ids'], False, starts, rngs={'dropout': key})
    return heads.loss_and_metrics(model.head, out, batch)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  return state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def predict_step(params, batch: dict, *, model):
  """Deterministic head outputs for a batch (dict of [B, ...] float32)."""
  return model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                     batch['segment_ids'], True)


def make_steps(model, tx, schedule, mesh, shardings):
  train_fn = state_lib.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule),
                           mesh, (shardings, 'batch', 'replicated'), (shardings, 'replicated'),
                           donate_argnums=0)
  predict_fn = state_lib.jit(functools.partial(predict_step, model=model), mesh,
                             (shardings.params, 'batch'), 'batch')
  return train_fn, predict_fn


def _check_batch_size(name: str, batch_size: int, mesh):
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % shards:
    raise ValueError(f'{name}={batch_size} is not a multiple of the {shards} devices of the mesh')
  if batch_size % jax.process_count():
    raise ValueError(f'{name}={batch_size} is not a multiple of the {jax.process_count()} '
                     'processes (each reads an equal share of every batch)')


def is_writer() -> bool:
  """Whether this process writes the workdir's files: process 0 (all of them compute)."""
  return jax.process_index() == 0


class _NoWriter:
  """The metrics writer of the processes that do not write (is_writer() False)."""

  def write(self, record: dict) -> None:
    del record

  def close(self) -> None:
    pass


# --------------------------------------------------------------------------- the loop


def check_train_config(config) -> None:
  t = config.train
  for name in ('batch_size', 'eval_batch_size', 'log_every', 'keep_checkpoints',
               'length_buckets'):
    if t[name] < 1:
      raise ValueError(f'train.{name}={t[name]}; expected >= 1')
  if t.checkpoint_every < 0:
    raise ValueError(f'train.checkpoint_every={t.checkpoint_every}; expected >= 0 (0: only at '
                     'the end of each epoch)')
  if config.head.form not in heads.HEAD_FORMS:
    raise ValueError(f'head.form={config.head.form!r}; expected one of {heads.HEAD_FORMS}')
  if config.head.get('qa_beam_size', 1) < 1:
    raise ValueError(f'head.qa_beam_size={config.head.qa_beam_size}; expected >= 1')
  if config.head.get('qa_answerable_weight', 0.0) < 0:
    raise ValueError(f'head.qa_answerable_weight={config.head.qa_answerable_weight}; '
                     'expected >= 0')


def _check_resume(meta: dict, step: int, position: dict, num_features: int, num_steps: int,
                  buckets, steps_per_epoch: int, where: Path) -> None:
  """The checkpoint must come from a run over the same training data and schedule."""
  for name, saved, now in (('training features', meta['num_train_features'], num_features),
                           ('steps', meta['num_steps'], num_steps),
                           ('length buckets', meta['buckets'], list(buckets))):
    if saved != now:
      raise ValueError(f'the checkpoints in {where} are of a run with {saved} {name}, this one '
                       f'has {now}; use a new --workdir (or the data and config of that run)')
  if position['epoch'] * steps_per_epoch + position['batch'] != step:
    raise ValueError(f'checkpoint {step} in {where}: data position {position} does not fit '
                     f'{steps_per_epoch} steps per epoch')


def task_info(task, config) -> dict:
  """What a saved model records of its task: enough to rebuild it with registry.get_task."""
  settings = {}
  if task.kind == 'span':
    settings = {k: getattr(task, k) for k in SQUAD_SETTINGS}
  return {'name': task.name, 'kind': task.kind, 'label_list': list(task.label_list),
          'num_labels': task.num_labels, 'main_metric': task.main_metric, 'settings': settings}


def save_model(workdir: Path, params, model_dict: dict, model, task, config, tokenizer,
               step: int) -> Path:
  """workdir/model/: the fine-tuned weights, head, configs, labels and vocab (io/finetuned)."""
  info = {'model': model_dict, 'head': dataclasses.asdict(model.head),
          'task': task_info(task, config), 'seq_len': int(config.train.seq_len),
          'lowercase': bool(tokenizer.lowercase), 'step': int(step)}
  return finetuned.save(workdir / 'model', params, info, list(tokenizer.tokens))


@dataclasses.dataclass
class Run:
  """A fine-tuning run's inputs, read and checked (`prepare`) before anything is written."""
  task: Any
  ckpt: weights.Pretrained | None
  tokenizer: Any
  model_dict: dict  # config.model fields of the model (the checkpoint's when it has them)
  model_cfg: electra.ModelConfig
  model: heads.FinetuneModel
  mesh: Any
  train_feats: task_base.Features
  eval_splits: list[str]
  eval_feats: dict[str, task_base.Features]
  epochs: float
  num_steps: int
  steps_per_epoch: int


def prepare(config, requested: dict | None = None) -> Run:
  """Reads the task, the starting weights, the vocab and the data; ValueError or
  FileNotFoundError naming the bad value. Writes nothing. `requested`: see resolve.resolve_model."""
  t = config.train
  check_train_config(config)
  task = build_task(config)
  ckpt = weights.load(t.init_from) if t.init_from else None
  tokenizer = resolve.load_tokenizer(config, ckpt)

  model_dict = resolve.resolve_model(config, ckpt, tokenizer, requested)
  model_cfg = electra.ModelConfig.from_config(model_dict)
  model = build_model(model_cfg, task, config)

  mesh = sharding.make_mesh(config.mesh)
  _check_batch_size('train.batch_size', t.batch_size, mesh)
  _check_batch_size('train.eval_batch_size', t.eval_batch_size, mesh)

  train_feats = load_features(task, config, tokenizer, config.data.train_split, True,
                              config.data.max_train_examples)
  eval_splits = _split_list(config.data.eval_splits) or list(task.eval_splits)
  eval_feats = {s: load_features(task, config, tokenizer, s, False, config.data.max_eval_examples)
                for s in eval_splits}

  epochs = t.epochs or task.epochs
  num_steps = task_base.num_train_steps(len(train_feats), t.batch_size, epochs)
  steps_per_epoch = len(train_feats) // t.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train_feats)} training features is fewer than one batch of '
                     f'train.batch_size={t.batch_size}')
  return Run(task, ckpt, tokenizer, model_dict, model_cfg, model, mesh, train_feats,
             eval_splits, eval_feats, epochs, num_steps, steps_per_epoch)


def finetune_and_evaluate(config, workdir: str, requested: dict | None = None, *,
                          progress: bool = True) -> dict:
  """Fine-tunes one seed (config.seed) and returns the results dict (also results.json).

  Resumes from the newest checkpoint in `workdir` (state, data position and dropout key),
  so a killed run started again with the same command logs bit-identical losses and dev
  metrics. On SIGTERM/SIGINT it saves a checkpoint and returns {'preempted': signal name,
  'step': step} without writing results. The workdir is locked for the run; everything is
  checked (`prepare`: task, weights, vocab, data, resume compatibility) before anything is
  written, so a refused start leaves the workdir as it was. config.json records the model
  that ran (see `resolve.resolve_model` for which keys a checkpoint fixes).
  """
  t_start = time.time()
  workdir = rundir.check_workdir(workdir)
  log_files = []
  with rundir.RunStart(workdir, 'fine-tuning run') as start:
    try:
      run = prepare(config, requested)
      if is_writer():  # process 0 of a multi-host run writes the workdir's files
        start.on_started(lambda: log_files.append(_attach_log_file(workdir)))
      return _train(config, workdir, run, start, progress, t_start)
    finally:
      for handler in log_files:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _attach_log_file(workdir: Path) -> logging.Handler:
  """Appends this process's log records to workdir/log.txt (until removed)."""
  handler = logging.FileHandler(workdir / 'log.txt')
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  logging.getLogger().addHandler(handler)
  return handler


def _train(config, workdir: Path, run: Run, start: rundir.RunStart, progress: bool,
           t_start: float) -> dict:
  """The rest of finetune_and_evaluate, once its inputs are checked and workdir exists."""
  t = config.train
  task, ckpt, tokenizer, model, mesh = run.task, run.ckpt, run.tokenizer, run.model, run.mesh
  train_feats, eval_splits, eval_feats = run.train_feats, run.eval_splits, run.eval_feats
  epochs, num_steps, steps_per_epoch = run.epochs, run.num_steps, run.steps_per_epoch
  log.info('%s: %d training features, %d steps (%g epochs x %d); dev %s', task.name,
           len(train_feats), num_steps, epochs, steps_per_epoch,
           {s: len(f) for s, f in eval_feats.items()})
  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  init_fn = functools.partial(_init_params, model, t.seq_len)
  params_shape = nn.meta.unbox(jax.eval_shape(init_fn, init_rng))
  tx, schedule = make_optimizer(config, params_shape, run.model_cfg.num_layers, num_steps)
  abstract = state_lib.abstract(init_fn, tx, mesh)
  buckets = task_base.bucket_lengths(t.seq_len, t.length_buckets)
  log.info('length buckets: %s', buckets)
  ckpt_mgr = checkpoint.Checkpointer(workdir, t.keep_checkpoints, abstract)
  restored = ckpt_mgr.restore_latest()
  if restored is not None:
    meta = restored.meta
    _check_resume(meta, restored.step, restored.loader_state, len(train_feats), num_steps,
                  buckets, steps_per_epoch, ckpt_mgr.directory)
    state, dropout_rng, step = restored.state, restored.rng, restored.step
    history, missing, unexpected = meta['history'], meta['missing_keys'], meta['unexpected_keys']
    position = restored.loader_state
    runlog.console(f'Resumed from the checkpoint at step {step} in {ckpt_mgr.directory}')
  else:
    state, _, missing, unexpected = create_state(
        model, tx, mesh, t.seq_len, init_rng, None if ckpt is None else ckpt.params)
    step, history, position = 0, [], {'epoch': 0, 'batch': 0}
    if ckpt is not None:
      log.info('init from %s (%s): %d missing keys (initialised at random): %s', ckpt.path,
               ckpt.kind, len(missing), missing)
      log.info('%d unexpected keys (ignored): %s', len(unexpected), unexpected)
    else:
      log.info('random initialisation (no train.init_from)')
  log.info('model: %d parameters; %d steps (%g epochs x %d steps), lr %g, layer decay %g',
           heads.count_params(state.params), num_steps, epochs, steps_per_epoch,
           config.optimizer.learning_rate, config.optimizer.layerwise_lr_decay)
  train_fn, predict_fn = make_steps(model, tx, schedule, mesh, state_lib.shardings_of(abstract))
  # Compiled ahead of time per batch shape, each checked against the machine's memory.
  data_bytes = membudget.nbytes([train_feats.arrays] + [f.arrays for f in eval_feats.values()])
  train_fn = membudget.Precompiled(train_fn, 'training step', host_bytes=data_bytes,
                                   key_argnums=(1,))
  predict_fn = membudget.Precompiled(predict_fn, 'evaluation step', host_bytes=data_bytes,
                                     key_argnums=(1,))

  start.started()  # the inputs are checked: from here on the workdir is this run's
  ran = json.loads(config.to_json_best_effort())
  ran['model'] = dict(run.model_dict)  # what runs, the checkpoint's structure included
  if is_writer():
    (workdir / 'config.json').write_text(json.dumps(ran, indent=2, sort_keys=True, default=str))
    if restored is None:  # a fresh run: no records of an older one
      (workdir / 'metrics.jsonl').unlink(missing_ok=True)
  jsonl = runlog.JsonlWriter(workdir / 'metrics.jsonl') if is_writer() else _NoWriter()
  tb = runlog.TensorBoard(workdir)
  train_keys = inference.INPUT_KEYS + heads.LABEL_KEYS[task.kind]
  train_arrays = {k: train_feats.arrays[k] for k in train_keys}
  main = task.main_metric
  last_outputs, pending, preempted, t_train = {}, [], None, time.time()
  bar = tqdm(total=num_steps, initial=step, unit='step', dynamic_ncols=True, smoothing=0.1,
             disable=not progress or jax.process_index() != 0, mininterval=1.0)
  if history:
    bar.set_postfix({f'dev_{main}': f'{history[-1][eval_splits[0]][main]:.4g}'}, refresh=False)

  def save(position):
    ckpt_mgr.save(step, state, position, dropout_rng,
                  {'history': history, 'missing_keys': missing, 'unexpected_keys': unexpected,
                   'num_train_features': len(train_feats), 'num_steps': num_steps,
                   'buckets': list(buckets)})

  def flush(epoch):
    nonlocal pending
    if pending:
      mean = _log_train(jsonl, pending, step, num_steps, epoch, t_train)
      tb.write(step, mean, 'train')
      bar.set_postfix({'loss': f'{mean["loss"]:.4g}', **(
          {f'dev_{main}': f'{history[-1][eval_splits[0]][main]:.4g}'} if history else {})},
                      refresh=False)
      pending = []

  num_epochs = math.ceil(epochs)
  try:
    with checkpoint.Preemption(ckpt_mgr) as preempt:
      for epoch in range(position['epoch'], num_epochs):
        if step >= num_steps:
          break
        skip = position['batch'] if epoch == position['epoch'] else 0
        stop = epoch_end = False
        for i, batch in enumerate(task_base.train_batches(
            train_arrays, t.batch_size, config.seed, epoch, buckets=buckets)):
          if i < skip:
            continue  # the batches the checkpoint's state has already seen
          if step >= num_steps:
            break
          state, metrics = train_fn(state, sharding.global_batch(inference.host_rows(batch), mesh),
                                    dropout_rng)
          pending.append(metrics)
          step += 1
          bar.update(1)
          stop = preempt.requested(step)
          epoch_end = (i + 1) == steps_per_epoch or step == num_steps
          ckpt_due = bool(t.checkpoint_every) and step % t.checkpoint_every == 0
          if step % t.log_every == 0 or ckpt_due or stop or epoch_end:
            flush(epoch)
          if epoch_end:
            break
          if ckpt_due or stop:  # mid-epoch; the epoch's end is saved after its evaluation
            save({'epoch': epoch, 'batch': i + 1})
          if stop:
            break
        if stop and not epoch_end:
          preempted = preempt.signal
          break
        flush(epoch)
        record = {'epoch': epoch + 1, 'step': step}
        for split, feats in eval_feats.items():
          outputs = inference.predict(predict_fn, state.params, feats, t.eval_batch_size, mesh,
                            buckets=buckets)
          last_outputs[split] = outputs
          record[split] = task.compute_metrics(inference.task_predictions(task, outputs), feats)
          runlog.console(f'epoch {epoch + 1} {task.name}/{split}: {_fmt(record[split])}', bar)
          tb.write(step, record[split], f'dev_{split}')
        jsonl.write(record)
        history.append(record)
        bar.set_postfix({f'dev_{main}': f'{record[eval_splits[0]][main]:.4g}'}, refresh=False)
        save({'epoch': epoch + 1, 'batch': 0})
        if stop:
          preempted = preempt.signal
          break
  finally:
    bar.close()
    ckpt_mgr.close()  # waits for the async saves in flight
    jsonl.close()
    tb.close()
  if preempted:
    runlog.console(f'{preempted}: saved a checkpoint at step {step} in {ckpt_mgr.directory}; run the '
           'same command again to resume')
    return {'preempted': preempted, 'step': step}
  train_time = time.time() - t_train

  for split, feats in eval_feats.items():
    if task.kind == 'span':  # The answers behind the final SQuAD scores.
      # Every process predicts when needed (a collective); process 0 writes.
      outputs = last_outputs.get(split) or inference.predict(predict_fn, state.params, feats,
                                                   t.eval_batch_size, mesh, buckets=buckets)
      preds, na_scores, _ = task.postprocess(feats, outputs)
      if is_writer():
        (workdir / f'predictions_{split}.json').write_text(json.dumps(preds, indent=1))
        if na_scores:  # SQuAD 2.0: the official null_odds file (higher = less answerable)
          (workdir / f'null_odds_{split}.json').write_text(json.dumps(na_scores, indent=1))
  test_files = write_test_predictions(task, config, tokenizer, predict_fn, state.params, mesh,
                                      workdir)
  model_dir = save_model(workdir, state.params, run.model_dict, model, task, config, tokenizer,
                         step)
  curves = plots.plot_run(workdir) if is_writer() and history else None

  final = history[-1] if history else {}
  best = max(history, key=lambda r: r[eval_splits[0]][main]) if history else {}
  results = {
      'task': task.name, 'seed': config.seed, 'init_from': t.init_from,
      'init_kind': 'random' if ckpt is None else ckpt.kind,
      'model': dataclasses.asdict(run.model_cfg), 'num_params': heads.count_params(state.params),
      'missing_keys': missing, 'unexpected_keys': unexpected,
      'num_train_features': len(train_feats), 'num_steps': num_steps, 'epochs': epochs,
      'truncated': {config.data.train_split: train_feats.num_truncated,
                    **{s: f.num_truncated for s, f in eval_feats.items()}},
      'main_metric': main,
      'dev': {s: final[s] for s in eval_splits} if final else {},
      'best_epoch': best.get('epoch'), 'history': history,
      'test_prediction_files': [str(p) for p in test_files],
      'model_dir': str(model_dir), 'curves': str(curves) if curves else None,
      'train_time_s': round(train_time, 1), 'wall_time_s': round(time.time() - t_start, 1),
  }
  if is_writer():
    (workdir / 'results.json').write_text(json.dumps(results, indent=2, sort_keys=True))
  log.info('final %s: %s (wall %.0f s)', task.name,
           {s: _fmt(m) for s, m in results['dev'].items()}, results['wall_time_s'])
  return results


def _log_train(jsonl, pending: list, step: int, num_steps: int, epoch: int, t0: float):
  values = jax.device_get(pending)
  mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
  if not all(math.isfinite(v) for v in mean.values()):
    raise FloatingPointError(f'non-finite training metrics at step {step}: {mean}')
  log.info('step %d/%d epoch %d: %s', step, num_steps, epoch + 1, _fmt(mean))
  jsonl.write({'step': step, 'epoch': epoch + 1, 'train': mean})
  return mean


def _fmt(d: dict) -> str:
  return ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in d.items())
