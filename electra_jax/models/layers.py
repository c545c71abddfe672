"""Parameter-creating building blocks with logical axis names.

Every parameter carries logical axis names (`nn.with_logical_partitioning`),
so data parallelism and FSDP differ only in the axis rules of
`electra_jax.sharding`.
"""

from __future__ import annotations

import contextlib
import functools
import string
from typing import Callable, Sequence

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
          matmul_dtype=None, input_activation=None) -> nn.Dense:
  """nn.Dense with truncated-normal(init_std) kernel (BERT init) and zero bias.

  With a `matmul_dtype` other than float32 the matmul is mixed precision
  (see `einsum`); the output is float32. `input_activation` (e.g. `gelu`) is applied to
  the input inside the layer, and recomputed in the backward pass instead of kept
  (`activated_dot_general`): dense(features, input_activation=gelu)(x) is
  dense(features)(gelu(x)) without gelu(x) in memory between the two passes.
  """
  dot_general = mixed_dot_general(matmul_dtype) if _is_mixed(matmul_dtype) else None
  if input_activation is not None:
    dot_general = activated_dot_general(input_activation, dot_general or jax.lax.dot_general)
  return nn.Dense(
      features,
      dtype=dtype,
      dot_general=dot_general,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.truncated_normal(init_std), tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
      name=name)


def after(x, g):
  """x, unchanged, but as a value XLA can only compute once `g` exists.

  x + min(|g[0]|, 0): adding zero is exact (but for -0.0, which becomes +0.0; and a NaN
  in g[0] makes it NaN, where the backward pass's result would be NaN anyway). XLA:CPU
  removes optimization barriers before it merges common expressions and schedules work as
  soon as its inputs exist, so a recomputation in the backward pass that does not depend
  on the incoming gradient is merged into, or run (and kept) during, the forward pass,
  which is what it was meant to avoid (this is why jax.checkpoint / model.remat barely
  changes the step's memory on CPU).
  """
  zero = jnp.minimum(jnp.abs(g.reshape(-1)[0]), 0).astype(x.dtype)
  return x + zero


def recompute_in_backward(fn: Callable) -> Callable:
  """fn whose backward pass recomputes fn from its inputs instead of keeping its
  intermediates (a rematerialisation that works on XLA:CPU, see `after`).

  The inputs are kept; the outputs and gradients are autodiff's (the same operations).
  Non-float inputs (e.g. a PRNG key) pass through untied and get no gradient.
  """
  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def fwd(*args):
    return fn(*args), args

  def bwd(args, g):
    first = jax.tree.leaves(g)[0]
    tied = tuple(after(a, first) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)
    return jax.vjp(fn, *tied)[1](g)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def activated_dot_general(activation: Callable, dot_general: Callable) -> Callable:
  """A dot_general (for nn.Dense) of activation(lhs), recomputed in the backward pass."""
  def activated(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    fn = lambda x, w: dot_general(activation(x), w, dimension_numbers, precision=precision,
                                  preferred_element_type=preferred_element_type)
    return recompute_in_backward(fn)(lhs, rhs)
  return activated


class DropoutKey(nn.Module):
  """The key nn.Dropout draws its mask from, when this module has its name (`Dropout_0`)."""
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self):
    return self.make_rng(self.rng_collection)


def dropout_mask(key, rate: float, shape):
  """nn.Dropout's keep-mask for `key` (the same bits)."""
  return jax.random.bernoulli(key, p=1.0 - rate, shape=shape)


def pack_mask(mask):
  """A bool array -> uint8 [ceil(size / 8)], 8 elements a byte (little-endian bits)."""
  flat = mask.reshape(-1)
  flat = jnp.pad(flat, (0, -flat.size % 8))
  bits = flat.reshape(-1, 8).astype(jnp.uint8) << jnp.arange(8, dtype=jnp.uint8)
  return jnp.sum(bits, axis=-1, dtype=jnp.uint8)  # distinct bits: the sum is their OR


