"""Fine-tuning heads on the ELECTRA discriminator, and their losses.

`FinetuneModel` = the discriminator encoder (the same `embeddings` and
`discriminator` parameter subtrees as `ElectraModel` and `Pretrainer`, so a
pre-trained encoder drops in by path) plus one task head:

  classification  dropout(0.1) on the [CLS] vector, then dense(num_labels)
                  (no pooler, as the official ELECTRA code).  -> logits [B, C]
                  With form='hf', Hugging Face's ElectraClassificationHead instead:
                  dropout, dense(H), GELU, dropout, dense(num_labels) (`dense`,
                  `out_proj`), so that an export to ElectraForSequenceClassification
                  is exact.
  regression      the same with one output (STS-B).          -> predictions [B]
  span            SQuAD: dense(2) per token gives independent start / end
                  logits [B, L] (padding masked); with `answerability` (2.0) a
                  classifier on [CLS] gives answerable_logits [B], trained
                  with target is_impossible (higher = less answerable). The
                  official code's XLNet-style joint start/end beam search is
                  not implemented: start and end are scored independently, as
                  in BERT.
  tagging         dropout, then dense(num_labels) on every token (chunking).
                                                             -> logits [B, L, T]

Head module names (`classifier`, `qa_outputs`, `answerable_classifier`,
`tagger`) contain neither `embeddings` nor `layer_<i>/`, so layer-wise LR decay
(electra_jax.optim.layer_depth) puts them at the top depth.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from electra_jax.models import electra
from electra_jax.models import encoder
from electra_jax.models import layers

KINDS = ('classification', 'regression', 'span', 'tagging')
# Classification / regression head forms: the official one dense layer on [CLS], or
# Hugging Face's dense -> GELU -> dropout -> dense (ElectraClassificationHead).
HEAD_FORMS = ('official', 'hf')

# Added to masked-out span logits. Finite (not -inf) so softmax stays NaN-free
# even for an all-masked row, and small enough for bfloat16.
MASK_LOGIT = -1e4

# Batch keys each head's loss reads (besides input_ids / input_mask / segment_ids
# and `weights`). Tagging: one label per token and a 0/1 mask of the scored
# tokens (first sub-token of each word), as CoNLL taggers do.
LABEL_KEYS = {
    'classification': ('label',),
    'regression': ('label',),
    'span': ('start_positions', 'end_positions', 'is_impossible'),
    'tagging': ('labels', 'label_weights'),
}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """What the task head needs: its kind, output size and dropout."""
  kind: str
  num_labels: int = 2
  dropout_rate: float = 0.1
  answerability: bool = False  # SQuAD 2.0 answerability classifier
  form: str = 'official'  # classification / regression: one of HEAD_FORMS

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'head kind {self.kind!r}; expected one of {KINDS}')
    if self.form not in HEAD_FORMS:
      raise ValueError(f'head form {self.form!r}; expected one of {HEAD_FORMS}')
    if self.kind in ('classification', 'tagging') and self.num_labels < 2:
      raise ValueError(f'{self.kind} head needs num_labels >= 2, got {self.num_labels}')


class ClassificationHead(nn.Module):
  """[B, L, H] -> logits [B, C] from the [CLS] (position 0) vector."""
  num_labels: int
  dropout_rate: float
  initializer_range: float
  dtype: str
  form: str = 'official'

  @nn.compact
  def __call__(self, h_BxLxH, deterministic: bool):
    cls_BxH = h_BxLxH[:, 0]
    cls_BxH = nn.Dropout(self.dropout_rate)(cls_BxH, deterministic=deterministic)
    if self.form == 'hf':  # transformers' ElectraClassificationHead
      x_BxH = layers.gelu(layers.dense(h_BxLxH.shape[-1], ('hidden', 'mlp'),
                                       self.initializer_range, self.dtype, 'dense')(cls_BxH))
      x_BxH = nn.Dropout(self.dropout_rate)(x_BxH, deterministic=deterministic)
      logits_BxC = layers.dense(self.num_labels, ('mlp', 'classes'), self.initializer_range,
                                self.dtype, 'out_proj')(x_BxH)
      return logits_BxC.astype(jnp.float32)
    logits_BxC = layers.dense(self.num_labels, ('hidden', 'classes'), self.initializer_range,
                              self.dtype, 'dense')(cls_BxH)
    return logits_BxC.astype(jnp.float32)


class SpanHead(nn.Module):
  """[B, L, H] -> (start_logits [B, L], end_logits [B, L]); padding gets MASK_LOGIT."""
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, input_mask_BxL):
    logits_BxLx2 = layers.dense(2, ('hidden', 'classes'), self.initializer_range, self.dtype,
                                'dense')(h_BxLxH).astype(jnp.float32)
    valid_BxL = input_mask_BxL.astype(bool)
    start_BxL = jnp.where(valid_BxL, logits_BxLx2[..., 0], MASK_LOGIT)
    end_BxL = jnp.where(valid_BxL, logits_BxLx2[..., 1], MASK_LOGIT)
    return start_BxL, end_BxL


class AnswerabilityHead(nn.Module):
  """[CLS] -> dense(H, gelu) -> dropout -> dense(1): logit [B] that the question is unanswerable."""
  dropout_rate: float
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, deterministic: bool):
    cls_BxH = h_BxLxH[:, 0]
    x = layers.gelu(layers.dense(h_BxLxH.shape[-1], ('hidden', 'mlp'), self.initializer_range,
                                 self.dtype, 'dense')(cls_BxH))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    logit_Bx1 = layers.dense(1, ('mlp', 'classes'), self.initializer_range, self.dtype,
                             'dense_output')(x)
    return logit_Bx1[:, 0].astype(jnp.float32)


class TaggingHead(nn.Module):
  """[B, L, H] -> logits [B, L, T] for every token."""
  num_labels: int
  dropout_rate: float
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, deterministic: bool):
    x = nn.Dropout(self.dropout_rate)(h_BxLxH, deterministic=deterministic)
    logits_BxLxT = layers.dense(self.num_labels, ('hidden', 'classes'), self.initializer_range,
                                self.dtype, 'dense')(x)
    return logits_BxLxT.astype(jnp.float32)


class FinetuneModel(nn.Module):
  """Encoder + head. Parameters: `embeddings`, `discriminator` (as in ElectraModel) and
  the head (`classifier` | `qa_outputs` [+ `answerable_classifier`] | `tagger`).

  __call__(input_ids [B, L], input_mask [B, L], segment_ids [B, L], deterministic)
  returns a dict of float32 outputs (see the module docstring for the keys).
  """
  cfg: electra.ModelConfig
  head: HeadConfig

  @nn.compact
  def __call__(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL, deterministic: bool = True):
    c, hc = self.cfg, self.head
    # The two submodules of ElectraModel, at the top level so their parameter
    # paths match a discriminator cut from a pre-training checkpoint.
    emb = c.embeddings('embeddings')(input_ids_BxL, segment_ids_BxL, deterministic)
    h_BxLxH = encoder.Tower(c.discriminator, name='discriminator')(emb, input_mask_BxL,
                                                                   deterministic)
    init, dtype = c.initializer_range, c.dtype
    if hc.kind == 'classification':
      return {'logits': ClassificationHead(hc.num_labels, hc.dropout_rate, init, dtype, hc.form,
                                           name='classifier')(h_BxLxH, deterministic)}
    if hc.kind == 'regression':
      out = ClassificationHead(1, hc.dropout_rate, init, dtype, hc.form, name='classifier')(
          h_BxLxH, deterministic)
      return {'predictions': out[:, 0]}
    if hc.kind == 'span':
      start, end = SpanHead(init, dtype, name='qa_outputs')(h_BxLxH, input_mask_BxL)
      out = {'start_logits': start, 'end_logits': end}
      if hc.answerability:
        out['answerable_logits'] = AnswerabilityHead(hc.dropout_rate, init, dtype,
                                                     name='answerable_classifier')(
                                                         h_BxLxH, deterministic)
      return out
    return {'logits': TaggingHead(hc.num_labels, hc.dropout_rate, init, dtype,
                                  name='tagger')(h_BxLxH, deterministic)}


# --------------------------------------------------------------------------- losses


def _weighted_mean(x_B, w_B):
  return jnp.sum(x_B * w_B) / jnp.maximum(jnp.sum(w_B), 1e-6)


def loss_and_metrics(head: HeadConfig, outputs: dict, batch: dict):
  """Scalar float32 loss and a dict of scalar metrics for one batch.

  batch['weights'] [B] (1 real row, 0 padding) weights every example; the
  label keys per kind are LABEL_KEYS[head.kind].
  """
  w_B = batch['weights'].astype(jnp.float32)
  if head.kind == 'classification':
    logits_BxC = outputs['logits']
    labels_B = batch['label']
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    loss = _weighted_mean(xent_B, w_B)
    acc = _weighted_mean((jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32), w_B)
    return loss, {'loss': loss, 'accuracy': acc}
  if head.kind == 'regression':
    err_B = outputs['predictions'] - batch['label'].astype(jnp.float32)
    loss = _weighted_mean(jnp.square(err_B), w_B)
    return loss, {'loss': loss}
  if head.kind == 'span':
    start_xent_B = optax.softmax_cross_entropy_with_integer_labels(
        outputs['start_logits'], batch['start_positions'])
    end_xent_B = optax.softmax_cross_entropy_with_integer_labels(
        outputs['end_logits'], batch['end_positions'])
    span_loss = _weighted_mean(0.5 * (start_xent_B + end_xent_B), w_B)
    metrics = {'span_loss': span_loss}
    loss = span_loss
    if head.answerability:
      target_B = batch['is_impossible'].astype(jnp.float32)
      ans_B = optax.sigmoid_binary_cross_entropy(outputs['answerable_logits'], target_B)
      ans_loss = _weighted_mean(ans_B, w_B)
      metrics['answerable_loss'] = ans_loss
      loss = loss + ans_loss
    metrics['loss'] = loss
    return loss, metrics
  # tagging: mean over the scored tokens of the real rows.
  logits_BxLxT = outputs['logits']
  tok_w_BxL = batch['label_weights'].astype(jnp.float32) * w_B[:, None]
  xent_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxT, batch['labels'])
  denom = jnp.maximum(jnp.sum(tok_w_BxL), 1e-6)
  loss = jnp.sum(xent_BxL * tok_w_BxL) / denom
  acc = jnp.sum((jnp.argmax(logits_BxLxT, -1) == batch['labels']) * tok_w_BxL) / denom
  return loss, {'loss': loss, 'token_accuracy': acc}


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
