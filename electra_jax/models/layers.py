"""Parameter-creating building blocks with logical axis names.

Every parameter carries logical axis names (`nn.with_logical_partitioning`),
so data parallelism and FSDP differ only in the axis rules of
`electra_jax.sharding`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def dense(features: int, axes: Sequence[str], init_std: float, dtype, name: str) -> nn.Dense:
  """nn.Dense with truncated-normal(init_std) kernel (BERT init) and zero bias."""
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.truncated_normal(init_std), tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
      name=name)


def layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)),
      name=name)


def gelu(x):
  """BERT's exact (erf) GELU, as in the official ELECTRA and Hugging Face code."""
  return nn.gelu(x, approximate=False)


def use_unrolled_threefry_on_cpu(enable: bool = True) -> bool:
  """Lowers threefry2x32 (every jax.random draw) on CPU without the rolled loop.

  JAX lowers the hash on CPU as a 5-iteration `fori_loop` to save compile
  time, so each of the millions of dropout / masking / sampling draws of a
  step round-trips its state through memory five times. The unrolled form
  (the one JAX uses on every other backend) is the same arithmetic, so the
  bits are identical, and XLA fuses it into one vectorised loop: 8x faster on
  a [32, 19, 30522] draw here (see benchmarks/README.md). `enable=False`
  puts JAX's rolled CPU lowering back. Uses a private JAX hook; returns False
  (and changes nothing) if a JAX version no longer has it.

  Process-wide and opt-in; it acts on what is lowered while it is on, so
  prefer `unrolled_threefry_on_cpu()` around the train step's compile only:
  XLA constant-folds the unrolled hash for fixed keys (slow compiles of the
  parameter init) and its cost analysis counts the hash's integer ops as
  FLOPs.
  """
  try:
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32 as tf  # pylint: disable=g-import-not-at-top
    if enable:
      rule = mlir.lower_fun(functools.partial(tf._threefry2x32_lowering, use_rolled_loops=False),  # pylint: disable=protected-access
                            multiple_results=True)
    else:
      rule = tf._threefry2x32_cpu_lowering_rule  # pylint: disable=protected-access
    mlir.register_lowering(tf.threefry2x32_p, rule, platform='cpu')
    return True
  except (ImportError, AttributeError):
    return False


@contextlib.contextmanager
def unrolled_threefry_on_cpu():
  """Within the block, jax.random draws lower unrolled on CPU (see above); JAX's rule after.

      with layers.unrolled_threefry_on_cpu():
        compiled = train_step.lower(state, batch, rng).compile()
  """
  use_unrolled_threefry_on_cpu(True)
  try:
    yield
  finally:
    use_unrolled_threefry_on_cpu(False)
