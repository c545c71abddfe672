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
  span            SQuAD, as the official qa_tasks.py. Logits are masked to the
                  positions an answer can take: [CLS] (the null answer) and the
                  context (segment 1); every other position gets MASK_LOGIT.
                  joint=False: dense(2) per token gives independent start / end
                  logits [B, L] (BERT's; exports to ElectraForQuestionAnswering).
                  joint=True (the official default, XLNet-style): start logits
                  from dense(1); end logits from dense(1) on GELU(dense(512) on
                  [start token's vector, each token's vector]), i.e. conditioned
                  on the start. Training feeds the gold start (`start_positions`)
                  and gives start_logits / end_logits [B, L]; prediction keeps the
                  beam_size most likely starts and, for each, the beam_size most
                  likely ends: start_top_log_probs / start_top_index [B, K],
                  end_top_log_probs / end_top_index [B, K, K] (log-probabilities,
                  K = beam_size; index >= L past a short row's end), and
                  null_log_prob [B] = log p(start=[CLS]) + log p(end=[CLS] | start
                  =[CLS]), the null answer's score without a classifier.
                  With `answerability` (2.0) the official answerability classifier
                  (answerable_uses_start_logits): dense(512, GELU) on [the [CLS]
                  vector, the start-probability-weighted mean of the token vectors]
                  then dense(1) -> answerable_logits [B], trained with target
                  is_impossible (higher = less answerable), its loss weighted by
                  answerable_weight (0.5).
  tagging         dropout, then dense(num_labels) on every token (chunking).
                                                             -> logits [B, L, T]

Head module names (`classifier`, `qa_outputs` | `qa_joint`, `answerable_classifier`,
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
# Width of the joint head's end layer and of the answerability classifier (the official
# code's fixed 512, whatever the model size).
QA_HIDDEN = 512
# Joint head beams past the end of a row shorter than beam_size: below every real position.
_PAST_END = 2 * MASK_LOGIT

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
  # span: the official XLNet-style joint start/end head and its beam (False: independent
  # start / end, BERT's); the answerability loss's weight (official answerable_weight).
  joint: bool = False
  beam_size: int = 20
  answerable_weight: float = 0.5

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'head kind {self.kind!r}; expected one of {KINDS}')
    if self.beam_size < 1:
      raise ValueError(f'head beam_size={self.beam_size}; expected >= 1')
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
    cls_BxH = layers.Dropout(self.dropout_rate)(cls_BxH, deterministic=deterministic)
    if self.form == 'hf':  # transformers' ElectraClassificationHead
      x_BxH = layers.gelu(layers.dense(h_BxLxH.shape[-1], ('hidden', 'mlp'),
                                       self.initializer_range, self.dtype, 'dense')(cls_BxH))
      x_BxH = layers.Dropout(self.dropout_rate)(x_BxH, deterministic=deterministic)
      logits_BxC = layers.dense(self.num_labels, ('mlp', 'classes'), self.initializer_range,
                                self.dtype, 'out_proj')(x_BxH)
      return logits_BxC.astype(jnp.float32)
    logits_BxC = layers.dense(self.num_labels, ('hidden', 'classes'), self.initializer_range,
                              self.dtype, 'dense')(cls_BxH)
    return logits_BxC.astype(jnp.float32)


def answer_mask(input_mask_BxL, segment_ids_BxL):
  """[B, L] bool: where a span may start or end, as the official qa_tasks.py: the context
  (segment 1 of the real tokens) and position 0, [CLS] (the null answer)."""
  mask_BxL = jnp.asarray(input_mask_BxL).astype(bool) & (jnp.asarray(segment_ids_BxL) == 1)
  return mask_BxL.at[:, 0].set(True)


class SpanHead(nn.Module):
  """[B, L, H] -> (start_logits [B, L], end_logits [B, L]), independent (BERT's); positions
  outside answer_mask get MASK_LOGIT."""
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, answer_mask_BxL):
    logits_BxLx2 = layers.dense(2, ('hidden', 'classes'), self.initializer_range, self.dtype,
                                'dense')(h_BxLxH).astype(jnp.float32)
    start_BxL = jnp.where(answer_mask_BxL, logits_BxLx2[..., 0], MASK_LOGIT)
    end_BxL = jnp.where(answer_mask_BxL, logits_BxLx2[..., 1], MASK_LOGIT)
    return start_BxL, end_BxL


class _DenseParams(nn.Module):
  """A dense layer's kernel [in, out] and bias [out], initialised as layers.dense does, for
  a head that applies the layer in pieces."""
  features: int
  axes: tuple[str, str]
  init_std: float

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.truncated_normal(self.init_std), self.axes),
                        (in_features, self.features), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (self.axes[-1],)),
                      (self.features,), jnp.float32)
    return kernel, bias


