"""Learning parity: the PyTorch/HF peer trained like an electra_jax run, evaluated the same way.

    python experiments/cpu_scale/peer_parity.py RUN_DIR --out PEER_DIR [--cache_dir DIR]

RUN_DIR is a finished (or running) `electra_jax.main` workdir. The peer
(benchmarks/torch_peer.py: Hugging Face ELECTRA modules, the same masking,
sampling, loss and optimizer) is built from RUN_DIR's config.json, reads the
same training batches in the same order (the project's loader with the same
seed) and is evaluated every `train.eval_every` steps on the same held-out
batches with the same metrics code (held-out masks come from torch's RNG, so
they are other draws of the same law). PEER_DIR gets metrics.jsonl and
eval.jsonl in the run's format, so

    python -m electra_jax.plot RUN_DIR PEER_DIR --out parity.png

draws both learning curves on one figure. No checkpointing: rerun from scratch.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'benchmarks'))
sys.path.insert(0, str(REPO))
import torch_peer  # noqa: E402  pylint: disable=g-import-not-at-top
from electra_jax import runlog  # noqa: E402
from electra_jax.pretrain import evaluation  # noqa: E402
from electra_jax.pretrain import loop  # noqa: E402
from electra_jax.pretrain import objectives  # noqa: E402


@torch.no_grad()
def peer_eval(peer: torch_peer.TorchPeer, batches, obj_cfg) -> dict:
  """The held-out metrics of evaluation.evaluate, computed from the peer's outputs."""
  peer.model.eval()
  o, tokens = peer.config.objective, peer.config.tokens
  ns = argparse.Namespace(**dict(o, vocab_size=peer.config.model.vocab_size))
  gen = torch.Generator().manual_seed(0x5EED)
  gen_loss = gen_hits = disc_loss = 0.0
  n_pred = n_tok = n_rows = 0
  probs, labels, cand = [], [], []
  for b in batches:
    keep = (np.asarray(b['weights']) > 0)[:, None]
    ids = torch.from_numpy(np.asarray(b['input_ids'])).long()
    mask = torch.from_numpy(np.asarray(b['input_mask']) * keep).long()
    seg = torch.from_numpy(np.asarray(b['segment_ids'])).long()
    masked, pos, w, targets = torch_peer.mask_inputs(gen, ids, mask, ns, tokens)
    w = w * (mask.sum(-1, keepdim=True) > 0)
    logits = peer.model.generator_logits(masked, mask, seg, pos).float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction='none')
    gen_loss += float((nll * w).sum())
    gen_hits += float(((logits.argmax(-1) == targets).float() * w).sum())
    n_pred += int(w.sum())
    u = torch.rand(logits.shape, generator=gen).clamp_(1e-20, 1.0)
    sampled = torch.argmax(logits / ns.temperature - torch.log(-torch.log(u)), -1)
    fake = torch_peer.scatter(masked, pos, sampled, w)
    y = (fake != ids).float()
    d = peer.model.discriminator_logits(fake, mask, seg).float()
    sel = mask.bool()
    disc_loss += float(torch.nn.functional.binary_cross_entropy_with_logits(
        d[sel], y[sel], reduction='sum'))
    n_tok += int(sel.sum())
    n_rows += int((mask.sum(-1) > 0).sum())
    probs.append(torch.sigmoid(d[sel]).double().numpy())
    labels.append(y[sel].bool().numpy())
    cand.append(np.asarray(ids)[evaluation.candidate_mask(ids.numpy(), mask.numpy(), obj_cfg)])
  peer.model.train()
  p, y = np.concatenate(probs), np.concatenate(labels)
  pred = p > 0.5
  tp = int((pred & y).sum())
  out = {'gen_loss': gen_loss / n_pred, 'gen_accuracy': gen_hits / n_pred,
         'disc_loss': disc_loss / n_tok, 'disc_accuracy': float((pred == y).mean()),
         'disc_precision': tp / max(int(pred.sum()), 1), 'disc_recall': tp / max(int(y.sum()), 1),
         'disc_auc': evaluation.roc_auc(y, p), 'replaced_fraction': float(y.mean()),
         'examples': n_rows, 'tokens': n_tok, 'predictions': n_pred,
         'baseline_gen_accuracy': evaluation.unigram_accuracy(np.concatenate(cand))}
  out['baseline_disc_accuracy'] = 1 - out['replaced_fraction']
  out['disc_auc_stderr'] = evaluation.auc_stderr(out['disc_auc'], int(y.sum()), int((~y).sum()))
  out['loss'] = o.gen_weight * out['gen_loss'] + o.disc_weight * out['disc_loss']
  return {'eval_' + k: v for k, v in out.items()}


def with_defaults(recorded: dict) -> ml_collections.ConfigDict:
  """A run's config.json over today's defaults for its size: keys added since the run was
  made (whose defaults keep the old behaviour) get their default."""
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  base = pretrain.get_config(f"size={recorded.get('size', 'tiny')}").to_dict()

  def merge(into, new):
    for k, v in new.items():
      into[k] = merge(into[k], v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
    return into
  return ml_collections.ConfigDict(merge(base, recorded))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('run_dir')
  p.add_argument('--out', required=True)
  p.add_argument('--cache_dir', default=None)
  p.add_argument('--threads', type=int, default=0)
  p.add_argument('--steps', type=int, default=0, help='stop after this many steps (0: the run\'s)')
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  config = with_defaults(json.loads((Path(args.run_dir) / 'config.json').read_text()))
  t = config.train
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for f in ('metrics.jsonl', 'eval.jsonl'):
    (out / f).unlink(missing_ok=True)
  (out / 'config.json').write_text(json.dumps(config.to_dict(), indent=1))
  data = loop.load_data(config, args.cache_dir)
  eval_batches = loop._take(data.eval, t.eval_batches)  # pylint: disable=protected-access
  obj_cfg = objectives.ObjectiveConfig.from_config(config)
  peer = torch_peer.TorchPeer(config, seed=config.seed)
  train_log, eval_log = runlog.JsonlWriter(out / 'metrics.jsonl'), runlog.JsonlWriter(out / 'eval.jsonl')
  it, clock = iter(data.train), time.perf_counter()
  last = min(args.steps or t.num_steps, t.num_steps)
  for step in range(1, last + 1):
    batch = next(it)
    loss = peer.step(batch)
    if step % t.log_every == 0 or step == last:
      now = time.perf_counter()
      train_log.write({'step': step, 'loss': loss, 'steps_per_s': t.log_every / (now - clock)})
      clock = now
    if step % t.eval_every == 0 or step == last:
      m = peer_eval(peer, eval_batches, obj_cfg)
      eval_log.write({'step': step, **m})
      print(f'peer eval step {step}: auc={m["eval_disc_auc"]:.3f} '
            f'gen_acc={m["eval_gen_accuracy"]:.3f}', flush=True)


if __name__ == '__main__':
  main()
