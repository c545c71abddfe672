"""The sharded TrainState and jit with shardings: one way, for every program.

    init = lambda rng: model.init({'params': rng}, ...)['params']   # boxed params
    shardings = state.shardings(init, tx, mesh)          # TrainState of NamedShardings
    st, shardings = state.create(init, tx, mesh, rng)    # initialised in place, no host copy
    st = state.from_params(params, tx, shardings)        # loaded weights, fresh optimizer, step 0
    step = state.jit(train_step, mesh, (shardings, 'batch', 'replicated'),
                     (shardings, 'replicated'), donate_argnums=0)

`init` returns the params as the model's `init` does, boxed with their logical
axis names; `sharding.shardings_for` turns those into NamedShardings over the
mesh (params and optimizer slots alike). Pre-training, fine-tuning and
checkpoint conversion all build their state here.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _boxed(init_params: Callable, tx, rng) -> TrainState:
  params = init_params(rng)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))


def shardings(init_params: Callable, tx, mesh) -> TrainState:
  """NamedShardings of the TrainState (params and optimizer slots alike)."""
  abstract = jax.eval_shape(lambda r: _boxed(init_params, tx, r), jax.random.key(0))
  return sharding.shardings_for(abstract, mesh)


def abstract(init_params: Callable, tx, mesh) -> TrainState:
  """The TrainState as ShapeDtypeStructs carrying their NamedShardings (a restore target)."""
  sh = shardings(init_params, tx, mesh)
  shapes = jax.eval_shape(lambda r: nn.meta.unbox(_boxed(init_params, tx, r)), jax.random.key(0))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)


def shardings_of(abstract_state) -> Any:
  """The NamedShardings of an `abstract` state."""
  return jax.tree.map(lambda x: x.sharding, abstract_state)


def create(init_params: Callable, tx, mesh, rng) -> tuple[TrainState, TrainState]:
  """Initialises the TrainState directly in its sharded layout. Returns (state, shardings)."""
  sh = shardings(init_params, tx, mesh)
  with mesh:
    st = jax.jit(lambda r: nn.meta.unbox(_boxed(init_params, tx, r)), out_shardings=sh)(rng)
  return st, sh


def init_params(init_fn: Callable, shardings_: TrainState, rng) -> Any:
  """Just the params, initialised in their sharded layout (to overlay loaded weights on)."""
  return jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings_.params)(rng)


def from_params(params, tx, shardings_: TrainState) -> TrainState:
  """A step-0 TrainState from given params (host or device), with a fresh optimizer state."""
  params = jax.device_put(jax.tree.map(jnp.asarray, params), shardings_.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings_.opt_state)(params)
  step = jax.device_put(jnp.zeros([], jnp.int32), shardings_.step)
  return TrainState(step=step, params=params, opt_state=opt_state)


def _resolve(spec, mesh):
  if isinstance(spec, str):
    if spec == 'batch':
      return sharding.batch_sharding(mesh)
    if spec == 'replicated':
      return sharding.replicated(mesh)
    raise ValueError(f"sharding {spec!r}; expected 'batch', 'replicated' or shardings")
  return spec


def jit(fn: Callable, mesh, in_shardings: tuple, out_shardings, donate_argnums=()) -> Callable:
  """jax.jit with explicit shardings; 'batch' / 'replicated' stand for the mesh's own."""
  ins = tuple(_resolve(s, mesh) for s in in_shardings)
  if isinstance(out_shardings, tuple):
    outs = tuple(_resolve(s, mesh) for s in out_shardings)
  else:
    outs = _resolve(out_shardings, mesh)
  return jax.jit(fn, in_shardings=ins, out_shardings=outs, donate_argnums=donate_argnums)
