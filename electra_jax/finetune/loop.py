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

from electra_jax import configlib
from electra_jax import optim
from electra_jax import rundir
from electra_jax.io import weights
from electra_jax import runlog
from electra_jax import sharding
from electra_jax import state as state_lib
from electra_jax.finetune.tasks import base as task_base
from electra_jax.finetune.tasks import registry
from electra_jax.models import electra
from electra_jax.models import heads

log = logging.getLogger(__name__)

INPUT_KEYS = ('input_ids', 'input_mask', 'segment_ids')
# Local on-disk source name of each task family (config.data.source='local').
_LOCAL_SOURCE = {'classification': 'tsv', 'regression': 'tsv', 'span': 'json',
                 'tagging': 'conll'}


# --------------------------------------------------------------------------- task and data


def build_task(config):
  """The registry's task, with SQuAD's window / n-best settings from config.task."""
  task = registry.get_task(config.task.name)
  if task.kind == 'span':
    task = registry.get_task(config.task.name, doc_stride=config.task.doc_stride,
                             max_query_length=config.task.max_query_length,
                             n_best_size=config.task.n_best_size,
                             max_answer_length=config.task.max_answer_length)
  return task


def task_source(task, config) -> tuple[str, str]:
  """(reader source name, data_dir) for config.data; clear error when data_dir is needed."""
  src = config.data.source
  if src == 'tfds':
    return 'tfds', config.data.data_dir
  if src != 'local':
    raise ValueError(f"config.data.source={src!r}; expected 'local' or 'tfds'")
  if not config.data.data_dir:
    raise ValueError(f'task {task.name} reads local files: set --config.data.data_dir (e.g. the '
                     f'GLUE root, the SQuAD folder or the CoNLL-2000 folder), or use '
                     f'--config.data.source=tfds')
  return _LOCAL_SOURCE[task.kind], config.data.data_dir


def _split_list(value: str) -> list[str]:
  return [s.strip() for s in value.split(',') if s.strip()]


def load_features(task, config, tokenizer, split: str, train: bool,
                  max_examples: int = 0) -> task_base.Features:
  """Reads one split and featurizes it (logging how many examples were truncated)."""
  source, data_dir = task_source(task, config)
  examples = task.load_examples(source, split, data_dir)
  if max_examples:
    examples = examples[:max_examples]
  feats = task.featurize(examples, tokenizer, config.train.seq_len, train)
  log.info('%s/%s: %d examples -> %d features; %d truncated (train.seq_len=%d)', task.name,
           split, len(examples), len(feats), feats.num_truncated, config.train.seq_len)
  return feats


# --------------------------------------------------------------------------- model and state


def build_model(model_cfg: electra.ModelConfig, task, config) -> heads.FinetuneModel:
  head = heads.HeadConfig(kind=task.kind, num_labels=task.num_labels,
                          dropout_rate=config.head.dropout_rate,
                          answerability=task.kind == 'span' and getattr(task, 'version', 1) == 2)
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
  host, missing, unexpected = merge_params(_to_host(params), loaded_params)
  return state_lib.from_params(host, tx, shardings), shardings, missing, unexpected


# --------------------------------------------------------------------------- steps


def train_step(state: state_lib.TrainState, batch: dict, rng, *, model, tx, schedule):
  """One optimizer step with dropout. Returns (new_state, float32 scalar metrics)."""
  key = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    out = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                      batch['segment_ids'], False, rngs={'dropout': key})
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


def _host_rows(batch: dict) -> dict:
  """This host's contiguous slice of a global batch (all of it on one host)."""
  n, p = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  size = len(next(iter(batch.values()))) // n
  return {k: v[p * size:(p + 1) * size] for k, v in batch.items()}


