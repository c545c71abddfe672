"""A pre-training run's model, optimizer and sharded TrainState, built from its config.

    model = build_model(config); tx, schedule = build_optimizer(config)
    state, shardings = create_train_state(config, model, tx, mesh, rng)
    target = abstract_train_state(config, model, tx, mesh)   # what a checkpoint restores into

No I/O and no loop: the pre-training loop, the checkpoint readers
(electra_jax.io.weights) and the benchmarks all build the same state here,
through electra_jax.state.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from electra_jax import optim
from electra_jax import state as state_lib
from electra_jax.models import electra


def build_model(config) -> electra.Pretrainer:
  return electra.Pretrainer(electra.ModelConfig.from_config(config.model))


def build_optimizer(config):
  return optim.make_optimizer(config.optimizer, config.train.num_steps)


def dummy_batch(batch_size: int, seq_len: int) -> dict:
  z = jnp.zeros((batch_size, seq_len), jnp.int32)
  return {'input_ids': z, 'input_mask': jnp.ones_like(z), 'segment_ids': z}


def _init_params(model, seq_len: int, max_predictions: int, rng):
  """Boxed (logically annotated) Pretrainer params."""
  b = dummy_batch(1, seq_len)
  positions = jnp.zeros((1, max_predictions), jnp.int32)
  return model.init({'params': rng}, b['input_ids'], b['input_mask'], b['segment_ids'],
                    positions, True)['params']


def init_params_fn(config, model):
  """rng -> boxed params, at the run's sequence length and number of masked slots."""
  return functools.partial(_init_params, model, config.train.seq_len,
                           config.objective.max_predictions_per_seq)


def state_shardings(config, model, tx, mesh):
  """NamedShardings of the TrainState (params and optimizer slots alike)."""
  return state_lib.shardings(init_params_fn(config, model), tx, mesh)


def abstract_train_state(config, model, tx, mesh):
  """The TrainState as ShapeDtypeStructs carrying their NamedShardings (restore target)."""
  return state_lib.abstract(init_params_fn(config, model), tx, mesh)


def create_train_state(config, model, tx, mesh, rng):
  """Initialises the TrainState directly in its sharded layout (no host copy)."""
  return state_lib.create(init_params_fn(config, model), tx, mesh, rng)
