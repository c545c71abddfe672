"""What every checkpoint format shares: tree kinds, expected shapes, rename-table gathering.

A converted model is a `Converted`: the `config.model` fields, a nested numpy
parameter tree, and which of four tree *kinds* it is:

  pretrainer     `Pretrainer` params: both towers, both heads, the sharing in
                 `model['sharing']` (continued pre-training, export of both).
  discriminator  {embeddings, discriminator, discriminator_predictions}: the
                 replaced-token detector alone (HF ElectraForPreTraining).
  model          {embeddings, discriminator}: `ElectraModel` params, the body
                 that fine-tuning starts from (HF ElectraModel).
  generator      {embeddings, generator, generator_predictions}: the MLM alone
                 (HF ElectraForMaskedLM). Its config describes the generator
                 as a tower of its own: hidden_size and num_layers = the
                 generator's, generator_fraction = generator_layers = 1.0.

Every foreign format is a flat {name: array}. Converting is a rename table: a
function from each electra_jax parameter path (('discriminator', 'encoder',
'layer_0', 'attention', 'self', 'query', 'kernel')) to the foreign name and
whether the array is stored transposed. `gather` walks the paths the config
implies, so a missing, unexpected or wrongly shaped parameter is reported by
its foreign name with both shapes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from electra_jax.models import electra

log = logging.getLogger(__name__)

KINDS = ('pretrainer', 'discriminator', 'model', 'generator')
KIND_KEYS = {
    'discriminator': ('embeddings', 'discriminator', 'discriminator_predictions'),
    'model': ('embeddings', 'discriminator'),
    'generator': ('embeddings', 'generator', 'generator_predictions'),
}
# Special-token strings of a BERT-style WordPiece vocab -> config.tokens keys.
SPECIAL_TOKENS = {'pad_id': '[PAD]', 'unk_id': '[UNK]', 'cls_id': '[CLS]', 'sep_id': '[SEP]',
                  'mask_id': '[MASK]'}
# Which config fields give each dimension of the tables, for shape errors.
_TABLE_DIMS = {
    'word_embeddings': ('vocab_size', 'embedding_size'),
    'position_embeddings': ('max_position_embeddings', 'embedding_size'),
    'token_type_embeddings': ('type_vocab_size', 'embedding_size'),
    'output_bias': ('vocab_size',),
}

Path = tuple  # a parameter path, e.g. ('embeddings', 'word_embeddings')
Rename = Callable[[Path], tuple]  # path -> (foreign name, stored transposed?)


@dataclasses.dataclass
class Converted:
  """A model in electra_jax form: config fields, params of one `kind`, optional vocab."""
  kind: str
  model: dict  # config.model fields; ModelConfig.from_config(model) accepts it
  params: dict  # nested {name: np.ndarray float32}
  tokens: dict | None = None  # config.tokens ids (pad_id, unk_id, cls_id, sep_id, mask_id)
  vocab: list | None = None  # WordPiece tokens in id order
  lowercase: bool | None = None  # tokenizer lower-cases (None: unknown)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'kind={self.kind!r}; expected one of {KINDS}')

  @property
  def model_config(self) -> electra.ModelConfig:
    return electra.ModelConfig.from_config(self.model)


def model_dict(**fields) -> dict:
  """All ModelConfig fields (defaults filled in), validated, as a plain dict."""
  return dataclasses.asdict(electra.ModelConfig.from_config(fields))


def flatten(tree: Mapping) -> dict:
  return traverse_util.flatten_dict(dict(tree))


def unflatten(flat: Mapping) -> dict:
  return traverse_util.unflatten_dict(dict(flat))


def to_numpy(tree) -> dict:
  """Any param tree (jax arrays, possibly sharded or boxed) -> nested float32 numpy."""
  tree = nn.meta.unbox(tree)
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), dtype=np.float32), tree)


def expected_shapes(cfg: electra.ModelConfig, kind: str) -> dict:
  """{path: shape} of the `kind` tree for `cfg`, from an abstract `Pretrainer.init`."""
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r}; expected one of {KINDS}')
  if kind != 'pretrainer':
    # The single-tower kinds are cuts of an 'embeddings'-sharing Pretrainer.
    cfg = dataclasses.replace(cfg, sharing='embeddings')
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(
      lambda: electra.Pretrainer(cfg).init({'params': jax.random.key(0)}, ids, ids + 1, ids,
                                           None, True))['params']
  abstract = nn.meta.unbox(abstract)
  if kind != 'pretrainer':
    abstract = {k: abstract[k] for k in KIND_KEYS[kind]}
  return {path: tuple(x.shape) for path, x in flatten(abstract).items()}


def kind_of(params: Mapping) -> str:
  """Infers the tree kind from the top-level keys."""
  keys = set(params)
  if {'discriminator_predictions', 'generator_predictions'} <= keys:
    return 'pretrainer'
  for kind, want in KIND_KEYS.items():
    if keys == set(want):
      return kind
  raise ValueError(f'parameter tree with top-level keys {sorted(keys)} is none of the kinds '
                   f'{KINDS}; expected e.g. {sorted(KIND_KEYS["model"])} (ElectraModel) or '
                   'a Pretrainer tree')


def _dims(path: Path, shape, model: Mapping | None) -> str:
  names = _TABLE_DIMS.get(path[-1])
  if not names or model is None:
    return ''
  return ' (' + ', '.join(f'{n}={model.get(n)}' for n in names) + ')'


def check_tree(params: Mapping, expected: Mapping, *, what: str, model: Mapping | None = None):
  """Raises ValueError naming the first missing / unexpected / mis-shaped parameter."""
  flat = flatten(params)
  missing = sorted('/'.join(p) for p in expected if p not in flat)
  unexpected = sorted('/'.join(p) for p in flat if p not in expected)
  if missing:
    raise ValueError(f'{what}: missing parameter(s) {missing[:6]}'
                     + (f' and {len(missing) - 6} more' if len(missing) > 6 else ''))
  if unexpected:
    raise ValueError(f'{what}: unexpected parameter(s) {unexpected[:6]}'
                     + (f' and {len(unexpected) - 6} more' if len(unexpected) > 6 else ''))
  for path, want in expected.items():
    got = tuple(np.shape(flat[path]))
    if got != tuple(want):
      raise ValueError(f'{what}: parameter {"/".join(path)} has shape {got}, expected '
                       f'{tuple(want)}{_dims(path, want, model)}')


def gather(expected: Mapping, rename: Rename, shapes: Mapping, get: Callable[[str], np.ndarray],
           *, what: str, model: Mapping | None = None,
           ignore: Callable[[str], bool] = lambda name: False, strict: bool = True) -> dict:
  """Builds the nested tree for `expected` {path: shape} from a flat foreign checkpoint.

  `shapes` maps every foreign name to its shape; `get(name)` loads one array
  (lazily, so optimizer slots are never read). Names for which `ignore` is
  true are skipped silently; any other unused name is an error when `strict`.
  """
  out, used, missing = {}, set(), []
  # Tables first: a vocab / embedding size mismatch is reported on the table.
  order = sorted(expected, key=lambda p: (p[-1] != 'word_embeddings', p[-1] not in _TABLE_DIMS))
  for path in order:
    want = expected[path]
    name, transposed = rename(path)
    stored_want = tuple(want)[::-1] if transposed else tuple(want)
    if name not in shapes:
      missing.append(f'{name} (shape {stored_want})')
      continue
    got = tuple(shapes[name])
    if got != stored_want:
      raise ValueError(f'{what}: parameter {name} has shape {got} in the checkpoint, but the '
                       f'config implies {stored_want}{_dims(path, want, model)}')
    arr = np.asarray(get(name), dtype=np.float32)
    out[path] = np.ascontiguousarray(arr.T) if transposed else arr
    used.add(name)
  if missing:
    raise ValueError(f'{what}: missing parameter(s) {missing[:6]}'
                     + (f' and {len(missing) - 6} more' if len(missing) > 6 else ''))
  unexpected = sorted(n for n in shapes if n not in used and not ignore(n))
  if unexpected and not strict:
    log.warning('%s: dropped %d parameter(s) electra_jax has no place for: %s', what,
                len(unexpected), unexpected[:10])
  elif unexpected:
    listed = [f'{n} (shape {tuple(shapes[n])})' for n in unexpected[:6]]
    raise ValueError(f'{what}: unexpected parameter(s) {listed}'
                     + (f' and {len(unexpected) - 6} more' if len(unexpected) > 6 else '')
                     + '; pass strict=False (--no-strict) to drop them')
  return unflatten(out)


def scatter(params: Mapping, rename: Rename) -> dict:
  """The inverse of `gather`: nested tree -> flat {foreign name: np.ndarray}."""
  out = {}
  for path, x in flatten(params).items():
    name, transposed = rename(path)
    arr = np.asarray(jax.device_get(x), dtype=np.float32)
    out[name] = np.ascontiguousarray(arr.T) if transposed else arr
  return out


def tokens_from_vocab(vocab: list | None) -> dict | None:
  """config.tokens ids from a BERT-style vocab; None if any special token is absent."""
  if not vocab:
    return None
  index = {t: i for i, t in enumerate(vocab)}
  if not all(t in index for t in SPECIAL_TOKENS.values()):
    return None
  return {k: index[t] for k, t in SPECIAL_TOKENS.items()}


# Optional explicit generator sizes (0 = derived); used when ModelConfig has them.
EXPLICIT_GENERATOR = ('generator_hidden_size', 'generator_num_heads',
                      'generator_intermediate_size', 'generator_num_layers')


def _has_explicit_generator() -> bool:
  names = {f.name for f in dataclasses.fields(electra.ModelConfig)}
  return all(n in names for n in EXPLICIT_GENERATOR)


def fit_generator(*, hidden: int, num_heads: int, intermediate: int, num_layers: int,
                  gen_hidden: int, gen_heads: int, gen_intermediate: int, gen_layers: int,
                  base: Mapping) -> dict:
  """config.model fields that make ModelConfig build exactly these generator sizes.

  ModelConfig derives the generator as hidden = round(H * f), heads =
  max(1, hidden // 64), FFN = 4 * hidden, depth = round(L * generator_layers)
  (f = 1: the discriminator's sizes); that gives {'generator_fraction': f,
  'generator_layers': gen_layers / L}. Sizes off that rule use explicit
  generator size fields where ModelConfig has them, and otherwise raise,
  naming both sets of sizes.
  """
  got = dict(hidden=gen_hidden, heads=gen_heads, intermediate=gen_intermediate, layers=gen_layers)
  fractions = {'generator_fraction': 1.0 if gen_hidden == hidden else gen_hidden / hidden,
               'generator_layers': 1.0 if gen_layers == num_layers else gen_layers / num_layers}
  disc = {**base, 'hidden_size': hidden, 'num_heads': num_heads, 'intermediate_size': intermediate,
          'num_layers': num_layers}
  if _has_explicit_generator():
    disc.update({n: 0 for n in EXPLICIT_GENERATOR})
  trial = electra.ModelConfig.from_config({**disc, **fractions, 'sharing': 'none'}).generator
  derived = dict(hidden=trial.hidden_size, heads=trial.num_heads,
                 intermediate=trial.intermediate_size, layers=trial.num_layers)
  if derived == got:
    return fractions
  if _has_explicit_generator():
    return {**fractions, 'generator_hidden_size': gen_hidden, 'generator_num_heads': gen_heads,
            'generator_intermediate_size': gen_intermediate, 'generator_num_layers': gen_layers}
  raise ValueError(
      f'generator sizes {got} do not follow electra_jax ModelConfig\'s derived generator '
      f'for discriminator hidden={hidden}, heads={num_heads}, intermediate={intermediate}, '
      f'layers={num_layers} and {fractions}: that gives {derived} '
      '(hidden=round(H*f), heads=max(1, hidden//64), intermediate=4*hidden, '
      'layers=round(L*generator_layers)), and ModelConfig has no explicit generator size fields')


def same_arrays(a: Mapping, b: Mapping) -> bool:
  """True iff two trees have the same paths and bit-identical arrays."""
  fa, fb = flatten(a), flatten(b)
  return fa.keys() == fb.keys() and all(
      np.shape(fa[k]) == np.shape(fb[k]) and np.array_equal(fa[k], fb[k]) for k in fa)


def combine_pair(disc: Converted, gen: Converted) -> Converted:
  """A discriminator and a generator (single-tower kinds) -> one Pretrainer tree.

  Sharing follows the weights: identical embeddings (tables and LayerNorm) ->
  'embeddings'; additionally identical towers of equal size -> 'all';
  otherwise 'none'. Sizes the two must agree on raise when they differ.
  """
  if disc.kind != 'discriminator':
    raise ValueError(f'the discriminator checkpoint holds a {disc.kind!r} tree; continued '
                     'pre-training needs the replaced-token head (HF ElectraForPreTraining)')
  if gen.kind != 'generator':
    raise ValueError(f'the generator checkpoint holds a {gen.kind!r} tree; expected a '
                     'generator (HF ElectraForMaskedLM)')
  d, g = disc.model, gen.model
  for key in ('vocab_size', 'embedding_size', 'max_position_embeddings', 'type_vocab_size',
              'layer_norm_eps'):
    if d[key] != g[key]:
      raise ValueError(f'generator {key}={g[key]} but discriminator {key}={d[key]}; the pair '
                       'must agree')
  gen_fields = fit_generator(hidden=d['hidden_size'], num_heads=d['num_heads'],
                       intermediate=d['intermediate_size'], num_layers=d['num_layers'],
                       gen_hidden=g['hidden_size'], gen_heads=g['num_heads'],
                       gen_intermediate=g['intermediate_size'], gen_layers=g['num_layers'],
                       base=d)
  dp, gp = disc.params, gen.params
  shared_emb = same_arrays(dp['embeddings'], gp['embeddings'])
  same_size = gen_fields == {'generator_fraction': 1.0, 'generator_layers': 1.0}
  if shared_emb and same_size and same_arrays(dp['discriminator'], gp['generator']):
    sharing = 'all'
  else:
    sharing = 'embeddings' if shared_emb else 'none'
  params = {'discriminator': dp['discriminator'],
            'discriminator_predictions': dp['discriminator_predictions'],
            'generator_predictions': gp['generator_predictions']}
  if sharing == 'none':
    params.update(generator_embeddings=gp['embeddings'], discriminator_embeddings=dp['embeddings'])
  else:
    params['embeddings'] = dp['embeddings']
  if sharing != 'all':
    params['generator'] = gp['generator']
  model = model_dict(**{**d, **gen_fields, 'sharing': sharing})
  check_tree(params, expected_shapes(electra.ModelConfig.from_config(model), 'pretrainer'),
             what='combined generator + discriminator', model=model)
  if disc.vocab and gen.vocab and disc.vocab != gen.vocab:
    raise ValueError('the generator and discriminator directories ship different vocab files')
  return Converted('pretrainer', model, params, tokens=disc.tokens or gen.tokens,
                   vocab=disc.vocab or gen.vocab,
                   lowercase=disc.lowercase if disc.lowercase is not None else gen.lowercase)


def generator_model(model: Mapping) -> dict:
  """A Pretrainer's config.model -> the config of its generator as a tower of its own."""
  gen = electra.ModelConfig.from_config(model).generator
  fields = {**model, 'hidden_size': gen.hidden_size, 'num_heads': gen.num_heads,
            'intermediate_size': gen.intermediate_size, 'num_layers': gen.num_layers,
            'generator_fraction': 1.0, 'generator_layers': 1.0, 'sharing': 'embeddings'}
  if _has_explicit_generator():
    fields.update({n: 0 for n in EXPLICIT_GENERATOR})
  return model_dict(**fields)


def single_tower(conv: Converted, kind: str) -> Converted:
  """Cuts a single-tower kind ('discriminator' | 'model' | 'generator') out of `conv`."""
  if conv.kind == kind:
    return conv
  p, m = conv.params, conv.model
  if conv.kind == 'pretrainer':
    cfg = conv.model_config
    if kind == 'generator':
      model, params = generator_model(m), electra.generator_params(p, cfg.sharing)
    else:
      # Single-tower kinds describe just their tower: no generator fraction, no sharing.
      model = {**m, 'generator_fraction': 1.0, 'generator_layers': 1.0, 'sharing': 'embeddings'}
      if _has_explicit_generator():
        model.update({n: 0 for n in EXPLICIT_GENERATOR})
      model = model_dict(**model)
      params = electra.discriminator_params(p, cfg.sharing)
      if kind == 'discriminator':
        params = {**params, 'discriminator_predictions': p['discriminator_predictions']}
  elif conv.kind == 'discriminator' and kind == 'model':
    model, params = m, {k: p[k] for k in KIND_KEYS['model']}
  elif conv.kind == 'generator' and kind == 'model':
    # A generator's config already describes its tower as a model of its own.
    model, params = m, {'embeddings': p['embeddings'], 'discriminator': p['generator']}
  else:
    raise ValueError(f'cannot make a {kind!r} tree from a {conv.kind!r} tree')
  return dataclasses.replace(conv, kind=kind, model=model, params=params)
