"""Device mesh, logical-axis rules and host-local -> global arrays.

The mesh has two axes, `data` and `fsdp`. The batch is split over both. With
fsdp == 1 every parameter is replicated (data parallelism); with fsdp > 1 each
parameter and its optimizer state is split along its first axis with a rule
below (FSDP). Nothing else changes between the two: it is a config change.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')

# Logical parameter axes (see models/layers.py) -> mesh axis. Each mesh axis is
# used at most once per array, so a kernel ('embed', 'hidden') gets `fsdp` on
# its first listed axis that divides. Vocab and position axes stay whole
# (30522 divides by nothing useful).
FSDP_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('hidden', 'fsdp'),
    ('mlp', 'fsdp'),
    ('qkv', 'fsdp'),
)
DP_RULES = (('batch', BATCH_AXES),)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """Mesh of shape (data, fsdp); -1 in one entry takes the remaining devices."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError('mesh: at most one of mesh.data / mesh.fsdp may be -1')
  if data == -1:
    data = n // max(fsdp, 1)
  if fsdp == -1:
    fsdp = n // max(data, 1)
  if data * fsdp != n:
    raise ValueError(f'mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not cover '
                     f'the {n} devices; expected a product of {n}')
  grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, ('data', 'fsdp'))


def logical_rules(mesh: Mesh):
  return FSDP_RULES if mesh.shape['fsdp'] > 1 else DP_RULES


def _divisible_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drops a mesh axis from a dimension it does not divide (falls back to replication)."""
  out = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axis is None:
      out.append(None)
      continue
    axes = axis if isinstance(axis, tuple) else (axis,)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    out.append(axis if dim % size == 0 else None)
  return P(*out)


def shardings_for(abstract_boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of boxed (logically partitioned) abstract arrays.

  Unboxed leaves (step counters, RNG keys) are replicated.
  """
  rules = logical_rules(mesh)
  specs = nn.get_partition_spec(abstract_boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.meta.unbox(abstract_boxed_tree)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _divisible_spec(spec, x.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy arrays (this host's rows) -> global jax.Arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}
