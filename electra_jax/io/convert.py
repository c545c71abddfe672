r"""Checkpoint conversion: Hugging Face and original TF1 ELECTRA in, Hugging Face out.

Command line (`IN` / `OUT` are directories; TF1 also takes a checkpoint prefix):
  python -m electra_jax.io.convert --from=hf --to=electra_jax electra-small-discriminator out/
  python -m electra_jax.io.convert --from=hf --to=electra_jax --generator=GEN_DIR DISC_DIR out/
  python -m electra_jax.io.convert --from=tf1 --to=electra_jax electra_small/ out/
  python -m electra_jax.io.convert --from=tf1 --to=hf electra_small/ out_hf/
  python -m electra_jax.io.convert --from=electra_jax --to=hf RUN/export out_hf/
  python -m electra_jax.io.convert --from=electra_jax --to=hf RUN/model out_hf/  # fine-tuned
(also installed as `electra-convert`; `--help` lists the flags)

An HF `IN` holding `discriminator/` and `generator/` subdirectories is read as
a pair, which is also what exporting a pair writes. The electra_jax format is
the export dir of electra_jax.io.checkpoint (discriminator.msgpack = ElectraModel
params, generator.msgpack, model_config.json, vocab.txt), plus, from this
module, pretrainer.msgpack (the whole Pretrainer tree, for continued
pre-training) and discriminator_predictions.msgpack (the replaced-token head)
when the source had them. A pre-training workdir (config.json + checkpoints/)
is read too, from its latest checkpoint. A fine-tuned model dir (RUN/model,
electra_jax.io.finetuned) exports to the Hugging Face task class of its head:
ElectraForSequenceClassification (GLUE; the head must be head.form=hf),
ElectraForQuestionAnswering (SQuAD; the head must be head.qa_joint=False with no
answerability classifier) or ElectraForTokenClassification (chunking).

Python (the readers are in electra_jax.io.weights):
  conv = weights.import_hf('disc_dir', generator='gen_dir')  # Converted: kind, model, params, vocab
  conv = weights.import_tf1('electra_small/')
  conv = wrap(state.params, config.model)            # this codebase's params
  export_hf(conv, 'out_hf')                          # {'discriminator': path, 'generator': path}
  save_electra_jax(conv, 'out'); conv = weights.load_electra_jax('out')
  params = electra_model_params(conv)                # ElectraModel params, for fine-tuning
  # continued pre-training: electra_jax.pretrain.loop.init_train_state(config, model, tx, mesh, conv)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from absl import flags

from electra_jax import cli
from electra_jax.io import checkpoint
from electra_jax.io import common
from electra_jax.io import finetuned
from electra_jax.io import huggingface as hf
from electra_jax.io import weights
from electra_jax.io.common import Converted  # noqa: F401  (public API)
from electra_jax.models import electra


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


# ----------------------------------------------------------------------------- using imports


def electra_model_params(conv: common.Converted) -> dict:
  """ElectraModel params ({embeddings, discriminator}) from any imported tree, for fine-tuning."""
  return common.single_tower(conv, 'model').params


# ----------------------------------------------------------------------------- CLI


def _with_vocab(conv: common.Converted, vocab: str | None, lowercase: bool | None):
  if vocab:
    tokens = weights.read_vocab(Path(vocab))
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
                               'num_heads', 'intermediate_size', 'generator_fraction',
                               'generator_layers')},
          'vocab': conv.vocab is not None}


SOURCES, TARGETS = ('hf', 'tf1', 'electra_jax'), ('hf', 'electra_jax')


def convert(src: str, dst: str, input_path, output_path, *, generator=None, hf_class=None,
            kind=None, num_heads=None, vocab=None, lowercase=None, strict: bool = True) -> dict:
  """Reads `input_path` in format `src`, writes `output_path` in format `dst`; returns a summary.

  The command line's arguments, as keywords (see the module docstring).
  """
  if src not in SOURCES or dst not in TARGETS:
    raise ValueError(f'--from={src} --to={dst}; expected --from one of {SOURCES} and --to one '
                     f'of {TARGETS}')
  if src == dst:
    raise ValueError(f'--from={src} --to={dst}: nothing to convert')
  if generator and src != 'hf':
    raise ValueError('--generator only applies to --from=hf')
  if src == 'electra_jax' and finetuned.is_saved_model(input_path):
    saved = finetuned.load(input_path)  # a fine-tuned model: the HF task class that fits
    if dst != 'hf':
      raise ValueError(f'{input_path} is a fine-tuned electra_jax model already; --to=hf '
                       'exports it')
    if hf_class is not None or kind is not None or vocab:
      raise ValueError(f'{input_path} is a fine-tuned model: its task picks the HF class and '
                       'it carries its own vocab; drop --hf_class, --kind and --vocab')
    out = hf.export_finetuned(saved, output_path)
    return {'kind': 'finetuned', 'task': saved.task['name'], 'head': saved.head['kind'],
            'architecture': hf.check_exportable(saved.head, str(input_path)),
            'written': {'finetuned': str(out)}}
  gen_conv = None
  if src == 'hf':
    conv = weights.import_hf(input_path, generator, strict=strict)
  elif src == 'tf1':
    conv = weights.import_tf1(input_path, num_heads=num_heads, strict=strict)
  else:
    conv = weights.load_electra_jax(input_path, kind)
    if kind is None and conv.kind == 'model' and (Path(input_path) / 'generator.msgpack').is_file():
      # A training export: ElectraModel + generator, no replaced-token head.
      gen_conv = weights.load_electra_jax(input_path, 'generator')
  conv = _with_vocab(conv, vocab, lowercase)

  if dst == 'electra_jax':
    written = {conv.kind: str(save_electra_jax(conv, output_path))}
  elif gen_conv is not None and hf_class is None:
    gen_conv = _with_vocab(gen_conv, vocab, lowercase)
    out = Path(output_path)
    written = {'discriminator': str(hf.export_dir(conv, out / 'discriminator', 'ElectraModel')),
               'generator': str(hf.export_dir(gen_conv, out / 'generator',
                                              'ElectraForMaskedLM'))}
  else:
    written = {k: str(v) for k, v in export_hf(conv, output_path, hf_class).items()}
  return {**_summary(conv), 'written': written}


def define_flags():
  flags.DEFINE_enum('from', None, SOURCES, 'Source format.')
  flags.DEFINE_enum('to', None, TARGETS, 'Target format.')
  flags.DEFINE_string('generator', None, 'hf: the generator directory to pair with INPUT.')
  flags.DEFINE_enum('hf_class', None, sorted(hf.CLASS_TO_KIND),
                    'to hf: write only this class (default: every tower present).')
  flags.DEFINE_enum('kind', None, common.KINDS,
                    'electra_jax source: the tree to read (default: the richest).')
  flags.DEFINE_integer('num_heads', None,
                       'tf1: discriminator attention heads (default hidden // 64).')
  flags.DEFINE_string('vocab', None, 'vocab.txt to carry along (default: the one in INPUT).')
  flags.DEFINE_bool('lowercase', None,
                    'Tokenizer lower-cases (default: from the source, else true).')
  flags.DEFINE_bool('strict', True, 'Fail on unknown parameters; --nostrict drops them (e.g. '
                    'fine-tuning heads).')


def main(argv):
  """python -m electra_jax.io.convert --from=FMT --to=FMT INPUT OUTPUT [flags]."""
  f = flags.FLAGS
  cli.require(**{'from': f['from'].value, 'to': f['to'].value})
  if len(argv) != 3:
    raise cli.UsageError(f'expected INPUT and OUTPUT after the flags; got {argv[1:]}')
  summary = convert(f['from'].value, f['to'].value, argv[1], argv[2], generator=f.generator,
                    hf_class=f.hf_class, kind=f.kind, num_heads=f.num_heads, vocab=f.vocab,
                    lowercase=f.lowercase, strict=f.strict)
  print(json.dumps(summary))


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