def unpack_mask(packed, shape):
  """pack_mask's inverse: the bool array of `shape`."""
  bits = (packed[:, None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
  size = 1
  for n in shape:
    size *= n
  return bits.reshape(-1)[:size].reshape(shape).astype(bool)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, key, rate: float):
  return jax.lax.select(dropout_mask(key, rate, x.shape), x / (1.0 - rate), jnp.zeros_like(x))


def _dropout_fwd(x, key, rate):
  mask = dropout_mask(key, rate, x.shape)
  y = jax.lax.select(mask, x / (1.0 - rate), jnp.zeros_like(x))
  return y, pack_mask(mask)


def _dropout_bwd(rate, packed, g):
  mask = unpack_mask(packed, g.shape)
  return jax.lax.select(mask, g, jnp.zeros_like(g)) / (1.0 - rate), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Dropout):
  """nn.Dropout (the same key, mask and outputs; the same gradients up to float rounding)
  that keeps its mask for the backward pass as bits, 8 to a byte.

  Autodiff of nn.Dropout keeps the mask's comparison unmaterialised: XLA fuses it into
  both passes, so the random bits it compares (uint32, 4 bytes an element) stay alive
  from the forward to the backward pass; 32x what the mask needs. Same auto-name as
  nn.Dropout (`Dropout_<i>`), so the same keys.
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic or self.broadcast_dims or self.rate == 1.0:
      return super().__call__(inputs, deterministic, rng)
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    return _dropout(inputs, rng, float(self.rate))


def dropout_einsum(subscripts: str, probs, v, key, rate: float, dtype):
  """einsum(subscripts, dropout(probs), v), dropout as nn.Dropout(rate) with `key`, the
  dropped probabilities cast to `dtype`. The backward pass keeps probs, v and the mask as
  packed bits (see `Dropout`) and recomputes the dropped probabilities instead of keeping
  them: one array of the attention scores' size less per layer."""
  return _dropout_einsum(probs, v, key, subscripts, float(rate), jnp.dtype(dtype).name)


def _dropped_einsum(probs, v, mask, subscripts, rate, dtype):
  dropped = jax.lax.select(mask, probs / (1.0 - rate), jnp.zeros_like(probs))
  return jnp.einsum(subscripts, dropped.astype(dtype), v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _dropout_einsum(probs, v, key, subscripts, rate, dtype):
  return _dropped_einsum(probs, v, dropout_mask(key, rate, probs.shape), subscripts, rate, dtype)


def _dropout_einsum_fwd(probs, v, key, subscripts, rate, dtype):
  mask = dropout_mask(key, rate, probs.shape)
  out = _dropped_einsum(probs, v, mask, subscripts, rate, dtype)
  return out, (probs, v, pack_mask(mask))


def _dropout_einsum_bwd(subscripts, rate, dtype, res, g):
  probs, v, packed = res
  mask = unpack_mask(packed, probs.shape)
  fn = lambda p, v: _dropped_einsum(p, v, mask, subscripts, rate, dtype)
  dp, dv = jax.vjp(fn, after(probs, g), after(v, g))[1](g)
  return dp, dv, None


_dropout_einsum.defvjp(_dropout_einsum_fwd, _dropout_einsum_bwd)


def _flax_layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
  """Flax's own LayerNorm, as `layer_norm` was before it recomputed in the backward pass
  (the reference its tests compare with)."""
  return nn.LayerNorm(
      epsilon=eps,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)),
      name=name)


def _layer_norm_stats_dtype(x, dtype):
  return jnp.promote_types(jnp.result_type(x) if dtype is None else jnp.dtype(dtype), jnp.float32)


def _layer_norm_out(x, scale, bias, dtype):
  """The output dtype: flax's canonicalize_dtype(x, scale, bias, dtype=dtype)."""
  return jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, scale, bias)


def _normalize_and_scale(x, scale, eps: float, stats_dtype):
  """(x - mean) * rsqrt(var + eps) * scale over the last axis, nn.LayerNorm's op order
  (fast variance, statistics in stats_dtype); the bias is added by the callers."""
  xs = x.astype(stats_dtype)
  mu, mu2 = xs.mean(-1), jax.lax.square(xs).mean(-1)
  var = jnp.maximum(0.0, mu2 - jax.lax.square(mu))
  y = x - mu[..., None]
  mul = jax.lax.rsqrt(var[..., None] + eps)
  mul = mul * scale
  return y * mul


def _layer_norm_fn(x, scale, bias, eps: float, dtype):
  """nn.LayerNorm's arithmetic over the last axis (its defaults: fast variance, float32
  statistics), op for op: the same outputs as Flax's (bit for bit where XLA fuses both
  alike; within float rounding otherwise)."""
  y = _normalize_and_scale(x, scale, eps, _layer_norm_stats_dtype(x, dtype)) + bias
  return jnp.asarray(y, _layer_norm_out(x, scale, bias, dtype))


