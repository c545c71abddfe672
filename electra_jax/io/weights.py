"""Pre-trained weights in any format: one detector, one loader.

    ckpt = load(path)                 # the discriminator's encoder (ElectraModel), to fine-tune
    ckpt = load(path, 'pretrainer')   # generator + discriminator, to continue pre-training
    tok = load_tokenizer(vocab_setting, ckpt, lowercase)

`path` is, as `detect(path)` names it,
  export       an electra_jax export dir (model_config.json + *.msgpack), as pre-training
               (RUN/export) or electra_jax.io.convert writes it, or a fine-tuned model
               (RUN/model, electra_jax.io.finetuned: its encoder)
  pretraining  a pre-training run (config.json + checkpoints/): its latest checkpoint, the
               towers cut out with the run's embedding sharing
  huggingface  a Hugging Face ELECTRA dir (config.json + pytorch_model.bin / model.safetensors),
               or a dir holding discriminator/ and generator/ (a pair)
  tf1          an original google-research/electra TF1 checkpoint (its directory or prefix)
or a Hugging Face Hub id (`google/electra-small-discriminator`), found in the local Hugging
Face cache (`resolve_hub_id`; never downloaded).
`load` returns a `Pretrained`: kind (the format above), model_config (config.model fields),
params (nested numpy), the vocab (a vocab.txt path or the tokens) and lower-casing. For
fine-tuning the params hold (at least) the ElectraModel subtrees `embeddings` and
`discriminator`; anything else is reported as unexpected by the fine-tuning loop.

The readers behind it, for conversion: import_hf, import_tf1, load_electra_jax (-> Converted),
load_pretraining_checkpoint (a run's checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from electra_jax import runlog
from electra_jax.data import tokenizer as tok_lib
from electra_jax.io import checkpoint
from electra_jax.io import common
from electra_jax.io import finetuned
from electra_jax.io import huggingface as hf
from electra_jax.io import tf1
from electra_jax.io.common import Converted
from electra_jax.models import electra
from electra_jax.pretrain import build

log = logging.getLogger(__name__)

FORMATS = ('export', 'pretraining', 'huggingface', 'tf1')
_HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')
# Structural config fields that imported weights fix; a run's config must agree.
STRUCTURE = ('vocab_size', 'embedding_size', 'hidden_size', 'num_layers', 'num_heads',
             'intermediate_size', 'max_position_embeddings', 'type_vocab_size',
             'generator_fraction', 'generator_layers', 'sharing')


@dataclasses.dataclass
class Pretrained:
  """Weights to start from. model_config: config.model fields (None: use the config's)."""
  path: str
  kind: str  # the format: export | pretraining | huggingface | tf1
  model_config: dict | None
  params: Any
  vocab: Path | None = None  # vocab.txt that the weights were trained with
  lowercase: bool | None = None
  vocab_tokens: list | None = None  # the vocab in id order, when there is no vocab.txt
  converted: Converted | None = None  # load(path, 'pretrainer'): the whole imported tree


def _tf1_index(p: Path) -> bool:
  if p.is_dir():
    return (p / 'checkpoint').is_file() or any(p.glob('*.index'))
  return p.parent.is_dir() and any(p.parent.glob(p.name + '.index'))


def detect(path, setting: str = 'train.init_from') -> str:
  """The format of `path`, one of FORMATS; FileNotFoundError naming `setting` if none fits."""
  p = Path(path).expanduser()
  if (p / 'model_config.json').is_file():
    return 'export'
  if (p / 'config.json').is_file() and (p / 'checkpoints').is_dir():
    return 'pretraining'
  if (p / 'config.json').is_file() or (p / 'discriminator' / 'config.json').is_file():
    return 'huggingface'
  if _tf1_index(p):
    return 'tf1'
  if not p.exists():
    raise FileNotFoundError(f'{setting}={path}: no such file or directory')
  raise FileNotFoundError(
      f'{setting}={path}: expected an export dir (model_config.json + *.msgpack), a '
      f'pre-training workdir (config.json + checkpoints/), a Hugging Face dir (config.json + '
      f'{" or ".join(_HF_WEIGHTS)}) or a TF1 checkpoint (*.index)')


def resolve_hub_id(path, setting: str = 'train.init_from') -> Path | None:
  """A Hugging Face Hub id (`org/name`, not an existing path) -> its snapshot in the local
  Hugging Face cache (huggingface_hub, local_files_only: never downloads). None when `path`
  is not shaped like a Hub id; FileNotFoundError, naming the command that would fetch it,
  when the model is not cached."""
  s = str(path)
  if Path(s).expanduser().exists() or s.count('/') != 1 or s.startswith(('.', '/', '~')):
    return None
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise FileNotFoundError(f'{setting}={s}: no such file or directory (reading it as a Hugging '
                            "Face Hub id needs huggingface_hub: pip install -e '.[hf]')") from None
  try:
    return Path(huggingface_hub.snapshot_download(s, local_files_only=True))
  except errors.HFValidationError:
    return None
  except errors.LocalEntryNotFoundError:
    raise FileNotFoundError(
        f'{setting}={s}: no such file or directory, and the Hugging Face Hub model {s} is not in '
        f'the local cache ({huggingface_hub.constants.HF_HUB_CACHE}); nothing is downloaded at '
        f'run time: fetch it first with `huggingface-cli download {s}`') from None


def load(path, tree: str = 'model', *, setting: str = 'train.init_from') -> Pretrained:
  """The weights at `path` (see the module docstring), cut to `tree`.

  tree: 'model' (the discriminator's encoder, what fine-tuning starts from) or
  'pretrainer' (both towers, for continued pre-training; also 'discriminator' or
  'generator'). `setting` names the config value in error messages. A Hugging Face Hub
  id (e.g. google/electra-small-discriminator) is read from the local HF cache.
  """
  p = resolve_hub_id(path, setting) or Path(path).expanduser()
  fmt = detect(p, setting)
  if tree == 'model':
    if fmt == 'export' and finetuned.is_saved_model(p):  # a fine-tuned model: its encoder
      m = finetuned.load(p)
      params = {k: m.params[k] for k in ('embeddings', 'discriminator')}
      return Pretrained(str(p), fmt, m.model_config, params, m.vocab, m.lowercase)
    if fmt == 'export':
      cfg, params = checkpoint.load_exported(p, 'discriminator')
      vocab = p / 'vocab.txt'
      return Pretrained(str(p), fmt, cfg['model'], params, vocab if vocab.is_file() else None,
                        cfg.get('lowercase'))
    if fmt == 'pretraining':
      cfg, params = load_pretraining_checkpoint(p, 'discriminator')
      run_cfg = json.loads((p / 'config.json').read_text())
      return Pretrained(str(p), fmt, cfg['model'], params, _run_vocab(p, run_cfg),
                        run_cfg['data']['lowercase'])
    if fmt == 'huggingface':
      conv = hf.load_hf(p)  # Logs any head it drops (MLM, RTD, a classifier).
      vocab = p / 'vocab.txt'
    else:
      conv = common.single_tower(import_tf1(p, strict=False), 'model')
      vocab = (p if p.is_dir() else p.parent) / 'vocab.txt'
    return Pretrained(str(p), fmt, conv.model, conv.params, vocab if vocab.is_file() else None,
                      conv.lowercase, None if vocab.is_file() else conv.vocab)
  if fmt in ('export', 'pretraining'):
    conv = load_electra_jax(p)
  elif fmt == 'huggingface':
    conv = import_hf(p)
  else:
    conv = import_tf1(p)
  if tree != 'pretrainer' and conv.kind != tree:
    conv = common.single_tower(conv, tree)
  return Pretrained(str(p), fmt, conv.model, conv.params, None, conv.lowercase, conv.vocab, conv)


def check_compatible(conv: Converted, model_config) -> None:
  """Raises ValueError naming each structural config.model field that disagrees with `conv`."""
  want = dict(model_config)
  bad = [f'{k}: checkpoint {conv.model[k]!r}, config {want[k]!r}'
         for k in STRUCTURE + common.EXPLICIT_GENERATOR
         if k in want and k in conv.model and want[k] != conv.model[k]]
  if bad:
    raise ValueError(f'imported {conv.kind} weights do not fit config.model: ' + '; '.join(bad))


def _run_vocab(workdir: Path, run_cfg: dict) -> Path | None:
  """The vocab a pre-training run used: its export's copy, else its config's setting."""
  export_vocab = workdir / 'export' / 'vocab.txt'
  if export_vocab.is_file():
    return export_vocab
  setting = run_cfg['data']['vocab']
  if setting == 'builtin':
    return builtin_vocab()
  return Path(setting) if setting else None


def builtin_vocab() -> Path:
  """The `tiny` quickstart's 8192-token vocab (built once, cached in runlog.cache_dir())."""
  from electra_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  return builtin_corpus.builtin_vocab(runlog.cache_dir())


def load_tokenizer(vocab: str, ckpt: Pretrained | None,
                   lowercase: bool) -> tok_lib.WordPieceTokenizer:
  """vocab: a vocab.txt path | 'builtin' | '' (the checkpoint's vocab.txt).

  A checkpoint that records its own lower-casing overrides `lowercase`.
  """
  if ckpt is not None and ckpt.lowercase is not None:
    lowercase = ckpt.lowercase
  if vocab == 'builtin':
    path = builtin_vocab()
  elif vocab:
    path = Path(vocab)
  elif ckpt is not None and ckpt.vocab is not None:
    path = ckpt.vocab
  elif ckpt is not None and ckpt.vocab_tokens:  # e.g. an HF dir with tokenizer.json only
    tok = tok_lib.WordPieceTokenizer(ckpt.vocab_tokens, lowercase=lowercase, name=ckpt.path)
    log.info('vocab of %s: %d tokens, lowercase=%s', ckpt.path, tok.vocab_size, lowercase)
    return tok
  else:
    where = f'train.init_from={ckpt.path} has no vocab.txt' if ckpt else 'random init'
    raise ValueError(f'no vocab: {where}; set --config.data.vocab=/path/to/vocab.txt '
                     f'(e.g. bert-base-uncased-vocab.txt) or --config.data.vocab=builtin')
  if not Path(path).is_file():
    raise FileNotFoundError(f'vocab file {path} not found (config.data.vocab={vocab!r})')
  tok = tok_lib.WordPieceTokenizer.from_vocab(path, lowercase=lowercase)
  log.info('vocab %s: %d tokens, lowercase=%s', path, tok.vocab_size, lowercase)
  return tok


# ----------------------------------------------------------------------------- readers


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


def _restore(path: Path) -> dict:
  return checkpoint.read_msgpack(path)


def read_vocab(path: Path) -> list | None:
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
  if (p / 'config.json').is_file() and (p / 'checkpoints').is_dir():
    meta, params = load_pretraining_checkpoint(p, 'pretrainer')
    run = json.loads((p / 'config.json').read_text())
    conv = Converted('pretrainer', meta['model'], common.to_numpy(params),
                     tokens=meta.get('tokens') or run.get('tokens'),
                     vocab=read_vocab(p / 'export' / 'vocab.txt'),
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
  extra = dict(tokens=meta.get('tokens'), vocab=read_vocab(p / 'vocab.txt'),
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


def load_pretraining_checkpoint(workdir, which: str = 'discriminator',
                                step: int | None = None) -> tuple[dict, dict]:
  """(model_config dict, params) from a run dir's latest (or given) checkpoint.

  Reads RUN/config.json to rebuild the abstract state, restores it on this host's
  first device and cuts out the tower `which` ('discriminator', 'generator', or
  'pretrainer' for the full pre-training param tree). Arrays are numpy.
  """
  workdir = Path(workdir)
  cfg_file = workdir / 'config.json'
  if not cfg_file.is_file():
    raise FileNotFoundError(f'{cfg_file} not found; expected a pre-training workdir')
  config = ml_collections.ConfigDict(json.loads(cfg_file.read_text()))
  model = build.build_model(config)
  tx, _ = build.build_optimizer(config)
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1), ('data', 'fsdp'))
  abstract = build.abstract_train_state(config, model, tx, mesh)
  ckpt = checkpoint.Checkpointer(workdir, keep=10**9, abstract_state=abstract, async_save=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {workdir / checkpoint.CHECKPOINT_DIR}')
    if step is not None and step not in steps:
      raise ValueError(f'step={step} has no checkpoint in {workdir}; it has {steps}')
    restored = ckpt._restore_step(step if step is not None else steps[-1])  # pylint: disable=protected-access
  finally:
    ckpt.close()
  params = jax.tree.map(np.asarray, restored.state.params)
  sharing = config.model.sharing
  if which == 'discriminator':
    params = electra.discriminator_params(params, sharing)
  elif which == 'generator':
    params = electra.generator_params(params, sharing)
  elif which != 'pretrainer':
    raise ValueError(f"which={which!r}; expected 'discriminator', 'generator' or 'pretrainer'")
  model_config = {'model': config.model.to_dict(), 'tokens': config.tokens.to_dict(),
                  'step': restored.step}
  return model_config, params