def _top_k(logp_XxL, k: int):
  """lax.top_k over the last axis; a row shorter than k is first padded with _PAST_END
  (those picks' indices are >= L: no position of the row)."""
  length = logp_XxL.shape[-1]
  if length < k:
    pad = [(0, 0)] * (logp_XxL.ndim - 1) + [(0, k - length)]
    logp_XxL = jnp.pad(logp_XxL, pad, constant_values=_PAST_END)
  values, index = jax.lax.top_k(logp_XxL, k)
  return values, index.astype(jnp.int32)


class JointSpanHead(nn.Module):
  """The official XLNet-style joint start/end head (module docstring, `span`).

  Parameters: `start_logits` (dense H -> 1), `qa_hidden` (dense 2H -> 512 on [start
  vector, token vector], GELU), `qa_logits` (dense 512 -> 1). qa_hidden is applied as
  start part + token part, so prediction never builds [B, K, L, 2H].
  """
  beam_size: int
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, answer_mask_BxL, start_positions_B=None):
    _, length, hidden = h_BxLxH.shape
    dtype, init = self.dtype, self.initializer_range
    start_BxL = layers.dense(1, ('hidden', 'classes'), init, dtype, 'start_logits')(
        h_BxLxH)[..., 0].astype(jnp.float32)
    start_BxL = jnp.where(answer_mask_BxL, start_BxL, MASK_LOGIT)
    hid_kernel, hid_bias = _DenseParams(QA_HIDDEN, ('hidden', 'mlp'), init, name='qa_hidden')(
        2 * hidden)
    out_kernel, out_bias = _DenseParams(1, ('mlp', 'classes'), init, name='qa_logits')(QA_HIDDEN)
    h_BxLxH = h_BxLxH.astype(dtype)
    token_part_BxLxD = h_BxLxH @ hid_kernel[hidden:].astype(dtype)

    def end_logits(starts_BxK):
      """[B, K, L] end logits given each row's K start positions (clipped to the row)."""
      index_BxKx1 = jnp.minimum(starts_BxK, length - 1)[..., None]
      start_vec_BxKxH = jnp.take_along_axis(h_BxLxH, index_BxKx1, axis=1)
      start_part_BxKxD = (start_vec_BxKxH @ hid_kernel[:hidden].astype(dtype)
                          + hid_bias.astype(dtype))
      x_BxKxLxD = layers.gelu(start_part_BxKxD[:, :, None, :] + token_part_BxLxD[:, None])
      logits_BxKxL = (x_BxKxLxD @ out_kernel.astype(dtype))[..., 0].astype(jnp.float32)
      logits_BxKxL = logits_BxKxL + out_bias[0]
      return jnp.where(answer_mask_BxL[:, None, :], logits_BxKxL, MASK_LOGIT)

    if start_positions_B is not None:  # training: conditioned on the gold start
      return {'start_logits': start_BxL,
              'end_logits': end_logits(start_positions_B[:, None].astype(jnp.int32))[:, 0]}
    start_logp_BxL = jax.nn.log_softmax(start_BxL)
    start_top_logp_BxK, start_top_index_BxK = _top_k(start_logp_BxL, self.beam_size)
    # One more beam, start = [CLS], for the null answer's score.
    starts_BxK1 = jnp.concatenate(
        [start_top_index_BxK, jnp.zeros_like(start_top_index_BxK[:, :1])], axis=1)
    end_logp_BxK1xL = jax.nn.log_softmax(end_logits(starts_BxK1))
    end_top_logp_BxKxK, end_top_index_BxKxK = _top_k(end_logp_BxK1xL[:, :-1], self.beam_size)
    return {'start_logits': start_BxL,
            'start_top_log_probs': start_top_logp_BxK,
            'start_top_index': start_top_index_BxK,
            'end_top_log_probs': end_top_logp_BxKxK,
            'end_top_index': end_top_index_BxKxK,
            'null_log_prob': start_logp_BxL[:, 0] + end_logp_BxK1xL[:, -1, 0]}


