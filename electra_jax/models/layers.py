"""Parameter-creating building blocks with logical axis names.

Every parameter carries logical axis names (`nn.with_logical_partitioning`),
so data parallelism and FSDP differ only in the axis rules of
`electra_jax.sharding`.
"""

from __future__ import annotations

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
