"""Original TF1 ELECTRA checkpoints (google-research/electra) -> electra_jax trees.

Variable layout of the official code (model/modeling.py, run_pretraining.py):

  electra/embeddings/{word,position,token_type}_embeddings, .../LayerNorm/{gamma,beta}
      shared by both towers by default; `generator/embeddings/...` when the
      generator's embeddings are untied (-> sharing='none')
  {electra,generator}/embeddings_project/{kernel,bias}      (embedding != hidden)
  {electra,generator}/encoder/layer_<i>/attention/self/{query,key,value}/{kernel,bias}
      .../attention/output/dense, .../attention/output/LayerNorm,
      .../intermediate/dense, .../output/dense, .../output/LayerNorm
      no `generator/` tower when the generator *is* the discriminator (-> 'all')
  generator_predictions/{dense/{kernel,bias}, LayerNorm/{gamma,beta}, output_bias}
  discriminator_predictions/{dense,dense_1}/{kernel,bias}

Kernels are [in, out] as in Flax. Optimizer slots (`*/adam_m`, `*/adam_v`)
and `global_step` are skipped without being read. TF1 checkpoints carry no
config: sizes come from the variable shapes; the head count is not visible
in any shape, so it defaults to the official rule hidden // 64 (4 / 12 / 16
for Small / Base / Large) unless given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from electra_jax.io import common

_SLOT = re.compile(r'(/adam_[mv]$)|(^global_step$)')
_TOP = {'embeddings': 'electra/embeddings', 'discriminator_embeddings': 'electra/embeddings',
        'generator_embeddings': 'generator/embeddings', 'discriminator': 'electra',
        'generator': 'generator', 'discriminator_predictions': 'discriminator_predictions',
        'generator_predictions': 'generator_predictions'}


def rename(path) -> tuple:
  """A Pretrainer (or single-tower discriminator / model) path -> (TF1 name, transposed?)."""
  top, *rest = path
  if top not in _TOP:
    raise ValueError(f'no TF1 ELECTRA name for parameter {"/".join(path)}')
  parts = [_TOP[top]]
  for i, c in enumerate(rest):
    last = i == len(rest) - 1
    if last and c == 'scale':
      c = 'gamma'
    elif last and c == 'bias' and rest[i - 1] == 'LayerNorm':
      c = 'beta'
    elif c == 'dense_prediction':
      c = 'dense_1'  # the second unnamed tf.layers.dense in the scope
    parts.append(c)
  return '/'.join(parts), False


def _load(path: str | os.PathLike):
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('reading TF1 checkpoints needs tensorflow '
                      '(pip install tensorflow-cpu)') from e
  p = Path(path)
  prefix = str(p)
  if p.is_dir():
    prefix = tf.train.latest_checkpoint(str(p))
    if prefix is None:
      raise FileNotFoundError(f'{p}: no TF checkpoint (no `checkpoint` index file); pass the '
                              'checkpoint prefix, e.g. DIR/model.ckpt-1000000')
  elif not Path(prefix + '.index').is_file():
    raise FileNotFoundError(f'{prefix}.index not found; expected a TF checkpoint prefix or dir')
  return tf.train.load_checkpoint(prefix), prefix


def _count_layers(shapes, scope: str) -> int:
  n = 0
  while f'{scope}/encoder/layer_{n}/attention/self/query/kernel' in shapes:
    n += 1
  return n


def _tower_sizes(shapes, scope: str) -> dict:
  layer0 = f'{scope}/encoder/layer_0'
  return dict(hidden=shapes[f'{layer0}/attention/self/query/kernel'][1],
              intermediate=shapes[f'{layer0}/intermediate/dense/kernel'][1],
              layers=_count_layers(shapes, scope))


def infer_model(shapes: dict, num_heads: int | None = None, **overrides) -> tuple:
  """(kind, config.model dict) from the checkpoint's {name: shape}."""
  word = 'electra/embeddings/word_embeddings'
  if word not in shapes or 'electra/encoder/layer_0/attention/self/query/kernel' not in shapes:
    some = sorted(n for n in shapes if not _SLOT.search(n))[:8]
    raise ValueError(f'not an ELECTRA TF1 checkpoint: no {word} or electra/encoder/layer_0; '
                     f'found e.g. {some}')
  vocab_size, embedding_size = shapes[word]
  disc = _tower_sizes(shapes, 'electra')
  heads = num_heads or max(1, disc['hidden'] // 64)
  base = dict(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=disc['hidden'],
              num_layers=disc['layers'], num_heads=heads, intermediate_size=disc['intermediate'],
              max_position_embeddings=shapes['electra/embeddings/position_embeddings'][0],
              type_vocab_size=shapes['electra/embeddings/token_type_embeddings'][0],
              generator_fraction=1.0)
  base = common.model_dict(**{**base, **overrides})
  has_gen_tower = 'generator/encoder/layer_0/attention/self/query/kernel' in shapes
  if has_gen_tower:
    gen = _tower_sizes(shapes, 'generator')
    untied = 'generator/embeddings/word_embeddings' in shapes
    if untied and shapes['generator/embeddings/word_embeddings'][1] != embedding_size:
      raise ValueError(
          f'generator/embeddings/word_embeddings has shape '
          f'{tuple(shapes["generator/embeddings/word_embeddings"])} but {word} has '
          f'{tuple(shapes[word])}: electra_jax needs one embedding_size for both towers')
    gen_fields = common.fit_generator(
        hidden=disc['hidden'], num_heads=heads, intermediate=disc['intermediate'],
        num_layers=disc['layers'], gen_hidden=gen['hidden'],
        gen_heads=max(1, gen['hidden'] // 64) if gen['hidden'] != disc['hidden'] else heads,
        gen_intermediate=gen['intermediate'], gen_layers=gen['layers'], base=base)
    return 'pretrainer', common.model_dict(**{**base, **gen_fields,
                                             'sharing': 'none' if untied else 'embeddings'})
  if 'generator_predictions/output_bias' in shapes:
    # One transformer serves as generator and discriminator (untied_generator=False).
    return 'pretrainer', common.model_dict(**{**base, 'sharing': 'all'})
  if 'discriminator_predictions/dense/kernel' in shapes:
    return 'discriminator', base
  return 'model', base


def import_checkpoint(path: str | os.PathLike, *, num_heads: int | None = None,
                      vocab: str | os.PathLike | None = None, lowercase: bool | None = None,
                      strict: bool = True, **overrides) -> common.Converted:
  """A TF1 ELECTRA checkpoint (prefix or directory) -> Converted.

  Kind: 'pretrainer' when a generator is present (sharing from the variables),
  else 'discriminator' (with discriminator_predictions) or 'model'. `vocab`
  defaults to vocab.txt beside the checkpoint; `overrides` set other
  config.model fields the checkpoint cannot show (e.g. layer_norm_eps).
  With strict=False, unknown variables (fine-tuning heads) are dropped.
  """
  reader, prefix = _load(path)
  shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
  kind, model = infer_model(shapes, num_heads, **overrides)
  cfg = common.electra.ModelConfig.from_config(model)
  params = common.gather(common.expected_shapes(cfg, kind), rename, shapes, reader.get_tensor,
                         what=f'TF1 checkpoint {prefix}', model=model,
                         ignore=lambda n: bool(_SLOT.search(n)), strict=strict)
  vocab_path = Path(vocab) if vocab else Path(prefix).parent / 'vocab.txt'
  tokens_list = None
  if vocab_path.is_file():
    tokens_list = vocab_path.read_text(encoding='utf-8').split('\n')
    if tokens_list and tokens_list[-1] == '':
      tokens_list = tokens_list[:-1]
    if len(tokens_list) != model['vocab_size']:
      raise ValueError(f'{vocab_path} has {len(tokens_list)} tokens but '
                       f'electra/embeddings/word_embeddings has {model["vocab_size"]} rows')
  elif vocab:
    raise FileNotFoundError(f'vocab file {vocab} not found')
  return common.Converted(kind, model, params, tokens=common.tokens_from_vocab(tokens_list),
                          vocab=tokens_list, lowercase=lowercase)
