"""BERT embeddings and the post-LayerNorm transformer encoder.

Parameter names mirror Hugging Face's ELECTRA modules (`embeddings/word_embeddings`,
`encoder/layer_0/attention/self/query`, ...) so conversion is a rename table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax.models import attention
from electra_jax.models import layers


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """Sizes of one transformer stack (generator or discriminator)."""
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  attention_impl: str = 'einsum'
  remat: bool = False
  # GELU, LayerNorm and dropout recomputed in the backward pass instead of kept (layers.py):
  # less memory, some more compute. False: autodiff keeps their intermediates.
  recompute_activations: bool = True
  dtype: str = 'float32'
  matmul_dtype: str = ''  # '' = dtype; else mixed precision (layers.einsum)


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout.

  `tables()` returns the three tables so they can be shared (one array used by
  both towers and by the generator's output layer) or combined (GDES:
  stop_gradient(generator tables) + discriminator deltas initialised to 0).
  """
  vocab_size: int
  embedding_size: int
  max_position_embeddings: int
  type_vocab_size: int
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  dtype: str = 'float32'
  zero_init: bool = False  # GDES deltas start at zero

  def setup(self):
    init = (nn.initializers.zeros if self.zero_init
            else nn.initializers.truncated_normal(self.initializer_range))

    def table(name, rows, axes):
      return self.param(name, nn.with_logical_partitioning(init, axes),
                        (rows, self.embedding_size), jnp.float32)

    self.word_embeddings = table('word_embeddings', self.vocab_size, ('vocab', 'embed'))
    self.position_embeddings = table('position_embeddings', self.max_position_embeddings,
                                     ('position', 'embed'))
    self.token_type_embeddings = table('token_type_embeddings', self.type_vocab_size,
                                       ('token_type', 'embed'))
    self.LayerNorm = layers.layer_norm(self.layer_norm_eps, self.dtype, 'LayerNorm')  # pylint: disable=invalid-name
    self.dropout = layers.Dropout(self.dropout_rate)

  def tables(self) -> dict:
    return {'word_embeddings': self.word_embeddings,
            'position_embeddings': self.position_embeddings,
            'token_type_embeddings': self.token_type_embeddings}

  def __call__(self, input_ids_BxL, segment_ids_BxL, deterministic: bool, tables=None):
    """Returns [B, L, E] embeddings; `tables` overrides this module's own tables."""
    t = self.tables() if tables is None else tables
    length = input_ids_BxL.shape[1]
    if length > self.max_position_embeddings:
      raise ValueError(f'sequence length {length} exceeds max_position_embeddings '
                       f'{self.max_position_embeddings}')
    x = (jnp.take(t['word_embeddings'], input_ids_BxL, axis=0)
         + t['position_embeddings'][None, :length]
         + jnp.take(t['token_type_embeddings'], segment_ids_BxL, axis=0))
    x = self.LayerNorm(x.astype(self.dtype))
    return self.dropout(x, deterministic=deterministic)


class AddNorm(nn.Module):
  """dense -> dropout -> LayerNorm(residual + .); HF's ElectraSelfOutput / ElectraOutput."""
  cfg: TowerConfig
  in_axis: str  # logical axis of the input features: 'qkv' or 'mlp'
  input_activation: Any = None  # applied to x inside the dense layer (layers.dense)

  @nn.compact
  def __call__(self, x, residual, deterministic: bool):
    c = self.cfg
    y = layers.dense(c.hidden_size, (self.in_axis, 'hidden'), c.initializer_range, c.dtype, 'dense',
                     c.matmul_dtype, self.input_activation)(x)
    y = layers.dropout(c.dropout_rate, c.recompute_activations)(y, deterministic=deterministic)
    return layers.layer_norm(c.layer_norm_eps, c.dtype, 'LayerNorm',
                             c.recompute_activations)(y + residual)


class AttentionBlock(nn.Module):
  cfg: TowerConfig

  @nn.compact
  def __call__(self, x_BxLxH, key_mask_BxL, deterministic: bool):
    c = self.cfg
    ctx = attention.SelfAttention(
        c.hidden_size, c.num_heads, c.attention_dropout_rate, c.initializer_range,
        c.attention_impl, c.dtype, c.matmul_dtype, c.recompute_activations,
        name='self')(x_BxLxH, key_mask_BxL, deterministic)
    return AddNorm(c, 'qkv', name='output')(ctx, x_BxLxH, deterministic)


class Intermediate(nn.Module):
  """The intermediate dense layer. With cfg.recompute_activations its GELU is left to the
  output layer, which applies it inside its dense layer so that the backward pass
  recomputes it instead of keeping its output; otherwise it is applied here."""
  cfg: TowerConfig

  @nn.compact
  def __call__(self, x_BxLxH):
    c = self.cfg
    y = layers.dense(c.intermediate_size, ('hidden', 'mlp'), c.initializer_range,
                     c.dtype, 'dense', c.matmul_dtype)(x_BxLxH)
    return y if c.recompute_activations else layers.gelu_kept(y)


class TransformerLayer(nn.Module):
  """One post-LayerNorm BERT layer."""
  cfg: TowerConfig

  @nn.compact
  def __call__(self, x_BxLxH, key_mask_BxL, deterministic: bool):
    h = AttentionBlock(self.cfg, name='attention')(x_BxLxH, key_mask_BxL, deterministic)
    pre_BxLxI = Intermediate(self.cfg, name='intermediate')(h)
    activation = layers.gelu if self.cfg.recompute_activations else None  # else applied already
    return AddNorm(self.cfg, 'mlp', activation, name='output')(pre_BxLxI, h, deterministic)


class Tower(nn.Module):
  """Projection from the embedding size (if it differs) plus the layer stack.

  Returns the final hidden states [B, L, H].
  """
  cfg: TowerConfig

  @nn.compact
  def __call__(self, emb_BxLxE, input_mask_BxL, deterministic: bool):
    c = self.cfg
    h = emb_BxLxE
    if h.shape[-1] != c.hidden_size:
      h = layers.dense(c.hidden_size, ('embed', 'hidden'), c.initializer_range, c.dtype,
                       'embeddings_project', c.matmul_dtype)(h)
    key_mask_BxL = attention.key_padding_mask(input_mask_BxL)
    layer_cls = TransformerLayer
    if c.remat:
      # Recompute activations in the backward pass; arg 3 is `deterministic`.
      layer_cls = nn.remat(TransformerLayer, static_argnums=(3,),
                           policy=jax.checkpoint_policies.nothing_saveable)
    encoder = EncoderStack(c, layer_cls, name='encoder')
    return encoder(h, key_mask_BxL, deterministic)


class EncoderStack(nn.Module):
  cfg: TowerConfig
  layer_cls: type = TransformerLayer

  @nn.compact
  def __call__(self, h_BxLxH, key_mask_BxL, deterministic: bool):
    for i in range(self.cfg.num_layers):
      h_BxLxH = self.layer_cls(self.cfg, name=f'layer_{i}')(h_BxLxH, key_mask_BxL, deterministic)
    return h_BxLxH
