"""Parameter-creating building blocks with logical axis names.

Every parameter carries logical axis names (`nn.with_logical_partitioning`),
so data parallelism and FSDP differ only in the axis rules of
`electra_jax.sharding`.
"""

from __future__ import annotations

import contextlib
import functools
import string
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _einsum_spec(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> tuple[str, str, str]:
  """lax.dot_general dimension numbers -> einsum operand / output subscripts."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs, rhs = [''] * lhs_ndim, [''] * rhs_ndim
  for i, j in list(zip(lhs_batch, rhs_batch)) + list(zip(lhs_contract, rhs_contract)):
    lhs[i] = rhs[j] = next(letters)
  lhs = [a or next(letters) for a in lhs]
  rhs = [a or next(letters) for a in rhs]
  out = ([lhs[i] for i in lhs_batch]
         + [a for i, a in enumerate(lhs) if i not in (*lhs_batch, *lhs_contract)]
         + [a for i, a in enumerate(rhs) if i not in (*rhs_batch, *rhs_contract)])
  return ''.join(lhs), ''.join(rhs), ''.join(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_einsum(spec, dtypes, a, b):
  """einsum of (lhs, rhs, out) subscripts with `a`, `b` cast to dtypes[0], float32 result.

  dtypes = (matmul dtype, a's dtype, b's dtype): the last two are the dtypes
  the backward pass returns the gradients in.
  """
  lhs, rhs, out = spec
  return jnp.einsum(f'{lhs},{rhs}->{out}', a.astype(dtypes[0]), b.astype(dtypes[0]),
                    preferred_element_type=jnp.float32)


def _mixed_einsum_fwd(spec, dtypes, a, b):
  a16, b16 = a.astype(dtypes[0]), b.astype(dtypes[0])
  return _mixed_einsum(spec, dtypes, a16, b16), (a16, b16)


def _mixed_einsum_bwd(spec, dtypes, res, g):
  lhs, rhs, out = spec
  a16, b16 = res
  g16 = g.astype(dtypes[0])
  da = jnp.einsum(f'{out},{rhs}->{lhs}', g16, b16, preferred_element_type=jnp.float32)
  db = jnp.einsum(f'{out},{lhs}->{rhs}', g16, a16, preferred_element_type=jnp.float32)
  return da.astype(dtypes[1]), db.astype(dtypes[2])


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def _is_mixed(matmul_dtype) -> bool:
  """True for a matmul dtype that asks for mixed precision: set ('' / None = off) and not float32."""
  return bool(matmul_dtype) and jnp.dtype(matmul_dtype) != jnp.float32


def einsum(subscripts: str, a, b, matmul_dtype=None, preferred_element_type=None):
  """Two-operand matmul einsum; with `matmul_dtype` (e.g. bfloat16) it is mixed precision.

  Mixed precision: both operands are cast to `matmul_dtype`, products are
  accumulated in float32 and the result is float32; the backward pass casts
  the incoming gradient to `matmul_dtype` too, so all three matmuls of a
  layer (forward, input gradient, weight gradient) run on the fast bf16
  units with float32 accumulation, while everything else (LayerNorm,
  softmax, GELU, residuals, the optimizer) stays float32. This is the
  autocast recipe, and on CPUs with AVX512-BF16 (and on GPUs) it runs the
  matmuls ~2x faster than float32: XLA:CPU only uses the bf16 dot-product
  instructions when the dot's output is float32 (benchmarks/README.md).
  Gradients wrt the operands come back in the operands' own dtypes.
  Without `matmul_dtype` ('' or None) this is `jnp.einsum`.
  """
  if not _is_mixed(matmul_dtype):
    return jnp.einsum(subscripts, a, b, preferred_element_type=preferred_element_type)
  operands, out = subscripts.replace(' ', '').split('->')
  lhs, rhs = operands.split(',')
  return _mixed_einsum((lhs, rhs, out), (jnp.dtype(matmul_dtype), a.dtype, b.dtype), a, b)


def mixed_dot_general(matmul_dtype):
  """A `lax.dot_general` replacement (for nn.Dense) that runs as `einsum(..., matmul_dtype)`."""
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type  # float32 accumulation and output
    spec = _einsum_spec(dimension_numbers, lhs.ndim, rhs.ndim)
    return _mixed_einsum(spec, (jnp.dtype(matmul_dtype), lhs.dtype, rhs.dtype), lhs, rhs)
  return dot_general


def dense(features: int, axes: Sequence[str], init_std: float, dtype, name: str,
          matmul_dtype=None) -> nn.Dense:
  """nn.Dense with truncated-normal(init_std) kernel (BERT init) and zero bias.

  With a `matmul_dtype` other than float32 the matmul is mixed precision
  (see `einsum`); the output is float32.
  """
  return nn.Dense(
      features,
      dtype=dtype,
      dot_general=mixed_dot_general(matmul_dtype) if _is_mixed(matmul_dtype) else None,
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
  """BERT's exact (erf) GELU, written as the official ELECTRA / BERT code does.

  0.5 x (1 + erf(x / sqrt 2)); nn.gelu(approximate=False) computes the same
  function through erfc, which XLA:CPU evaluates ~3x slower (exp + branches).
  The two agree within 1e-6 absolute.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


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
