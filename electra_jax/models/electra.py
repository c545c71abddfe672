"""ELECTRA's two towers: the generator (a small MLM) and the discriminator.

`Pretrainer` holds both, with the embedding sharing chosen by `sharing`:
  none        each tower has its own embeddings.
  embeddings  (official default) one set of word / position / token-type
              tables and one embedding LayerNorm, used by both towers; the
              generator's output layer is the transposed word table.
  all         the generator *is* the discriminator (equal sizes required).
  gdes        DeBERTa-v3 gradient-disentangled sharing: the discriminator uses
              stop_gradient(generator tables) + its own deltas (init 0), and
              its own embedding LayerNorm.
`ElectraModel` is the discriminator alone (embeddings + tower), what
fine-tuning and export use; `discriminator_params` cuts it out of a
pre-training parameter tree.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax.models import encoder
from electra_jax.models import layers

SHARING_MODES = ('none', 'embeddings', 'all', 'gdes')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Typed view of `config.model` (see configs/pretrain.py for each field)."""
  vocab_size: int
  embedding_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  generator_fraction: float = 0.25
  # The generator's depth as a fraction of num_layers: round(num_layers * generator_layers)
  # layers (the official `generator_layers`).
  generator_layers: float = 1.0
  # Explicit generator sizes (imported checkpoints off the derivation rule); 0 = derived.
  generator_hidden_size: int = 0
  generator_num_heads: int = 0
  generator_intermediate_size: int = 0
  generator_num_layers: int = 0
  sharing: str = 'embeddings'
  dtype: str = 'float32'
  # Matmul operand dtype; '' = dtype. 'bfloat16' with dtype float32 is mixed precision:
  # bf16 matmuls with float32 accumulation, everything else float32 (layers.einsum).
  matmul_dtype: str = ''
  attention_impl: str = 'einsum'
  remat: bool = False
  # GELU, LayerNorm and dropout in the transformer layers recomputed in the backward pass
  # instead of kept: a third less step memory, a few % more compute. Fine-tuning keeps the
  # default; configs/pretrain.py turns it off (encoder.TowerConfig).
  recompute_activations: bool = True
  generator_head: str = 'masked'
  # Optional extra heads for objective ablations (objective_variants.py); off
  # by default so the parameter tree is unchanged.
  discriminator_mlm_head: bool = False  # MLM head on the discriminator (Replace / All-Tokens MLM)
  generator_baseline_head: bool = False  # REINFORCE baseline on the generator (adversarial)

  @classmethod
  def from_config(cls, model_config) -> 'ModelConfig':
    """Builds from an ml_collections ConfigDict (or dict); unknown keys raise."""
    d = dict(model_config)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'unknown model config keys {unknown}; expected a subset of {sorted(names)}')
    cfg = cls(**d)
    cfg.validate()
    return cfg

  def validate(self):
    if self.sharing not in SHARING_MODES:
      raise ValueError(f'model.sharing={self.sharing!r}; expected one of {SHARING_MODES}')
    if self.generator_layers <= 0 or self.generator_num_layers < 0:
      raise ValueError(f'model.generator_layers={self.generator_layers}, generator_num_layers='
                       f'{self.generator_num_layers}; expected a fraction > 0 and a count >= 0')
    if self.sharing == 'all' and self.generator != self.discriminator:
      raise ValueError(
          'model.sharing=all makes the generator the discriminator, so it needs their sizes '
          'equal: model.generator_fraction=1.0 and generator_layers=1.0 with no explicit '
          f'generator sizes (got generator_fraction={self.generator_fraction}, generator_layers='
          f'{self.generator_layers}: generator {_sizes(self.generator)} vs discriminator '
          f'{_sizes(self.discriminator)})')
    if self.dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f'model.dtype={self.dtype!r}; expected float32, bfloat16 or float16')
    if self.matmul_dtype not in ('', 'float32', 'bfloat16', 'float16'):
      raise ValueError(f'model.matmul_dtype={self.matmul_dtype!r}; expected \'\' (= model.dtype), '
                       'float32, bfloat16 or float16')
    if self.matmul_dtype not in ('', self.dtype) and self.dtype != 'float32':
      raise ValueError(f'model.matmul_dtype={self.matmul_dtype!r} with model.dtype={self.dtype!r}: '
                       'mixed precision needs model.dtype=float32 (or leave matmul_dtype empty)')
    if self.generator_head not in ('masked', 'full'):
      raise ValueError(f'model.generator_head={self.generator_head!r}; expected masked or full')
    if self.attention_impl not in ('einsum', 'xla', 'cudnn'):
      raise ValueError(f'model.attention_impl={self.attention_impl!r}; expected einsum, xla or cudnn')
    if self.attention_impl != 'einsum' and self.attention_dropout_rate:
      raise ValueError(f'model.attention_impl={self.attention_impl!r} has no attention dropout; '
                       f'set model.attention_dropout_rate=0 (got {self.attention_dropout_rate})')
    if self.generator.num_layers < 1:
      raise ValueError(f'model.generator_layers={self.generator_layers} gives the generator '
                       f'round({self.num_layers} * {self.generator_layers}) = 0 layers; '
                       'expected at least 1')
    for tower in (self.discriminator, self.generator):
      if tower.hidden_size % tower.num_heads:
        raise ValueError(f'hidden size {tower.hidden_size} is not a multiple of {tower.num_heads} heads')

  def _tower(self, hidden, heads, intermediate, layers=None) -> encoder.TowerConfig:
    return encoder.TowerConfig(
        hidden_size=hidden, num_layers=self.num_layers if layers is None else layers,
        num_heads=heads,
        intermediate_size=intermediate, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, layer_norm_eps=self.layer_norm_eps,
        initializer_range=self.initializer_range, attention_impl=self.attention_impl,
        remat=self.remat, recompute_activations=self.recompute_activations, dtype=self.dtype,
        matmul_dtype=self.matmul_dtype)

  @property
  def discriminator(self) -> encoder.TowerConfig:
    return self._tower(self.hidden_size, self.num_heads, self.intermediate_size)

  @property
  def generator(self) -> encoder.TowerConfig:
    """Official get_generator_config: hidden scaled, FFN 4x, heads max(1, hidden // 64),
    depth round(num_layers * generator_layers); explicit sizes, where set, win."""
    layers = self.generator_num_layers or int(round(self.num_layers * self.generator_layers))
    if self.generator_hidden_size:
      hidden = self.generator_hidden_size
      return self._tower(hidden, self.generator_num_heads or max(1, hidden // 64),
                         self.generator_intermediate_size or 4 * hidden, layers)
    if self.generator_fraction == 1.0:
      return dataclasses.replace(self.discriminator, num_layers=layers)
    hidden = int(round(self.hidden_size * self.generator_fraction))
    return self._tower(hidden, max(1, hidden // 64), 4 * hidden, layers)

  def embeddings(self, name: str, zero_init: bool = False) -> encoder.Embeddings:
    return encoder.Embeddings(
        self.vocab_size, self.embedding_size, self.max_position_embeddings,
        self.type_vocab_size, self.initializer_range, self.layer_norm_eps,
        self.dropout_rate, self.dtype, zero_init, name=name)


def _sizes(tower: encoder.TowerConfig) -> str:
  return (f'(hidden {tower.hidden_size}, layers {tower.num_layers}, heads {tower.num_heads}, '
          f'FFN {tower.intermediate_size})')


class GeneratorHead(nn.Module):
  """dense(E, gelu) -> LayerNorm -> logits over the vocab with the word table.

  Parameters: `dense`, `LayerNorm` and `output_bias` ([V]); the output
  weights are the (shared) word-embedding table, transposed.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h_BxMxH, word_table_VxE):
    c = self.cfg
    x = layers.gelu(layers.dense(c.embedding_size, ('hidden', 'embed'), c.initializer_range,
                                 c.dtype, 'dense', c.matmul_dtype)(h_BxMxH))
    x = layers.layer_norm(c.layer_norm_eps, c.dtype, 'LayerNorm')(x)
    bias_V = self.param('output_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                    ('vocab',)),
                        (c.vocab_size,), jnp.float32)
    logits_BxMxV = layers.einsum('bme,ve->bmv', x, word_table_VxE.astype(x.dtype),
                                 c.matmul_dtype, preferred_element_type=jnp.float32)
    return logits_BxMxV + bias_V


class DiscriminatorHead(nn.Module):
  """dense(H, gelu) -> dense(1): one replaced-token logit per position."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h_BxLxH):
    c = self.cfg
    x = layers.gelu(layers.dense(c.hidden_size, ('hidden', 'mlp'), c.initializer_range, c.dtype,
                                 'dense', c.matmul_dtype)(h_BxLxH))
    logit = layers.dense(1, ('mlp', 'classes'), c.initializer_range, c.dtype,
                         'dense_prediction')(x)
    return logit[..., 0].astype(jnp.float32)  # [B, L]


def gather_positions(x_BxLxD, positions_BxM):
  """x[b, positions[b, m]] -> [B, M, D]."""
  return jnp.take_along_axis(x_BxLxD, positions_BxM[..., None], axis=1)


class Pretrainer(nn.Module):
  """Generator + discriminator with shared embeddings; see the module docstring."""
  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    if c.sharing == 'none':
      self.generator_embeddings = c.embeddings('generator_embeddings')
      self.discriminator_embeddings = c.embeddings('discriminator_embeddings')
    else:
      self.embeddings = c.embeddings('embeddings')
    if c.sharing == 'gdes':
      self.discriminator_embeddings_delta = c.embeddings('discriminator_embeddings_delta',
                                                         zero_init=True)
    self.discriminator = encoder.Tower(c.discriminator, name='discriminator')
    if c.sharing != 'all':
      self.generator = encoder.Tower(c.generator, name='generator')
    self.generator_predictions = GeneratorHead(c, name='generator_predictions')
    self.discriminator_predictions = DiscriminatorHead(c, name='discriminator_predictions')
    if c.discriminator_mlm_head:
      self.discriminator_mlm_predictions = GeneratorHead(c, name='discriminator_mlm_predictions')
    if c.generator_baseline_head:
      self.generator_baseline = layers.dense(1, ('hidden', 'classes'), c.initializer_range,
                                             c.dtype, 'generator_baseline')

  def _generator_embeddings(self):
    return self.generator_embeddings if self.cfg.sharing == 'none' else self.embeddings

  def generator_logits(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL, positions_BxM,
                       deterministic: bool = True):
    """MLM logits [B, M, V] (float32) at `positions`; every position if None."""
    emb_module = self._generator_embeddings()
    emb = emb_module(input_ids_BxL, segment_ids_BxL, deterministic)
    tower = self.discriminator if self.cfg.sharing == 'all' else self.generator
    h_BxLxH = tower(emb, input_mask_BxL, deterministic)
    if positions_BxM is not None:
      h_BxLxH = gather_positions(h_BxLxH, positions_BxM)  # only the masked positions
    return self.generator_predictions(h_BxLxH, emb_module.tables()['word_embeddings'])

  def generator_logits_and_baseline(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                                    positions_BxM, deterministic: bool = True):
    """(MLM logits [B, M, V], REINFORCE baseline [B, M]) at `positions` (all if None).

    Needs `generator_baseline_head`. The baseline reads the generator's hidden
    states under stop-gradient, so the generator tower is trained by the policy
    gradient alone; only the baseline's own dense layer fits the reward.
    """
    emb_module = self._generator_embeddings()
    emb = emb_module(input_ids_BxL, segment_ids_BxL, deterministic)
    tower = self.discriminator if self.cfg.sharing == 'all' else self.generator
    h_BxLxH = tower(emb, input_mask_BxL, deterministic)
    if positions_BxM is not None:
      h_BxLxH = gather_positions(h_BxLxH, positions_BxM)
    logits = self.generator_predictions(h_BxLxH, emb_module.tables()['word_embeddings'])
    baseline = self.generator_baseline(jax.lax.stop_gradient(h_BxLxH))[..., 0]
    return logits, baseline.astype(jnp.float32)

  def _discriminator_word_table(self):
    c = self.cfg
    if c.sharing == 'none':
      return self.discriminator_embeddings.tables()['word_embeddings']
    if c.sharing == 'gdes':
      return (jax.lax.stop_gradient(self.embeddings.tables()['word_embeddings'])
              + self.discriminator_embeddings_delta.tables()['word_embeddings'])
    return self.embeddings.tables()['word_embeddings']

  def discriminator_mlm_logits(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                               positions_BxM, deterministic: bool = True):
    """(MLM logits [B, M, V] at `positions` (or [B, L, V] if None), RTD logits [B, L]).

    Needs `discriminator_mlm_head`: an MLM head (same form as the generator's,
    tied to the discriminator's word table) on the discriminator's hidden
    states, for the Replace MLM and All-Tokens MLM ablations.
    """
    h_BxLxH = self.discriminator_hidden(input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                                        deterministic)
    rtd_BxL = self.discriminator_predictions(h_BxLxH)
    if positions_BxM is not None:
      h_BxLxH = gather_positions(h_BxLxH, positions_BxM)
    return self.discriminator_mlm_predictions(h_BxLxH, self._discriminator_word_table()), rtd_BxL

  def discriminator_hidden(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                           deterministic: bool = True):
    c = self.cfg
    if c.sharing == 'none':
      emb = self.discriminator_embeddings(input_ids_BxL, segment_ids_BxL, deterministic)
    elif c.sharing == 'gdes':
      tables = jax.tree.map(lambda g, d: jax.lax.stop_gradient(g) + d,
                            self.embeddings.tables(),
                            self.discriminator_embeddings_delta.tables())
      emb = self.discriminator_embeddings_delta(input_ids_BxL, segment_ids_BxL, deterministic,
                                                tables=tables)
    else:
      emb = self.embeddings(input_ids_BxL, segment_ids_BxL, deterministic)
    return self.discriminator(emb, input_mask_BxL, deterministic)

  def discriminator_logits(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                           deterministic: bool = True):
    """Replaced-token logits [B, L] (float32)."""
    h = self.discriminator_hidden(input_ids_BxL, input_mask_BxL, segment_ids_BxL, deterministic)
    return self.discriminator_predictions(h)

  def __call__(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL, positions_BxM=None,
               deterministic: bool = True):
    """Runs both towers (used by `init`): (generator logits, discriminator logits)."""
    gen = self.generator_logits(input_ids_BxL, input_mask_BxL, segment_ids_BxL, positions_BxM,
                                deterministic)
    disc = self.discriminator_logits(input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                                     deterministic)
    # Optional heads are called once so that `init` creates their parameters.
    if self.cfg.discriminator_mlm_head:
      self.discriminator_mlm_logits(input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                                    positions_BxM, deterministic)
    if self.cfg.generator_baseline_head:
      self.generator_logits_and_baseline(input_ids_BxL, input_mask_BxL, segment_ids_BxL,
                                         positions_BxM, deterministic)
    return gen, disc


class ElectraModel(nn.Module):
  """The discriminator's encoder alone: [B, L] ids -> [B, L, H] hidden states.

  Parameters: `embeddings` and `discriminator` (the tower), the same subtrees
  as in `Pretrainer`, so `discriminator_params` is a cut, not a conversion.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL, deterministic: bool = True):
    emb = self.cfg.embeddings('embeddings')(input_ids_BxL, segment_ids_BxL, deterministic)
    return encoder.Tower(self.cfg.discriminator, name='discriminator')(
        emb, input_mask_BxL, deterministic)


def discriminator_params(pretrain_params: dict, sharing: str) -> dict:
  """ElectraModel params from Pretrainer params (GDES deltas are folded in)."""
  p = pretrain_params
  if sharing == 'none':
    emb = p['discriminator_embeddings']
  elif sharing == 'gdes':
    delta = p['discriminator_embeddings_delta']
    emb = {k: (v + delta[k] if k.endswith('_embeddings') else delta[k])
           for k, v in p['embeddings'].items()}
  else:
    emb = p['embeddings']
  return {'embeddings': emb, 'discriminator': p['discriminator']}


def generator_params(pretrain_params: dict, sharing: str) -> dict:
  """The generator as a stand-alone MLM: embeddings, tower and head."""
  p = pretrain_params
  emb = p['generator_embeddings'] if sharing == 'none' else p['embeddings']
  tower = p['discriminator'] if sharing == 'all' else p['generator']
  return {'embeddings': emb, 'generator': tower,
          'generator_predictions': p['generator_predictions']}
