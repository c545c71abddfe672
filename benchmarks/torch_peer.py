r"""The peer: the same ELECTRA pre-training step built from Hugging Face `transformers` PyTorch modules.

This is what a researcher would otherwise assemble: `ElectraModel` as the
generator's encoder, `ElectraGeneratorPredictions` plus a linear LM head tied
to the word embeddings (applied at the masked positions only, as the official
code and electra_jax do), `ElectraForPreTraining` as the discriminator, one
shared `ElectraEmbeddings` module (word / position / token-type tables and
their LayerNorm) used by both towers. The objective matches
`electra_jax.pretrain.objectives.electra_loss`: dynamic masking of
max(1, min(M, round(0.15 * tokens))) positions drawn without replacement among
non-special tokens, 85% of them [MASK] and 15% kept, Gumbel-max sampling under
no_grad, loss = 1 * MLM cross-entropy + 50 * sigmoid BCE over real tokens, and
the official AdamWeightDecay (no bias correction, weight decay 0.01 except on
LayerNorm and biases, global-norm clipping at 1.0, linear warmup/decay).

    python benchmarks/torch_peer.py --size small --batch 32 --seq-len 128 --steps 5
    python benchmarks/torch_peer.py --size small --autocast bfloat16

The sizes come from electra_jax's own config (configs/pretrain.py), so both
sides build identical architectures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ElectraConfig
from transformers.models.electra import modeling_electra as hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import pretrain  # noqa: E402  pylint: disable=g-import-not-at-top


def hf_configs(config, attn_implementation: str = 'sdpa'):
  """(generator, discriminator) ElectraConfigs from an electra_jax pretrain config."""
  m = config.model
  gen_hidden = int(round(m.hidden_size * m.generator_fraction))
  common = dict(vocab_size=m.vocab_size, embedding_size=m.embedding_size,
                num_hidden_layers=m.num_layers, max_position_embeddings=m.max_position_embeddings,
                type_vocab_size=m.type_vocab_size, hidden_dropout_prob=m.dropout_rate,
                attention_probs_dropout_prob=m.attention_dropout_rate,
                layer_norm_eps=m.layer_norm_eps, initializer_range=m.initializer_range,
                hidden_act='gelu')
  gen = ElectraConfig(hidden_size=gen_hidden, num_attention_heads=max(1, gen_hidden // 64),
                      intermediate_size=4 * gen_hidden,
                      **{**common, 'num_hidden_layers': int(round(m.num_layers * m.generator_layers))})
  disc = ElectraConfig(hidden_size=m.hidden_size, num_attention_heads=m.num_heads,
                       intermediate_size=m.intermediate_size, **common)
  for c in (gen, disc):
    c._attn_implementation = attn_implementation  # pylint: disable=protected-access
  return gen, disc


# How the generator head (dense + LayerNorm, a bare HF module) is initialised: 'hf' as
# Hugging Face's pre-trained models init it (the official init); 'torch' PyTorch's Linear
# default, what this peer did before 2026-12-02 (experiments/cpu_scale's first parity runs).
HEAD_INITS = ('hf', 'torch')


class TorchElectra(torch.nn.Module):
  """Generator + discriminator with shared embeddings (HF modules)."""

  def __init__(self, config, attn_implementation: str = 'sdpa', head_init: str = 'hf'):
    super().__init__()
    if head_init not in HEAD_INITS:
      raise ValueError(f'head_init {head_init!r}; expected one of {HEAD_INITS}')
    gen_cfg, disc_cfg = hf_configs(config, attn_implementation)
    self.generator = hf.ElectraModel(gen_cfg)
    self.generator_predictions = hf.ElectraGeneratorPredictions(gen_cfg)
    if head_init == 'hf':
      # A bare nn.Module gets PyTorch's default init (uniform(+-1/sqrt(fan_in)) weights and
      # biases: std 0.10 at fan-in 32); HF's ElectraForMaskedLM gives its head normal(0.02)
      # weights and zero biases, as the official code and electra_jax do.
      self.generator_predictions.apply(self.generator._init_weights)  # pylint: disable=protected-access
    self.generator_lm_head = torch.nn.Linear(gen_cfg.embedding_size, gen_cfg.vocab_size)
    self.generator_lm_head.weight = self.generator.embeddings.word_embeddings.weight  # tied
    torch.nn.init.zeros_(self.generator_lm_head.bias)
    self.discriminator = hf.ElectraForPreTraining(disc_cfg)
    # Embedding sharing: one module (tables + LayerNorm) for both towers.
    self.discriminator.electra.embeddings = self.generator.embeddings

  def generator_logits(self, input_ids, attention_mask, token_type_ids, positions_BxM):
    h = self.generator(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state  # [B, L, Hg]
    h = torch.gather(h, 1, positions_BxM[..., None].expand(-1, -1, h.shape[-1]))  # [B, M, Hg]
    return self.generator_lm_head(self.generator_predictions(h))  # [B, M, V]

  def discriminator_logits(self, input_ids, attention_mask, token_type_ids):
    return self.discriminator(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits  # [B, L]


def mask_inputs(gen: torch.Generator, input_ids, input_mask, obj, tokens):
  """Same rule as electra_jax.pretrain.objectives.mask_inputs; returns (ids, positions, weights, targets)."""
  B, L = input_ids.shape
  M = min(obj.max_predictions_per_seq, L)
  cand = (input_mask.bool() & (input_ids != tokens.cls_id) & (input_ids != tokens.sep_id)
          & (input_ids != tokens.mask_id) & (input_ids != tokens.pad_id))
  num_tokens = input_mask.sum(-1).float()
  n_pred = torch.clamp(torch.round(num_tokens * obj.mask_prob), 1, M)
  n_pred = torch.minimum(n_pred, cand.sum(-1).float())
  dev = input_ids.device
  scores = torch.where(cand, torch.rand(B, L, generator=gen, device=dev),
                       torch.full((B, L), -1.0, device=dev))
  top, positions = torch.topk(scores, M, dim=-1)
  weights = ((torch.arange(M, device=dev)[None, :] < n_pred[:, None]) & (top >= 0)).float()
  positions = torch.where(weights > 0, positions, torch.zeros_like(positions))
  targets = torch.gather(input_ids, 1, positions)
  u = torch.rand(B, M, generator=gen, device=dev)
  rand_ids = torch.randint(0, obj.vocab_size, (B, M), generator=gen, device=dev)
  new = torch.where(u < obj.mask_token_prob, torch.full_like(targets, tokens.mask_id),
                    torch.where(u < obj.mask_token_prob + obj.random_token_prob, rand_ids, targets))
  masked = scatter(input_ids, positions, new, weights)
  return masked, positions, weights, targets


def scatter(ids, positions, values, weights):
  """ids with ids[b, positions[b, m]] = values[b, m] where weights > 0."""
  B, L = ids.shape
  # Unused slots write to an extra column that is dropped (as mode='drop' in JAX).
  out = torch.cat([ids, torch.zeros_like(ids[:, :1])], 1)
  pos = torch.where(weights > 0, positions, torch.full_like(positions, L))
  return out.scatter_(1, pos, values.to(ids.dtype))[:, :L]


class AdamWeightDecay:
  """The official ELECTRA optimizer with torch._foreach kernels: no bias correction."""

  def __init__(self, named_params, lr_schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
               clip_norm=1.0):
    seen, self.decay, self.no_decay = set(), [], []
    for name, p in named_params:
      if id(p) in seen:  # tied weights appear twice
        continue
      seen.add(id(p))
      (self.no_decay if ('LayerNorm' in name or name.endswith('bias')) else self.decay).append(p)
    self.params = self.decay + self.no_decay
    self.m = [torch.zeros_like(p) for p in self.params]
    self.v = [torch.zeros_like(p) for p in self.params]
    self.b1, self.b2, self.eps, self.wd, self.clip = b1, b2, eps, weight_decay, clip_norm
    self.schedule, self.t = lr_schedule, 0

  @torch.no_grad()
  def step(self):
    grads = [p.grad for p in self.params]
    torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
    torch._foreach_mul_(self.m, self.b1)
    torch._foreach_add_(self.m, grads, alpha=1 - self.b1)
    torch._foreach_mul_(self.v, self.b2)
    torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.b2)
    denom = torch._foreach_sqrt(self.v)
    torch._foreach_add_(denom, self.eps)
    upd = torch._foreach_div(self.m, denom)
    nd = len(self.decay)
    torch._foreach_add_(upd[:nd], self.decay, alpha=self.wd)
    torch._foreach_add_(self.params, upd, alpha=-self.schedule(self.t))
    self.t += 1
    for p in self.params:
      p.grad = None


def linear_schedule(lr, num_steps, warmup):
  def f(t):
    return lr * max(0.0, 1 - t / max(num_steps, 1)) * (min(1.0, t / warmup) if warmup else 1.0)
  return f


class TorchPeer:
  """One ELECTRA training step on numpy batches: `step(batch) -> loss (float)`."""

  def __init__(self, config, autocast: str = 'float32', seed: int = 0,
               attn_implementation: str = 'sdpa', device: str = 'cpu', head_init: str = 'hf'):
    if autocast not in ('float32', 'bfloat16'):
      raise ValueError(f'autocast {autocast!r}; expected float32 or bfloat16')
    torch.manual_seed(seed)
    self.config = config
    self.autocast = autocast
    self.device = torch.device(device)
    self.model = TorchElectra(config, attn_implementation, head_init).to(self.device).train()
    o = config.optimizer
    self.opt = AdamWeightDecay(self.model.named_parameters(),
                               linear_schedule(o.learning_rate, config.train.num_steps,
                                               o.warmup_steps),
                               o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm)
    self.gen = torch.Generator(device=self.device).manual_seed(seed)

  def num_params(self) -> int:
    return sum(p.numel() for p in self.opt.params)

  def loss(self, batch: dict):
    obj, tokens = self.config.objective, self.config.tokens
    ids, mask, seg = (torch.from_numpy(np.asarray(batch[k])).long().to(self.device)
                      for k in ('input_ids', 'input_mask', 'segment_ids'))
    obj_full = dict(obj)
    obj_full['vocab_size'] = self.config.model.vocab_size
    o = argparse.Namespace(**obj_full)
    masked, pos, w, targets = mask_inputs(self.gen, ids, mask, o, tokens)
    with torch.autocast(self.device.type, dtype=torch.bfloat16,
                        enabled=self.autocast == 'bfloat16'):
      gen_logits = self.model.generator_logits(masked, mask, seg, pos).float()  # [B, M, V]
      nll = F.cross_entropy(gen_logits.transpose(1, 2), targets, reduction='none')
      mlm = (nll * w).sum() / (w.sum() + 1e-6)
      with torch.no_grad():  # Gumbel-max sample from softmax(logits / T)
        u = torch.rand(gen_logits.shape, generator=self.gen, device=self.device)
        u = u.clamp_(1e-20, 1.0)
        sampled = torch.argmax(gen_logits / o.temperature - torch.log(-torch.log(u)), -1)
      fake = scatter(masked, pos, sampled, w)
      labels = (fake != ids).float()
      disc_logits = self.model.discriminator_logits(fake, mask, seg).float()
      bce = F.binary_cross_entropy_with_logits(disc_logits, labels, reduction='none')
      disc = (bce * mask).sum() / (mask.sum() + 1e-6)
    return o.gen_weight * mlm + o.disc_weight * disc

  def step(self, batch: dict) -> float:
    loss = self.loss(batch)
    loss.backward()
    self.opt.step()
    return float(loss.detach())


def main():
  p = argparse.ArgumentParser(description='Time the PyTorch/HF ELECTRA peer alone.')
  p.add_argument('--size', default='small')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq-len', type=int, default=128)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--autocast', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--threads', type=int, default=0, help='torch intra-op threads (0: default)')
  p.add_argument('--device', default='cpu', help='cpu | cuda')
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import bench_step  # pylint: disable=g-import-not-at-top
  config = bench_step.make_config(a.size, a.batch, a.seq_len)
  peer = TorchPeer(config, a.autocast, device=a.device)
  batch = bench_step.synthetic_batch(config, seed=0)
  times = []
  for i in range(a.steps + 1):
    t = time.perf_counter()
    loss = peer.step(batch)
    dt = time.perf_counter() - t
    if i:  # the first step warms up
      times.append(dt)
    print(f'step {i}: {dt:.3f} s, loss {loss:.4f}')
  med = statistics.median(times)
  print(f'peer {a.size} {a.batch}x{a.seq_len} {a.autocast}: {med:.3f} s/step, '
        f'{a.batch / med:.2f} seq/s, params {peer.num_params():,}, '
        f'threads {torch.get_num_threads()}')
  if not math.isfinite(loss):
    raise SystemExit(f'non-finite loss {loss}')


if __name__ == '__main__':
  main()
