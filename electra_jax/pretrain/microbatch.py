"""Gradient accumulation: one optimizer step over a global batch split into K microbatches.

    grads, metrics, aux = microbatch.value_and_grad(loss_fn, params, inputs, K, ...)

`inputs` are an objective's prepared Inputs for the whole global batch (masking
and sampling keys drawn per example before the split, loss weights normalised
over the global batch: objectives.py), so a microbatch's loss is its share of
the global loss; the K shares, their gradients and their metrics are summed in
a `lax.scan` that holds one microbatch's activations at a time. The result is
the K=1 step up to float rounding, except for dropout, whose masks are drawn per
microbatch (the dropout key is folded with the microbatch index).

Microbatch k takes rows k, K + k, 2K + k, ... of the global batch: every
device's rows split evenly over the K microbatches, so each microbatch is
spread over the whole mesh and the split moves no data. This needs
batch_size % (K x batch shards) == 0 (`check`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from electra_jax import sharding


def check(batch_size: int, accum_steps: int, batch_shards: int) -> None:
  """ValueError unless the global batch splits into `accum_steps` microbatches over the mesh."""
  if accum_steps < 1:
    raise ValueError(f'train.grad_accum_steps={accum_steps}; expected >= 1')
  if batch_size % (accum_steps * batch_shards):
    raise ValueError(
        f'train.grad_accum_steps={accum_steps} splits train.batch_size={batch_size} into '
        f'{accum_steps} microbatches that each divide over the {batch_shards} batch shards of the '
        f'mesh; expected batch_size a multiple of {accum_steps * batch_shards}')


def split(tree, accum_steps: int, mesh=None):
  """[B, ...] leaves -> [K, B / K, ...]: microbatch k holds rows k, K + k, 2K + k, ..."""
  def one(x):
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:  # rows stay on their devices: axis 1 over the batch axes
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
    return x
  return jax.tree.map(one, tree)


def value_and_grad(loss_fn: Callable, params, inputs, accum_steps: int, *, mesh=None,
                   grad_shardings=None):
  """Sum over microbatches of loss_fn's value, gradient and metrics.

  loss_fn(params, inputs_mb, index) -> (loss, (metrics, aux)), the loss and
  metrics being the microbatch's shares (objectives.py); `index` is the
  microbatch's (0 when accum_steps is 1). Returns (loss, grads, metrics) with
  the metrics still summed shares (objectives.finalize turns them into values).
  grad_shardings: the params' shardings, kept on the accumulated gradients.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, (metrics, _)), grads = grad_fn(params, inputs, 0)
    return loss, grads, metrics
  micro = split(inputs, accum_steps, mesh)

  def body(carry, xs):
    inputs_mb, index = xs
    (loss, (metrics, _)), grads = grad_fn(params, inputs_mb, index)
    out = jax.tree.map(jnp.add, carry, (loss, grads, metrics))
    if grad_shardings is not None:
      out = (out[0], jax.lax.with_sharding_constraint(out[1], grad_shardings), out[2])
    return out, None

  first = jax.tree.map(lambda x: x[0], micro)
  (loss_s, (metrics_s, _)), grads_s = jax.eval_shape(grad_fn, params, first, 0)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_s, grads_s, metrics_s))
  if grad_shardings is not None:
    zeros = (zeros[0], jax.lax.with_sharding_constraint(zeros[1], grad_shardings), zeros[2])
  (loss, grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
  return loss, grads, metrics