def _layer_norm_mirrored(x, scale, bias, eps: float, dtype):
  """_layer_norm_fn computed on -x: every intermediate is the exact negation of the
  original's (rounding is symmetric in sign), so the output (bias - (-y)) and the
  gradients are the same arithmetic, but no expression is shared with the forward pass,
  so XLA cannot merge the backward pass's recomputation into it (see `_layer_norm`)."""
  y = bias - _normalize_and_scale(-x, scale, eps, _layer_norm_stats_dtype(x, dtype))
  return jnp.asarray(y, _layer_norm_out(x, scale, bias, dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, eps: float, dtype):
  """LayerNorm whose backward pass keeps only its input and recomputes the rest.

  Autodiff of Flax's LayerNorm keeps three arrays of the input's size per call (x - mean,
  rsqrt(var + eps) * scale broadcast over the features, and 2x from the variance), 12 MB
  per LayerNorm for ELECTRA-Small at 32 x 128, two LayerNorms a layer. XLA:CPU drops
  jax.checkpoint's optimization barriers before it merges common expressions, so a plain
  recomputation would be merged back into the forward pass; the mirrored form is not."""
  return _layer_norm_fn(x, scale, bias, eps, dtype)


def _layer_norm_fwd(x, scale, bias, eps, dtype):
  return _layer_norm_fn(x, scale, bias, eps, dtype), (x, scale, bias)


def _layer_norm_bwd(eps, dtype, res, g):
  # Tied to g, x and scale too: XLA materialises scale's broadcast to x's shape for its
  # fused kernels, and a shared one would stay alive from the forward pass to this one.
  x, scale, bias = res
  return jax.vjp(lambda x, s, b: _layer_norm_mirrored(x, s, b, eps, dtype),
                 after(x, g), after(scale, g), bias)[1](g)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """nn.LayerNorm over the last axis (the same parameters; the same outputs and gradients
  up to float rounding, tests/test_recompute.py) whose backward pass recomputes from the
  input instead of keeping intermediates (`_layer_norm`)."""
  epsilon: float
  dtype: str | None = None

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
                       features, jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)),
                      features, jnp.float32)
    dtype = None if self.dtype is None else jnp.dtype(self.dtype).name
    return _layer_norm(x, scale, bias, self.epsilon, dtype)


def layer_norm(eps: float, dtype, name: str, recompute: bool = True) -> nn.Module:
  """The LayerNorm to use: `LayerNorm` (recomputed in the backward pass), or with
  recompute=False Flax's own (autodiff keeps its intermediates); the same parameters."""
  if not recompute:
    return _flax_layer_norm(eps, dtype, name)
  return LayerNorm(epsilon=eps, dtype=dtype, name=name)


def dropout(rate: float, recompute: bool = True) -> nn.Dropout:
  """`Dropout` (mask kept as bits), or with recompute=False nn.Dropout itself: the same
  auto-name, key and mask."""
  return Dropout(rate) if recompute else nn.Dropout(rate)


_SQRT_HALF = 0.7071067811865476


def _gelu(x):
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def _gelu_mirrored(x):
  """_gelu through erf's odd symmetry, 1 - erf(-u) for 1 + erf(u): bit for bit the same value
  and derivative (negation is exact, erf(-u) = -erf(u) and erf'(-u) = erf'(u) exactly), but
  not the same expression, so XLA cannot merge it with the forward pass's erf."""
  return 0.5 * x * (1.0 - jax.lax.erf(-(x * jnp.asarray(_SQRT_HALF, x.dtype))))


@jax.custom_vjp
def gelu(x):
  """BERT's exact (erf) GELU, written as the official ELECTRA / BERT code does.

  0.5 x (1 + erf(x / sqrt 2)); nn.gelu(approximate=False) computes the same
  function through erfc, which XLA:CPU evaluates ~3x slower (exp + branches).
  The two agree within 1e-6 absolute.

  The backward pass keeps only x and recomputes erf from it: autodiff would keep
  erf(x / sqrt 2) too, one more array of the intermediate layer's size per layer (16 MB
  per layer for ELECTRA-Small at 32 x 128). The gradient is autodiff's, of
  `_gelu_mirrored` (the same arithmetic).
  """
  return _gelu(x)


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  return jax.vjp(_gelu_mirrored, x)[1](g)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def gelu_kept(x):
  """`gelu`'s function with autodiff's backward pass, which keeps erf(x / sqrt 2) instead of
  recomputing it (model.recompute_activations=False)."""
  return _gelu(x)


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