def _to_host(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def predict(predict_fn, params, features: task_base.Features, batch_size: int, mesh) -> dict:
  """Head outputs for every feature, in order: name -> np.ndarray [N, ...].

  The last batch is zero-padded (weights 0) and the padding rows are dropped,
  so no example is lost and none is counted twice.
  """
  arrays = {k: features.arrays[k] for k in INPUT_KEYS}
  chunks: dict[str, list] = {}
  for batch in task_base.eval_batches(arrays, batch_size):
    row_weights = batch.pop('weights')
    out = _to_host(predict_fn(params, sharding.global_batch(_host_rows(batch), mesh)))
    real = row_weights > 0
    for k, v in out.items():
      chunks.setdefault(k, []).append(np.asarray(v)[real])
  return {k: np.concatenate(v) for k, v in chunks.items()}


def task_predictions(task, outputs: dict):
  """Model outputs -> the `predictions` argument of task.compute_metrics."""
  if task.kind == 'classification':
    return outputs['logits']
  if task.kind == 'regression':
    return outputs['predictions']
  if task.kind == 'span':
    return outputs
  return outputs['logits']


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


def load_tokenizer(config, checkpoint: weights.Pretrained | None):
  return weights.load_tokenizer(config.data.vocab, checkpoint, config.data.lowercase)


# config.model keys that fix the parameter shapes. Starting from a checkpoint, its values are
# used; a different value asked for (a --config.model.* override, or size=) is refused.
# (io.weights.STRUCTURE without the generator's: fine-tuning loads the discriminator alone.)
STRUCTURAL_KEYS = tuple(k for k in weights.STRUCTURE if k not in ('generator_fraction', 'sharing'))
# How the model runs, not what it holds: the fine-tuning config's values are always applied.
RUNTIME_KEYS = ('dropout_rate', 'attention_dropout_rate', 'dtype', 'matmul_dtype',
                'attention_impl', 'remat')
# Every other key (layer_norm_eps, initializer_range, the generator's and sharing keys) is
# the checkpoint's unless asked for explicitly, which is then applied.


def default_model(size: str) -> dict:
  """config.model of configs/finetune.py for `size` before any override (vocab_size 0)."""
  d = {f.name: f.default for f in dataclasses.fields(electra.ModelConfig)
       if f.default is not dataclasses.MISSING}
  d.update({k: v for k, v in configlib.size_table(size).items()
            if k in ('num_layers', 'hidden_size', 'intermediate_size', 'num_heads',
                     'embedding_size', 'generator_fraction')})
  d['vocab_size'] = 0
  return d


def requested_model_keys(config) -> dict:
  """{key: where} of the model keys a config asks for: those off the size's defaults.

  The command line knows better (its --config.model.* flags and whether size= was given);
  electra_jax.finetune passes that instead.
  """
  defaults = default_model(config.size)
  return {k: 'the config' for k, v in dict(config.model).items()
          if k in defaults and v != defaults[k]}


def resolve_model(config, ckpt: weights.Pretrained | None, tokenizer,
                  requested: dict | None = None) -> dict:
  """The config.model that runs, as a dict (see STRUCTURAL_KEYS and RUNTIME_KEYS).

  requested: {key: where it was asked for, e.g. '--config.model.hidden_size' or 'size=base'};
  None = `requested_model_keys(config)`.
  """
  requested = requested_model_keys(config) if requested is None else requested
  asked = dict(config.model)
  if ckpt is None or ckpt.model_config is None:
    model = dict(asked)
  else:
    have = dict(ckpt.model_config)
    model = {**asked, **have}
    for k in RUNTIME_KEYS:
      model[k] = asked[k]
    refused = []
    for k, where in sorted(requested.items()):
      if k in RUNTIME_KEYS or k not in asked:
        continue
      if k in STRUCTURAL_KEYS:
        if k == 'vocab_size' and not asked[k]:
          continue
        if k in have and asked[k] != have[k]:
          refused.append(f'model.{k}={asked[k]} ({where}) but the checkpoint has {have[k]}')
      else:
        model[k] = asked[k]
    if refused:
      raise ValueError(f'train.init_from {ckpt.path} fixes the model\'s sizes and vocab: '
                       + '; '.join(refused) + '. Drop these settings to fine-tune it as it is, '
                       "or train from random init (--config.train.init_from='')")
  if not model['vocab_size']:
    model['vocab_size'] = tokenizer.vocab_size
  if model['vocab_size'] != tokenizer.vocab_size:
    raise ValueError(f'model vocab_size={model["vocab_size"]} but the vocab '
                     f'{getattr(tokenizer, "name", None) or config.data.vocab or "of the checkpoint"}'
                     f' has {tokenizer.vocab_size} tokens')
  if config.train.seq_len > model['max_position_embeddings']:
    raise ValueError(f'train.seq_len={config.train.seq_len} is longer than the '
                     f'model\'s max_position_embeddings={model["max_position_embeddings"]}; '
                     'lower train.seq_len')
  return model


def finetune_and_evaluate(config, workdir: str, requested: dict | None = None) -> dict:
  """Fine-tunes one seed (config.seed) and returns the results dict (also results.json).

  The workdir is locked for the run; a start refused before training (bad config, data or
  checkpoint) leaves it as it was. config.json records the model that ran (see
  `resolve_model` for which keys a checkpoint fixes).
  """
  workdir = rundir.check_workdir(workdir)
  with rundir.RunStart(workdir, 'fine-tuning run') as start:
    return _finetune(config, workdir, start, requested)


def _finetune(config, workdir: Path, start, requested) -> dict:
  t_start = time.time()
  task = build_task(config)
  ckpt = weights.load(config.train.init_from) if config.train.init_from else None
  tokenizer = load_tokenizer(config, ckpt)

  model_dict = resolve_model(config, ckpt, tokenizer, requested)
  model_cfg = electra.ModelConfig.from_config(model_dict)
  model = build_model(model_cfg, task, config)

  mesh = sharding.make_mesh(config.mesh)
  _check_batch_size('train.batch_size', config.train.batch_size, mesh)
  _check_batch_size('train.eval_batch_size', config.train.eval_batch_size, mesh)

  train_feats = load_features(task, config, tokenizer, config.data.train_split, True,
                              config.data.max_train_examples)
  eval_splits = _split_list(config.data.eval_splits) or list(task.eval_splits)
  eval_feats = {s: load_features(task, config, tokenizer, s, False, config.data.max_eval_examples)
                for s in eval_splits}

  epochs = config.train.epochs or task.epochs
  num_steps = task_base.num_train_steps(len(train_feats), config.train.batch_size, epochs)
  steps_per_epoch = len(train_feats) // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train_feats)} training features is fewer than one batch of '
                     f'train.batch_size={config.train.batch_size}')

  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  params_shape = nn.meta.unbox(jax.eval_shape(
      functools.partial(_init_params, model, config.train.seq_len), init_rng))
  tx, schedule = make_optimizer(config, params_shape, model_cfg.num_layers, num_steps)
  state, shardings, missing, unexpected = create_state(
      model, tx, mesh, config.train.seq_len, init_rng,
      None if ckpt is None else ckpt.params)
  if ckpt is not None:
    log.info('init from %s (%s): %d missing keys (initialised at random): %s', ckpt.path,
             ckpt.kind, len(missing), missing)
    log.info('%d unexpected keys (ignored): %s', len(unexpected), unexpected)
  else:
    log.info('random initialisation (no train.init_from)')
  log.info('model: %d parameters; %d steps (%g epochs x %d steps), lr %g, layer decay %g',
           heads.count_params(state.params), num_steps, epochs, steps_per_epoch,
           config.optimizer.learning_rate, config.optimizer.layerwise_lr_decay)
  train_fn, predict_fn = make_steps(model, tx, schedule, mesh, shardings)

  start.started()  # the inputs are checked: from here on the workdir is this run's
  ran = json.loads(config.to_json_best_effort())
  ran['model'] = dict(model_dict)  # what runs, the checkpoint's structure included
  if is_writer():
    (workdir / 'config.json').write_text(json.dumps(ran, indent=2, sort_keys=True, default=str))
    (workdir / 'metrics.jsonl').unlink(missing_ok=True)  # a fresh run: no records of an older one
  jsonl = runlog.JsonlWriter(workdir / 'metrics.jsonl') if is_writer() else _NoWriter()
  train_keys = INPUT_KEYS + heads.LABEL_KEYS[task.kind]
  train_arrays = {k: train_feats.arrays[k] for k in train_keys}
  history, pending, last_outputs, t_train = [], [], {}, time.time()
  step = 0
  num_epochs = math.ceil(epochs)
  for epoch in range(num_epochs):
    for batch in task_base.train_batches(train_arrays, config.train.batch_size, config.seed,
                                         epoch):
      if step >= num_steps:
        break
      state, metrics = train_fn(state, sharding.global_batch(_host_rows(batch), mesh),
                                dropout_rng)
      pending.append(metrics)
      step += 1
      if step % config.train.log_every == 0 or step == num_steps:
        _log_train(jsonl, pending, step, num_steps, epoch, t_train)
        pending = []
    if pending:
      _log_train(jsonl, pending, step, num_steps, epoch, t_train)
      pending = []
    record = {'epoch': epoch + 1, 'step': step}
    for split, feats in eval_feats.items():
      outputs = predict(predict_fn, state.params, feats, config.train.eval_batch_size, mesh)
      last_outputs[split] = outputs
      record[split] = task.compute_metrics(task_predictions(task, outputs), feats)
      log.info('epoch %d %s/%s: %s', epoch + 1, task.name, split, _fmt(record[split]))
    jsonl.write(record)
    history.append(record)
    if step >= num_steps:
      break
  train_time = time.time() - t_train
  jsonl.close()

  for split, feats in eval_feats.items():
    if task.kind == 'span' and is_writer():  # The answers behind the final SQuAD scores.
      outputs = last_outputs[split]
      preds, _, _ = task.postprocess(feats, outputs['start_logits'], outputs['end_logits'],
                                     outputs.get('answerable_logits'))
      (workdir / f'predictions_{split}.json').write_text(json.dumps(preds, indent=1))
  test_files = write_test_predictions(task, config, tokenizer, predict_fn, state.params, mesh,
                                      workdir)

  final = history[-1] if history else {}
  main = task.main_metric
  best = max(history, key=lambda r: r[eval_splits[0]][main]) if history else {}
  results = {
      'task': task.name, 'seed': config.seed, 'init_from': config.train.init_from,
      'init_kind': 'random' if ckpt is None else ckpt.kind,
      'model': dataclasses.asdict(model_cfg), 'num_params': heads.count_params(state.params),
      'missing_keys': missing, 'unexpected_keys': unexpected,
      'num_train_features': len(train_feats), 'num_steps': num_steps, 'epochs': epochs,
      'truncated': {config.data.train_split: train_feats.num_truncated,
                    **{s: f.num_truncated for s, f in eval_feats.items()}},
      'main_metric': main,
      'dev': {s: final[s] for s in eval_splits} if final else {},
      'best_epoch': best.get('epoch'), 'history': history,
      'test_prediction_files': [str(p) for p in test_files],
      'train_time_s': round(train_time, 1), 'wall_time_s': round(time.time() - t_start, 1),
  }
  if is_writer():
    (workdir / 'results.json').write_text(json.dumps(results, indent=2, sort_keys=True))
  log.info('final %s: %s (wall %.0f s)', task.name,
           {s: _fmt(m) for s, m in results['dev'].items()}, results['wall_time_s'])
  return results


