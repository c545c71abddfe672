"""Learning parity: the PyTorch/HF peer trained like an electra_jax run, evaluated the same way.

    python experiments/cpu_scale/peer_parity.py RUN_DIR --out PEER_DIR [--cache_dir DIR]

RUN_DIR is a finished (or running) `electra_jax.main` workdir. The peer
(benchmarks/torch_peer.py: Hugging Face ELECTRA modules, the same masking,
sampling, loss and optimizer) is built from RUN_DIR's config.json, reads the
same training batches in the same order (the project's loader with the same
seed) and is evaluated every `train.eval_every` steps on the same held-out
batches with the same metrics code and the same random draws (the run's
held-out masks and sampling noise). PEER_DIR gets metrics.jsonl and
eval.jsonl in the run's format, so

    python -m electra_jax.plot RUN_DIR PEER_DIR --out parity.png

draws both learning curves on one figure. No checkpointing: rerun from scratch.

--init_from_ours starts the peer from the parameters electra_jax initialises
RUN_DIR's run with; --head_init torch reproduces the peer's first runs, whose
generator head (a bare HF module) kept PyTorch's default init.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'benchmarks'))
sys.path.insert(0, str(REPO))
import torch_peer  # noqa: E402  pylint: disable=g-import-not-at-top
from electra_jax import runlog  # noqa: E402
from electra_jax.io import huggingface  # noqa: E402
from electra_jax.pretrain import build  # noqa: E402
from electra_jax.pretrain import evaluation  # noqa: E402
from electra_jax.pretrain import loop  # noqa: E402
from electra_jax.pretrain import objectives  # noqa: E402


@torch.no_grad()
def peer_eval(peer: torch_peer.TorchPeer, batches, obj_cfg, rng) -> dict:
  """The held-out metrics of evaluation.evaluate, computed from the peer's outputs.

  The random draws are electra_jax's own: batch i is masked, and the peer's generator
  sampled, with the keys `evaluation.evaluate` gives batch i under `rng` (the run's eval
  key), so the peer and an electra_jax run see the same held-out masks and sampling noise
  and their held-out numbers differ only by the models.
  """
  peer.model.eval()
  gen_loss = gen_hits = disc_loss = 0.0
  n_pred = n_tok = n_rows = 0
  probs, labels, cand = [], [], []
  t = lambda a: torch.from_numpy(np.array(a)).long()
  for i, b in enumerate(batches):
    keep = (np.asarray(b['weights']) > 0)[:, None]
    ids_np, seg_np = np.asarray(b['input_ids']), np.asarray(b['segment_ids'])
    mask_np = np.asarray(b['input_mask']) * keep
    k_inputs, _ = objectives.step_keys(jax.random.fold_in(rng, i))  # as Objective.loss
    inputs = objectives.prepare_inputs(
        {'input_ids': jnp.asarray(ids_np), 'input_mask': jnp.asarray(mask_np),
         'segment_ids': jnp.asarray(seg_np)}, k_inputs, obj_cfg)
    m = inputs.masked
    ids, mask, seg = t(ids_np), t(mask_np), t(seg_np)
    pos, targets = t(m.positions), t(m.targets)
    w = torch.from_numpy(np.array(m.weights)).float()
    logits = peer.model.generator_logits(t(m.input_ids), mask, seg, pos).float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction='none')
    gen_loss += float((nll * w).sum())
    gen_hits += float(((logits.argmax(-1) == targets).float() * w).sum())
    n_pred += int(w.sum())
    sampled = objectives.sample_tokens(inputs.sample_keys, jnp.asarray(logits.numpy()),
                                       m.targets, obj_cfg.temperature, obj_cfg.disallow_correct)
    fake = t(objectives.scatter_positions(m.input_ids, m.positions, sampled, m.weights))
    y = (fake != ids).float()
    d = peer.model.discriminator_logits(fake, mask, seg).float()
    sel = mask.bool()
    disc_loss += float(torch.nn.functional.binary_cross_entropy_with_logits(
        d[sel], y[sel], reduction='sum'))
    n_tok += int(sel.sum())
    n_rows += int((mask.sum(-1) > 0).sum())
    probs.append(torch.sigmoid(d[sel]).double().numpy())
    labels.append(y[sel].bool().numpy())
    cand.append(ids_np[evaluation.candidate_mask(ids_np, mask_np, obj_cfg)])
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
  o = peer.config.objective
  out['loss'] = o.gen_weight * out['gen_loss'] + o.disc_weight * out['disc_loss']
  return {'eval_' + k: v for k, v in out.items()}


def peer_name(path) -> str:
  """A Pretrainer parameter path (embeddings sharing) -> the peer's state-dict name."""
  name, _ = huggingface.rename(list(path))
  top = path[0]
  if top in ('embeddings', 'generator'):  # the peer's generator owns the shared embeddings
    return 'generator.' + name.removeprefix('electra.')
  return 'discriminator.' + name if top in ('discriminator', 'discriminator_predictions') else name


def our_init(config) -> dict:
  """The parameters an electra_jax run with `config` starts from (the same seed and key)."""
  init_rng, _ = jax.random.split(jax.random.key(config.seed))  # as loop._train
  return flax.core.meta.unbox(jax.jit(build.init_params_fn(config, build.build_model(config)))(init_rng))


def load_params(peer: torch_peer.TorchPeer, params) -> int:
  """Copies a Pretrainer parameter tree into the peer; returns the number of tensors copied."""
  sd = peer.model.state_dict()
  flat = flax.traverse_util.flatten_dict(params)
  for path, value in flat.items():
    name = peer_name(path)
    value = np.array(value.T if path[-1] == 'kernel' else value)  # a writable copy
    if name not in sd or tuple(sd[name].shape) != value.shape:
      raise ValueError(f'{"/".join(path)} -> {name}: no such peer tensor of shape {value.shape}')
    with torch.no_grad():
      sd[name].copy_(torch.from_numpy(value))
  if len(flat) != len(peer.opt.params):
    raise ValueError(f'copied {len(flat)} tensors; the peer has {len(peer.opt.params)}')
  return len(flat)


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
  p.add_argument('--head_init', default='hf', choices=torch_peer.HEAD_INITS,
                 help="the generator head's init: hf (official) or torch (PyTorch's default, "
                 'the first parity runs)')
  p.add_argument('--init_from_ours', action='store_true',
                 help='start from the parameters electra_jax initialises the run with')
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
  eval_rng = jax.random.fold_in(jax.random.key(config.seed), loop.EVAL_RNG_SALT)  # as the run's
  peer = torch_peer.TorchPeer(config, seed=config.seed, head_init=args.head_init)
  if args.init_from_ours:
    print(f'peer starts from electra_jax\'s initial parameters ({load_params(peer, our_init(config))} tensors)')
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
      m = peer_eval(peer, eval_batches, obj_cfg, eval_rng)
      eval_log.write({'step': step, **m})
      print(f'peer eval step {step}: auc={m["eval_disc_auc"]:.3f} '
            f'gen_acc={m["eval_gen_accuracy"]:.3f}', flush=True)


if __name__ == '__main__':
  main()
