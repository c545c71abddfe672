"""Train state and the jitted, sharded pre-training step.

    state = create_train_state(config, model, tx, mesh, rng)
    step = make_train_step(config, model, tx, mesh, state_shardings)
    state, metrics = step(state, batch, rng)

`rng` is the run's base key; each step folds in `state.step` and splits it
into named keys (mask, sample, dropout), so a resumed run draws exactly what
an uninterrupted one would.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from electra_jax import objectives
from electra_jax import optim
from electra_jax import sharding
from electra_jax.models import electra


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def build_model(config) -> electra.Pretrainer:
  return electra.Pretrainer(electra.ModelConfig.from_config(config.model))


def build_optimizer(config):
  return optim.make_optimizer(config.optimizer, config.train.num_steps)


def dummy_batch(batch_size: int, seq_len: int) -> dict:
  z = jnp.zeros((batch_size, seq_len), jnp.int32)
  return {'input_ids': z, 'input_mask': jnp.ones_like(z), 'segment_ids': z}


def _init_boxed(model, tx, seq_len: int, max_predictions: int, rng):
  """Boxed (logically annotated) TrainState; used abstractly for shardings."""
  b = dummy_batch(1, seq_len)
  positions = jnp.zeros((1, max_predictions), jnp.int32)
  variables = model.init({'params': rng}, b['input_ids'], b['input_mask'], b['segment_ids'],
                         positions, True)
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    opt_state=tx.init(params))


def state_shardings(config, model, tx, mesh):
  """NamedShardings of the TrainState (params and optimizer slots alike)."""
  abstract = jax.eval_shape(
      functools.partial(_init_boxed, model, tx, config.train.seq_len,
                        config.objective.max_predictions_per_seq), jax.random.key(0))
  return sharding.shardings_for(abstract, mesh)


def create_train_state(config, model, tx, mesh, rng):
  """Initialises the TrainState directly in its sharded layout (no host copy)."""
  shardings = state_shardings(config, model, tx, mesh)
  init = functools.partial(_init_boxed, model, tx, config.train.seq_len,
                           config.objective.max_predictions_per_seq)
  with mesh:
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def step_keys(rng, step):
  """The step's key: fold the step into the run's base key."""
  return jax.random.fold_in(rng, step)


def _tree_norm(tree):
  return optax.global_norm(tree)


def train_step(state: TrainState, batch: dict, rng, *, model, tx, obj_cfg,
               objective: objectives.Objective, schedule, skip_nonfinite: bool):
  """One optimizer step. Returns (new_state, metrics dict of float32 scalars)."""
  key = step_keys(rng, state.step)
  params = state.params
  if objective.prepare_params is not None:
    params = objective.prepare_params(params, state.step, obj_cfg)
  grad_fn = jax.value_and_grad(
      lambda p: objective.loss(p, batch, key, model=model, cfg=obj_cfg, step=state.step),
      has_aux=True)
  (loss, (metrics, _)), grads = grad_fn(params)
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
  fn = functools.partial(train_step, model=model, tx=tx, obj_cfg=obj_cfg,
                         objective=objectives.get_objective(obj_cfg.name), schedule=schedule,
                         skip_nonfinite=config.train.nan_policy == 'skip')
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  return jax.jit(fn, in_shardings=(shardings, batch_sh, repl),
                 out_shardings=(shardings, repl), donate_argnums=0)


def make_eval_step(config, model, mesh, shardings):
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  fn = functools.partial(eval_step, model=model, obj_cfg=obj_cfg,
                         objective=objectives.get_objective(obj_cfg.name))
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  return jax.jit(fn, in_shardings=(shardings.params, batch_sh, repl, repl),
                 out_shardings=(repl, batch_sh))