class AnswerabilityHead(nn.Module):
  """The official answerability classifier (answerable_uses_start_logits): dense(512, GELU)
  on [the [CLS] vector, sum_i softmax(start_logits)_i h_i], then dense(1): logit [B] that
  the question is unanswerable."""
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, start_logits_BxL):
    start_p_BxL = jax.nn.softmax(start_logits_BxL).astype(h_BxLxH.dtype)
    start_vec_BxH = jnp.einsum('bl,blh->bh', start_p_BxL, h_BxLxH)
    x_Bx2H = jnp.concatenate([h_BxLxH[:, 0], start_vec_BxH], axis=-1)
    x_BxD = layers.gelu(layers.dense(QA_HIDDEN, ('hidden', 'mlp'), self.initializer_range,
                                     self.dtype, 'dense')(x_Bx2H))
    logit_Bx1 = layers.dense(1, ('mlp', 'classes'), self.initializer_range, self.dtype,
                             'dense_output')(x_BxD)
    return logit_Bx1[:, 0].astype(jnp.float32)


class TaggingHead(nn.Module):
  """[B, L, H] -> logits [B, L, T] for every token."""
  num_labels: int
  dropout_rate: float
  initializer_range: float
  dtype: str

  @nn.compact
  def __call__(self, h_BxLxH, deterministic: bool):
    x = layers.Dropout(self.dropout_rate)(h_BxLxH, deterministic=deterministic)
    logits_BxLxT = layers.dense(self.num_labels, ('hidden', 'classes'), self.initializer_range,
                                self.dtype, 'dense')(x)
    return logits_BxLxT.astype(jnp.float32)


class FinetuneModel(nn.Module):
  """Encoder + head. Parameters: `embeddings`, `discriminator` (as in ElectraModel) and
  the head (`classifier` | `qa_outputs` or `qa_joint` [+ `answerable_classifier`] |
  `tagger`).

  __call__(input_ids [B, L], input_mask [B, L], segment_ids [B, L], deterministic,
  start_positions [B] or None) returns a dict of outputs (see the module docstring for
  the keys; float32 but the joint head's int32 indices). start_positions: the joint
  span head's gold starts in training (required there; train_step passes them); None
  gives its beam outputs. Other heads ignore it.
  """
  cfg: electra.ModelConfig
  head: HeadConfig

  @nn.compact
  def __call__(self, input_ids_BxL, input_mask_BxL, segment_ids_BxL, deterministic: bool = True,
               start_positions_B=None):
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
      mask_BxL = answer_mask(input_mask_BxL, segment_ids_BxL)
      if hc.joint:
        out = JointSpanHead(hc.beam_size, init, dtype, name='qa_joint')(h_BxLxH, mask_BxL,
                                                                         start_positions_B)
      else:
        start, end = SpanHead(init, dtype, name='qa_outputs')(h_BxLxH, mask_BxL)
        out = {'start_logits': start, 'end_logits': end}
      if hc.answerability:
        out['answerable_logits'] = AnswerabilityHead(init, dtype, name='answerable_classifier')(
            h_BxLxH, out['start_logits'])
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
      loss = loss + head.answerable_weight * ans_loss
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
