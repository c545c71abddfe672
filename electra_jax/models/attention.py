"""Multi-head self-attention with a padding mask.

Two implementations behind one module, chosen by `impl`:
  einsum  explicit QK^T -> float32 softmax -> dropout -> weighted V. The only
          path with attention-probability dropout (BERT / ELECTRA default).
  xla / cudnn  `jax.nn.dot_product_attention`; `cudnn` is the fused
          flash-attention kernel on NVIDIA GPUs. No attention dropout, so the
          config requires attention_dropout_rate == 0 for these.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax.models import layers

IMPLS = ('einsum', 'xla', 'cudnn')


def key_padding_mask(input_mask):
  """[B, L] {0,1} -> [B, L] bool keys to attend to.

  A row with no real token (a padding row of an eval batch) attends to
  position 0 instead of nothing, so no softmax sees an empty row (which the
  fused kernels turn into NaN); its outputs are masked out downstream.
  """
  mask = input_mask.astype(bool)
  empty = ~jnp.any(mask, axis=-1, keepdims=True)
  first = jnp.arange(mask.shape[-1])[None, :] == 0
  return mask | (empty & first)


class SelfAttention(nn.Module):
  """BERT self-attention; parameter names follow Hugging Face's ElectraSelfAttention."""
  hidden_size: int
  num_heads: int
  dropout_rate: float
  initializer_range: float
  impl: str = 'einsum'
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: str = ''  # '' = dtype; else mixed precision (layers.einsum)
  recompute: bool = True  # the dropped probabilities recomputed in the backward pass

  @nn.compact
  def __call__(self, x_BxLxH, key_mask_BxL, deterministic: bool):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}')
    if self.impl not in IMPLS:
      raise ValueError(f'attention impl {self.impl!r}; expected one of {IMPLS}')
    head_dim = self.hidden_size // self.num_heads
    B, L, _ = x_BxLxH.shape

    def project(name):
      y = layers.dense(self.hidden_size, ('hidden', 'qkv'), self.initializer_range,
                       self.dtype, name, self.matmul_dtype)(x_BxLxH)
      return y.reshape(B, L, self.num_heads, head_dim)  # [B, L, N, D]

    q_BxLxNxD, k_BxLxNxD, v_BxLxNxD = project('query'), project('key'), project('value')

    if self.impl == 'einsum':
      scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
      logits_BxNxLxL = jnp.einsum('bqnd,bknd->bnqk', q_BxLxNxD, k_BxLxNxD,
                                  preferred_element_type=jnp.float32) * scale
      big_neg = jnp.finfo(jnp.float32).min
      logits_BxNxLxL = jnp.where(key_mask_BxL[:, None, None, :], logits_BxNxLxL, big_neg)
      probs_BxNxLxL = jax.nn.softmax(logits_BxNxLxL, axis=-1)
      if self.recompute and 0.0 < self.dropout_rate < 1.0 and not deterministic:
        # nn.Dropout's mask (the same key: the module nn.Dropout would be), recomputed with
        # the dropped probabilities in the backward pass instead of kept (layers.dropout_einsum).
        key = layers.DropoutKey(name='Dropout_0')()
        ctx_BxLxNxD = layers.dropout_einsum('bnqk,bknd->bqnd', probs_BxNxLxL, v_BxLxNxD, key,
                                            self.dropout_rate, self.dtype)
      else:
        probs_BxNxLxL = layers.dropout(self.dropout_rate, self.recompute)(
            probs_BxNxLxL, deterministic=deterministic)
        ctx_BxLxNxD = jnp.einsum('bnqk,bknd->bqnd', probs_BxNxLxL.astype(self.dtype), v_BxLxNxD)
    else:
      if self.dropout_rate > 0 and not deterministic:
        raise ValueError(f'attention impl {self.impl!r} has no attention dropout; '
                         f'set model.attention_dropout_rate=0 (got {self.dropout_rate})')
      ctx_BxLxNxD = jax.nn.dot_product_attention(
          q_BxLxNxD, k_BxLxNxD, v_BxLxNxD,
          mask=key_mask_BxL[:, None, None, :], implementation=self.impl)
    return ctx_BxLxNxD.reshape(B, L, self.hidden_size)
