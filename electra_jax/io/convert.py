r"""Checkpoint conversion: Hugging Face and original TF1 ELECTRA in, Hugging Face out.

Command line (`IN` / `OUT` are directories; TF1 also takes a checkpoint prefix):
  python -m electra_jax.io.convert --from hf --to electra_jax electra-small-discriminator out/
  python -m electra_jax.io.convert --from hf --to electra_jax DISC_DIR out/ --generator GEN_DIR
  python -m electra_jax.io.convert --from tf1 --to electra_jax electra_small/ out/
  python -m electra_jax.io.convert --from tf1 --to hf electra_small/ out_hf/
  python -m electra_jax.io.convert --from electra_jax --to hf RUN/export out_hf/

An HF `IN` holding `discriminator/` and `generator/` subdirectories is read as
a pair, which is also what exporting a pair writes. The electra_jax format is
the export dir of electra_jax.io.checkpoint (discriminator.msgpack = ElectraModel
params, generator.msgpack, model_config.json, vocab.txt), plus, from this
module, pretrainer.msgpack (the whole Pretrainer tree, for continued
pre-training) and discriminator_predictions.msgpack (the replaced-token head)
when the source had them. A pre-training workdir (config.json + checkpoints/)
is read too, from its latest checkpoint.

Python:
  conv = import_hf('disc_dir', generator='gen_dir')  # Converted: kind, model, params, vocab
  conv = import_tf1('electra_small/')
  conv = wrap(state.params, config.model)            # this codebase's params
  export_hf(conv, 'out_hf')                          # {'discriminator': path, 'generator': path}
  save_electra_jax(conv, 'out'); conv = load_electra_jax('out')
  params = electra_model_params(conv)                # ElectraModel params, for fine-tuning
  state, shardings = init_train_state(config, model, tx, mesh, conv)  # continued pre-training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import serialization

from electra_jax.io import common
from electra_jax.io import huggingface as hf
from electra_jax.io import tf1
from electra_jax.io.common import Converted  # noqa: F401  (public API)
from electra_jax.models import electra

# Structural config fields that imported weights fix; a run's config must agree.
STRUCTURE = ('vocab_size', 'embedding_size', 'hidden_size', 'num_layers', 'num_heads',
             'intermediate_size', 'max_position_embeddings', 'type_vocab_size',
             'generator_fraction', 'sharing')


# ----------------------------------------------------------------------------- import


def import_hf(directory: str | os.PathLike, generator: str | os.PathLike | None = None, *,
              strict: bool = True) -> common.Converted:
  """Hugging Face ELECTRA weights -> Converted.

  `directory` alone: its tower ('discriminator', 'generator' or 'model',
  following the heads present). With `generator` (or a `directory` holding
  discriminator/ and generator/): the pair as one 'pretrainer' tree, with the
  sharing the weights imply (identical embeddings -> 'embeddings').
  """
  d = Path(directory)
  if generator is None and (d / 'discriminator' / 'config.json').is_file() and (
      d / 'generator' / 'config.json').is_file():
    d, generator = d / 'discriminator', d / 'generator'
  disc = hf.import_dir(d, strict=strict)
  if generator is None:
    return disc
  return common.combine_pair(disc, hf.import_dir(generator, strict=strict))


def import_tf1(path: str | os.PathLike, *, num_heads: int | None = None,
               vocab: str | os.PathLike | None = None, lowercase: bool | None = None,
               strict: bool = True, **overrides) -> common.Converted:
  """An original TF1 ELECTRA checkpoint -> Converted (see electra_jax.io.tf1)."""
  return tf1.import_checkpoint(path, num_heads=num_heads, vocab=vocab, lowercase=lowercase,
                               strict=strict, **overrides)


def wrap(params, model_config, *, tokens=None, vocab=None, lowercase=None) -> common.Converted:
  """Params from this codebase (a train state's, an ElectraModel's, ...) -> Converted.

  The kind follows the tree's top-level keys; `model_config` is config.model
  (ConfigDict or dict) as the params were built with.
  """
  params = common.to_numpy(params)
  kind = common.kind_of(params)
  model = common.model_dict(**dict(model_config))
  common.check_tree(params, common.expected_shapes(electra.ModelConfig.from_config(model), kind),
                    what=f'{kind} params', model=model)
  return common.Converted(kind, model, params, tokens=None if tokens is None else dict(tokens),
                          vocab=None if vocab is None else list(vocab), lowercase=lowercase)


# ----------------------------------------------------------------------------- export


def export_hf(conv: common.Converted, out_dir: str | os.PathLike,
              architecture: str | None = None) -> dict:
  """Writes HF directories; returns {tower: path}.

  Default: every tower `conv` has, a pair as out_dir/discriminator
  (ElectraForPreTraining) + out_dir/generator (ElectraForMaskedLM), a single
  tower directly in out_dir. `architecture` (ElectraForPreTraining |
  ElectraForMaskedLM | ElectraModel) writes just that one into out_dir.
  """
  out = Path(out_dir)
  if architecture is not None:
    return {hf.CLASS_TO_KIND.get(architecture, architecture): hf.export_dir(conv, out,
                                                                           architecture)}
  if conv.kind == 'pretrainer':
    return {'discriminator': hf.export_dir(conv, out / 'discriminator', 'ElectraForPreTraining'),
            'generator': hf.export_dir(conv, out / 'generator', 'ElectraForMaskedLM')}
  return {conv.kind: hf.export_dir(conv, out, hf.KIND_TO_CLASS[conv.kind])}


# ----------------------------------------------------------------------------- electra_jax format


def save_electra_jax(conv: common.Converted, out_dir: str | os.PathLike) -> Path:
  """Writes an electra_jax export dir (the layout of electra_jax.io.checkpoint.export_params)."""
  from electra_jax.io import checkpoint  # pylint: disable=import-outside-toplevel  (orbax)
  towers = {}
  if conv.kind != 'generator':
    towers['discriminator'] = common.single_tower(conv, 'model').params
  if conv.kind in ('pretrainer', 'generator'):
    towers['generator'] = common.single_tower(conv, 'generator').params
  if conv.kind == 'pretrainer':
    towers['pretrainer'] = conv.params
  if conv.kind == 'discriminator':
    towers['discriminator_predictions'] = conv.params['discriminator_predictions']
  meta = {'model': conv.model, 'tokens': conv.tokens, 'lowercase': conv.lowercase,
          'kind': conv.kind}
  checkpoint.export_params(out_dir, towers, meta, conv.vocab)
  return Path(out_dir)


def _restore(path: Path) -> dict:
  return serialization.msgpack_restore(path.read_bytes())


def _read_vocab(path: Path) -> list | None:
  if not path.is_file():
    return None
  tokens = path.read_text(encoding='utf-8').split('\n')
  return tokens[:-1] if tokens and tokens[-1] == '' else tokens


def load_electra_jax(path: str | os.PathLike, kind: str | None = None) -> common.Converted:
  """An electra_jax export dir or pre-training workdir -> Converted.

  Default kind: the richest tree present (pretrainer > discriminator > model,
  then generator); `kind` asks for one tower ('discriminator', 'model',
  'generator' or 'pretrainer').
  """
  p = Path(path)
  from electra_jax.io import checkpoint  # pylint: disable=import-outside-toplevel  (orbax)
  if (p / 'config.json').is_file() and (p / 'checkpoints').is_dir():
    meta, params = checkpoint.load_pretraining_checkpoint(p, 'pretrainer')
    run = json.loads((p / 'config.json').read_text())
    conv = Converted('pretrainer', meta['model'], common.to_numpy(params),
                     tokens=meta.get('tokens') or run.get('tokens'),
                     vocab=_read_vocab(p / 'export' / 'vocab.txt'),
                     lowercase=run.get('data', {}).get('lowercase'))
    return conv if kind is None else common.single_tower(conv, kind)
  meta_file = p / 'model_config.json'
  if not meta_file.is_file():
    raise FileNotFoundError(f'{meta_file} not found; expected an electra_jax export dir '
                            '(model_config.json + *.msgpack) or a pre-training workdir')
  meta = json.loads(meta_file.read_text())
  files = {n: p / f'{n}.msgpack' for n in ('pretrainer', 'discriminator', 'generator',
                                           'discriminator_predictions')}
  has = {n for n, f in files.items() if f.is_file()}
  extra = dict(tokens=meta.get('tokens'), vocab=_read_vocab(p / 'vocab.txt'),
               lowercase=meta.get('lowercase'))
  model = meta['model']
  if kind == 'generator' or (kind is None and has == {'generator'}):
    if 'generator' not in has:
      raise FileNotFoundError(f'{files["generator"]} not found; {p} has no generator')
    # A training export's config.model is the Pretrainer's; ours for a lone generator
    # already describes the generator tower.
    gen_model = model if meta.get('kind') == 'generator' else common.generator_model(model)
    return Converted('generator', gen_model, _restore(files['generator']), **extra)
  if 'pretrainer' in has:
    conv = Converted('pretrainer', model, _restore(files['pretrainer']), **extra)
  elif {'discriminator', 'discriminator_predictions'} <= has:
    params = {**_restore(files['discriminator']),
              'discriminator_predictions': _restore(files['discriminator_predictions'])}
    conv = Converted('discriminator', model, params, **extra)
  elif 'discriminator' in has:
    conv = Converted('model', model, _restore(files['discriminator']), **extra)
  else:
    raise FileNotFoundError(f'{p}: no pretrainer.msgpack, discriminator.msgpack or '
                            'generator.msgpack')
  if kind is not None and kind != conv.kind:
    conv = common.single_tower(conv, kind)
  return conv


# ----------------------------------------------------------------------------- using imports


def electra_model_params(conv: common.Converted) -> dict:
  """ElectraModel params ({embeddings, discriminator}) from any imported tree, for fine-tuning."""
  return common.single_tower(conv, 'model').params


def check_compatible(conv: common.Converted, model_config) -> None:
  """Raises ValueError naming each structural config.model field that disagrees with `conv`."""
  want = dict(model_config)
  bad = [f'{k}: checkpoint {conv.model[k]!r}, config {want[k]!r}'
         for k in STRUCTURE + common.EXPLICIT_GENERATOR
         if k in want and k in conv.model and want[k] != conv.model[k]]
  if bad:
    raise ValueError(f'imported {conv.kind} weights do not fit config.model: ' + '; '.join(bad))


def init_train_state(config, model, tx, mesh, conv: common.Converted):
  """A TrainState for continued pre-training from `conv` (a 'pretrainer' Converted).

  The params are checked against the run's config, placed in the run's
  sharded layout, and get a fresh optimizer state at step 0. Returns
  (state, shardings) like electra_jax.pretrain.loop.create_train_state.
  """
  from electra_jax.pretrain import loop  # pylint: disable=import-outside-toplevel  (train imports a lot)
  if conv.kind != 'pretrainer':
    raise ValueError(f'continued pre-training needs a generator + discriminator pair '
                     f'(kind "pretrainer"); got kind {conv.kind!r}')
  check_compatible(conv, config.model)
  cfg = electra.ModelConfig.from_config(config.model)
  common.check_tree(conv.params, common.expected_shapes(cfg, 'pretrainer'),
                    what='imported params vs config.model', model=dict(config.model))
  shardings = loop.state_shardings(config, model, tx, mesh)
  params = jax.device_put(jax.tree.map(jnp.asarray, conv.params), shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  state = loop.TrainState(step=jax.device_put(jnp.zeros([], jnp.int32), shardings.step),
                           params=params, opt_state=opt_state)
  return state, shardings


# ----------------------------------------------------------------------------- CLI


def _with_vocab(conv: common.Converted, vocab: str | None, lowercase: bool | None):
  if vocab:
    tokens = _read_vocab(Path(vocab))
    if tokens is None:
      raise FileNotFoundError(f'vocab file {vocab} not found')
    if len(tokens) != conv.model['vocab_size']:
      raise ValueError(f'{vocab} has {len(tokens)} tokens but the model has '
                       f'vocab_size={conv.model["vocab_size"]}')
    conv = dataclasses.replace(conv, vocab=tokens, tokens=common.tokens_from_vocab(tokens))
  if lowercase is not None:
    conv = dataclasses.replace(conv, lowercase=lowercase)
  return conv


def _summary(conv: common.Converted) -> dict:
  m = conv.model
  return {'kind': conv.kind, 'sharing': m['sharing'] if conv.kind == 'pretrainer' else None,
          **{k: m[k] for k in ('vocab_size', 'embedding_size', 'hidden_size', 'num_layers',
                               'num_heads', 'intermediate_size', 'generator_fraction')},
          'vocab': conv.vocab is not None}


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog='python -m electra_jax.io.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='src', required=True, choices=('hf', 'tf1', 'electra_jax'))
  parser.add_argument('--to', dest='dst', required=True, choices=('hf', 'electra_jax'))
  parser.add_argument('input', help='source directory (TF1: directory or checkpoint prefix)')
  parser.add_argument('output', help='destination directory')
  parser.add_argument('--generator', help='hf: the generator directory to pair with INPUT')
  parser.add_argument('--hf-class', choices=sorted(hf.CLASS_TO_KIND),
                      help='to hf: write only this class (default: every tower present)')
  parser.add_argument('--kind', choices=common.KINDS,
                      help='electra_jax source: the tree to read (default: the richest)')
  parser.add_argument('--num-heads', type=int,
                      help='tf1: discriminator attention heads (default hidden // 64)')
  parser.add_argument('--vocab', help='vocab.txt to carry along (default: the one in INPUT)')
  parser.add_argument('--lowercase', action=argparse.BooleanOptionalAction, default=None,
                      help='tokenizer lower-cases (default: from the source, else true)')
  parser.add_argument('--no-strict', dest='strict', action='store_false',
                      help='drop unknown parameters (e.g. fine-tuning heads) instead of failing')
  args = parser.parse_args(argv)
  if args.src == args.dst:
    parser.error(f'--from {args.src} --to {args.dst}: nothing to convert')
  if args.generator and args.src != 'hf':
    parser.error('--generator only applies to --from hf')

  gen_conv = None
  if args.src == 'hf':
    conv = import_hf(args.input, args.generator, strict=args.strict)
  elif args.src == 'tf1':
    conv = import_tf1(args.input, num_heads=args.num_heads, strict=args.strict)
  else:
    conv = load_electra_jax(args.input, args.kind)
    if (args.kind is None and conv.kind == 'model'
        and (Path(args.input) / 'generator.msgpack').is_file()):
      # A training export: ElectraModel + generator, no replaced-token head.
      gen_conv = load_electra_jax(args.input, 'generator')
  conv = _with_vocab(conv, args.vocab, args.lowercase)

  if args.dst == 'electra_jax':
    written = {conv.kind: str(save_electra_jax(conv, args.output))}
  elif gen_conv is not None and args.hf_class is None:
    gen_conv = _with_vocab(gen_conv, args.vocab, args.lowercase)
    out = Path(args.output)
    written = {'discriminator': str(hf.export_dir(conv, out / 'discriminator', 'ElectraModel')),
               'generator': str(hf.export_dir(gen_conv, out / 'generator',
                                              'ElectraForMaskedLM'))}
  else:
    written = {k: str(v) for k, v in export_hf(conv, args.output, args.hf_class).items()}
  summary = {**_summary(conv), 'written': written}
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError, ImportError) as e:  # one line, not a traceback
    sys.exit(f'electra_jax.io.convert: error: {e}')