def write_test_predictions(task, config, tokenizer, predict_fn, params, mesh, workdir: Path):
  """GLUE leaderboard files for config.data.test_splits into workdir/test_predictions."""
  if not hasattr(task, 'write_test_predictions') or not config.data.test_splits:
    return []
  test_splits = [s for s in task.splits if s.startswith('test')]
  explicit = config.data.test_splits != 'auto'
  if explicit:
    test_splits = _split_list(config.data.test_splits)
  files = []
  for split in test_splits:
    try:
      feats = load_features(task, config, tokenizer, split, False)
    except FileNotFoundError as e:
      if explicit:
        raise
      log.warning('no %s/%s data, no leaderboard file: %s', task.name, split, e)
      continue
    outputs = predict(predict_fn, params, feats, config.train.eval_batch_size, mesh)
    if not is_writer():  # every process predicts (a collective); process 0 writes
      continue
    path = task.write_test_predictions(task_predictions(task, outputs), feats.examples,
                                       workdir / 'test_predictions', split)
    log.info('wrote %s (%d rows)', path, len(feats.examples))
    files.append(path)
  return files


def _log_train(jsonl, pending: list, step: int, num_steps: int, epoch: int, t0: float):
  values = jax.device_get(pending)
  mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
  if not all(math.isfinite(v) for v in mean.values()):
    raise FloatingPointError(f'non-finite training metrics at step {step}: {mean}')
  elapsed = time.time() - t0
  eta = elapsed / step * (num_steps - step)
  log.info('step %d/%d epoch %d: %s (%.2f s/step, ETA %.0f s)', step, num_steps, epoch + 1,
           _fmt(mean), elapsed / step, eta)
  jsonl.write({'step': step, 'epoch': epoch + 1, 'train': mean})


def _fmt(d: dict) -> str:
  return ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in d.items())
