"""An export with chosen parts of the discriminator re-drawn at random: which part of a
pre-trained encoder makes fine-tuning slow?

  python experiments/cpu_scale/mix_export.py EXPORT --random embeddings --out MIXED
  python experiments/cpu_scale/mix_export.py EXPORT --random layer_0 layer_1 layer_2 layer_3 --out MIXED
  python experiments/cpu_scale/mix_export.py EXPORT --random layer_3 --out MIXED
  python experiments/cpu_scale/mix_export.py EXPORT --scale_embeddings 0.2 --out SCALED

Each PART names a subtree of the discriminator's params: `embeddings` (word, position and
segment tables and their LayerNorm) or `layer_K` (encoder layer K). Those subtrees are
replaced by the model's own initialisation (seed --seed); the rest is the export's. MIXED is an
export dir (`discriminator.msgpack`, `model_config.json`, `vocab.txt`) that fine-tuning reads
with --config.train.init_from=MIXED. Prints each part's parameter RMS, pre-trained and random.

--scale_embeddings F multiplies the word, position and segment tables by F. The embedding
LayerNorm makes the network's function the same (up to its epsilon): only the scale of the
parameters that fine-tuning's optimizer steps against changes.
"""
import argparse
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from electra_jax.io import checkpoint
from electra_jax.models import electra


def _find(tree: dict, part: str):
  """(parent dict, key) of the subtree named `part`, searched depth-first."""
  for k, v in tree.items():
    if k == part:
      return tree, k
    if isinstance(v, dict):
      hit = _find(v, part)
      if hit:
        return hit
  return None


def rms(tree) -> float:
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  return float(np.sqrt(sum((x ** 2).sum() for x in leaves) / sum(x.size for x in leaves)))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('export')
  p.add_argument('--random', nargs='*', default=[], metavar='PART')
  p.add_argument('--scale_embeddings', type=float, default=1.0)
  p.add_argument('--out', required=True)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  model_cfg, params = checkpoint.load_exported(args.export)
  model = electra.ElectraModel(electra.ModelConfig.from_config(model_cfg['model']))
  ids = np.zeros((1, 8), np.int32)
  init = model.init(jax.random.key(args.seed), ids, np.ones_like(ids), ids)
  init = jax.tree.map(lambda x: np.asarray(getattr(x, 'value', x)), init['params'],
                      is_leaf=lambda x: hasattr(x, 'value'))
  report = {}
  for part in args.random:
    hit, rand = _find(params, part), _find(init, part)
    if not hit or not rand:
      raise SystemExit(f'--random {part!r}: no such part in the discriminator; expected '
                       'embeddings or layer_K')
    (tree, key), (rtree, rkey) = hit, rand
    report[part] = {'pretrained_rms': rms(tree[key]), 'random_rms': rms(rtree[rkey])}
    tree[key] = rtree[rkey]
  emb = params['embeddings']
  for k in ('word_embeddings', 'position_embeddings', 'token_type_embeddings'):
    emb[k] = np.asarray(emb[k]) * np.float32(args.scale_embeddings)
  if args.scale_embeddings != 1.0:
    report['embedding_tables_rms_after_scaling'] = rms(
        {k: emb[k] for k in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')})
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'discriminator.msgpack').write_bytes(serialization.msgpack_serialize(params))
  shutil.copy(Path(args.export) / 'model_config.json', out / 'model_config.json')
  shutil.copy(Path(args.export) / 'vocab.txt', out / 'vocab.txt')
  (out / 'mixed.json').write_text(json.dumps({'from': str(args.export), 'random': args.random,
                                              'scale_embeddings': args.scale_embeddings,
                                              'seed': args.seed, 'rms': report}, indent=1))
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
