"""The official ELECTRA optimizer ("AdamWeightDecay") and learning-rate schedule in optax.

  g   <- clip_by_global_norm(g, clip_norm)
  m   <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2      (no bias correction)
  u   <- m / (sqrt(v) + eps) + weight_decay * p            (no decay on LayerNorm / bias)
  p   <- p - lr(t) * layer_multiplier(p) * u
  lr(t) = lr * (1 - t / T)^power * min(1, t / warmup)      (decay and warmup together)

Layer-wise LR decay (fine-tuning) multiplies each parameter's step by
decay^(n_layers + 2 - depth): embeddings depth 0, layer i depth i + 1, task
head depth n_layers + 2. That gives the top layer decay^2 (the official
code's acknowledged off-by-one, our default); `fixed_top_layer` gives it decay^1.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(lr: float, num_steps: int, warmup_steps: int, power: float = 1.0):
  """Polynomial decay to 0 over `num_steps`, times linear warmup (official form)."""
  def schedule(step):
    t = jnp.minimum(step, num_steps).astype(jnp.float32)
    decayed = lr * (1.0 - t / max(num_steps, 1)) ** power
    if warmup_steps > 0:
      decayed = decayed * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)
    return decayed
  return schedule


class ScaleByAdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                  bias_correction: bool = False) -> optax.GradientTransformation:
  """Adam's direction m / (sqrt(v) + eps); the official code applies no bias correction."""
  def init(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return ScaleByAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                            jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    count = state.count + 1
    if bias_correction:
      c1 = 1 - b1 ** count.astype(jnp.float32)
      c2 = 1 - b2 ** count.astype(jnp.float32)
      new = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
    else:
      new = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return new, ScaleByAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def decay_mask(params):
  """True for parameters that get weight decay: not LayerNorm, not biases."""
  def keep(path, _):
    s = _path_str(path)
    return not ('LayerNorm' in s or s.endswith('bias') or s.endswith('output_bias'))
  return jax.tree_util.tree_map_with_path(keep, params)


def layer_depth(path: str, num_layers: int) -> int:
  """Depth used by layer-wise LR decay: embeddings 0, layer i -> i + 1, rest (heads) top."""
  m = re.search(r'layer_(\d+)/', path + '/')
  if m:
    return int(m.group(1)) + 1
  if 'embeddings' in path:  # tables, embedding LayerNorm and embeddings_project
    return 0
  return num_layers + 2


def layerwise_lr_multipliers(params, num_layers: int, decay: float, fixed_top_layer: bool = False):
  """Per-parameter LR multiplier for layer-wise LR decay (a tree like `params`).

  Official (google-research/electra `_get_layer_lrs`): decay^(n_layers + 2 - depth),
  so the head gets 1, the top layer decay^2 (nothing sits at depth n_layers + 1:
  the acknowledged off-by-one) and the embeddings decay^(n_layers + 2). With
  `fixed_top_layer` the encoder and embeddings move up one step: the top layer
  gets decay^1 and the embeddings decay^(n_layers + 1).
  """
  def mult(path, _):
    depth = layer_depth(_path_str(path), num_layers)
    exponent = num_layers + 2 - depth
    if fixed_top_layer and depth <= num_layers:
      exponent -= 1
    return jnp.float32(decay ** exponent)
  return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-parameter scalar."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(init, update)


def make_optimizer(opt_config, num_steps: int, lr_multipliers=None):
  """optax chain for `config.optimizer`; returns (tx, schedule)."""
  o = opt_config
  schedule = learning_rate_schedule(o.learning_rate, num_steps, o.warmup_steps, o.decay_power)
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(scale_by_adam(o.b1, o.b2, o.eps, o.bias_correction))
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
