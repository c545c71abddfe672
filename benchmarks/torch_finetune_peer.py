r"""The fine-tuning peer: the same task, batches and model size fine-tuned with Hugging Face PyTorch modules.

A plain loop a researcher would write: a randomly initialised
`ElectraForSequenceClassification` (GLUE) or `ElectraForQuestionAnswering` (SQuAD) of
the discriminator's size in `configs/pretrain.py`, AdamW with linear warmup / decay
and global-norm clipping at 1.0, then evaluation under `torch.no_grad()`. The data is
electra_jax's own (the same task readers, WordPiece tokenizer, features and
length-bucketed batches as `electra_jax.finetune`, which import no JAX), so both sides
run the same shapes and the comparison is about the frameworks. It prints one JSON line:
steps, the dev metric, wall times and the process's peak RSS.

    python benchmarks/torch_finetune_peer.py --task mrpc --data-dir GLUE/MRPC \
        --vocab VOCAB.txt --max-train-examples 320 --max-eval-examples 408

This is the reference for host memory in `benchmarks/bench_memory.py`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ElectraConfig
from transformers.models.electra import modeling_electra as hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import pretrain  # noqa: E402  pylint: disable=g-import-not-at-top
from electra_jax.data import tokenizer as tok_lib  # noqa: E402
from electra_jax.finetune.tasks import base as task_base  # noqa: E402
from electra_jax.finetune.tasks import registry  # noqa: E402


def hf_config(size: str, num_labels: int) -> ElectraConfig:
  m = pretrain.get_config(f'size={size}').model
  return ElectraConfig(vocab_size=30522, embedding_size=m.embedding_size,
                       hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                       num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                       max_position_embeddings=m.max_position_embeddings,
                       type_vocab_size=m.type_vocab_size, hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1, layer_norm_eps=m.layer_norm_eps,
                       num_labels=num_labels)


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--task', required=True, help='mrpc | sst2 | squad1 | any GLUE task')
  p.add_argument('--data-dir', required=True)
  p.add_argument('--vocab', required=True, help='vocab.txt (its size sets the model\'s)')
  p.add_argument('--size', default='small', choices=['tiny', 'small', 'base', 'large'])
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--eval-batch', type=int, default=64)
  p.add_argument('--seq-len', type=int, default=0, help='0: 128 (GLUE) / 384 (SQuAD)')
  p.add_argument('--train-split', default='train')
  p.add_argument('--eval-split', default='')
  p.add_argument('--max-train-examples', type=int, default=0)
  p.add_argument('--max-eval-examples', type=int, default=0)
  p.add_argument('--buckets', type=int, default=4, help='length buckets (1: pad to seq-len)')
  p.add_argument('--lr', type=float, default=3e-4)
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args()

  t0 = time.perf_counter()
  torch.manual_seed(a.seed)
  task = registry.get_task(a.task)
  span = task.kind == 'span'
  seq_len = a.seq_len or (384 if span else 128)
  tok = tok_lib.WordPieceTokenizer.from_vocab(a.vocab, lowercase=True)
  source = 'json' if span else 'tsv'

  def features(split, train, cap):
    examples = task.load_examples(source, split, a.data_dir)
    return task.featurize(examples[:cap] if cap else examples, tok, seq_len, train)

  train = features(a.train_split, True, a.max_train_examples)
  dev_split = a.eval_split or task.eval_splits[0]
  dev = features(dev_split, False, a.max_eval_examples)
  buckets = task_base.bucket_lengths(seq_len, a.buckets)

  cfg = hf_config(a.size, 2 if span else task.num_labels)  # QA: start and end logits
  cfg.vocab_size = tok.vocab_size
  model = (hf.ElectraForQuestionAnswering if span else hf.ElectraForSequenceClassification)(cfg)
  decay = [p_ for n, p_ in model.named_parameters() if not ('LayerNorm' in n or n.endswith('bias'))]
  no_decay = [p_ for n, p_ in model.named_parameters() if 'LayerNorm' in n or n.endswith('bias')]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=a.lr, eps=1e-6)
  num_steps = len(train) // a.batch
  warmup = max(1, num_steps // 10)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min((s + 1) / warmup, max(0.0, (num_steps - s) / max(1, num_steps - warmup))))
  label_keys = ('start_positions', 'end_positions') if span else ('label',)
  arrays = {k: train.arrays[k] for k in ('input_ids', 'input_mask', 'segment_ids') + label_keys}

  def inputs(batch):
    return dict(input_ids=torch.from_numpy(batch['input_ids']).long(),
                attention_mask=torch.from_numpy(batch['input_mask']).long(),
                token_type_ids=torch.from_numpy(batch['segment_ids']).long())

  t_train = time.perf_counter()
  model.train()
  losses = []
  for batch in task_base.train_batches(arrays, a.batch, a.seed, 0, buckets=buckets):
    if span:
      labels = dict(start_positions=torch.from_numpy(batch['start_positions']).long(),
                    end_positions=torch.from_numpy(batch['end_positions']).long())
    else:
      labels = dict(labels=torch.from_numpy(batch['label']).long())
    loss = model(**inputs(batch), **labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(float(loss))
  train_s = time.perf_counter() - t_train

  t_eval = time.perf_counter()
  model.eval()
  dev_arrays = {k: dev.arrays[k] for k in ('input_ids', 'input_mask', 'segment_ids')}
  order, batches = task_base.bucketed_eval_batches(dev_arrays, a.eval_batch, buckets)
  chunks = {}
  with torch.no_grad():
    for batch in batches:
      real = batch.pop('weights') > 0
      out = model(**inputs(batch))
      if span:
        for k in ('start_logits', 'end_logits'):
          v = out[k].numpy()[real]
          v = np.pad(v, [(0, 0), (0, seq_len - v.shape[1])], constant_values=-1e4)
          chunks.setdefault(k, []).append(v)
      else:
        chunks.setdefault('logits', []).append(out.logits.numpy()[real])
  outputs = {}
  for k, v in chunks.items():
    cat = np.concatenate(v)
    outputs[k] = np.empty_like(cat)
    outputs[k][order] = cat
  metrics = task.compute_metrics(outputs if span else outputs['logits'], dev)
  eval_s = time.perf_counter() - t_eval
  print(json.dumps(dict(
      task=task.name, size=a.size, batch=a.batch, seq_len=seq_len, buckets=list(buckets),
      train_features=len(train), eval_features=len(dev), steps=len(losses),
      final_loss=losses[-1] if losses else None, dev={k: float(v) for k, v in metrics.items()},
      train_s=round(train_s, 1), eval_s=round(eval_s, 1),
      wall_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(peak_rss_mb()),
      torch_threads=torch.get_num_threads())))


if __name__ == '__main__':
  main()
