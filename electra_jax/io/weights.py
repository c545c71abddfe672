"""Starting weights and tokenizer for fine-tuning, whatever they come from.

    ckpt = load(path)          # Pretrained(path, kind, model_config, params, vocab, lowercase)
    tok = load_tokenizer(vocab_setting, ckpt, lowercase)

`path` may be
  an export dir       (model_config.json + discriminator.msgpack; electra_jax.io.checkpoint)
  a pre-training run  (config.json + checkpoints/; its latest checkpoint, the
                       discriminator cut out with the run's embedding sharing)
  a Hugging Face dir  (config.json with model_type electra + pytorch_model.bin /
                       model.safetensors; imported with electra_jax.io)
`params` is a nested numpy tree with (at least) the `ElectraModel` subtrees
`embeddings` and `discriminator`; anything else is reported as unexpected by
the fine-tuning loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from electra_jax.data import tokenizer as tok_lib

log = logging.getLogger(__name__)

_HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


@dataclasses.dataclass
class Pretrained:
  """Weights to start from. model_config: config.model fields (None: use the config's)."""
  path: str
  kind: str  # export | pretraining | huggingface
  model_config: dict | None
  params: Any
  vocab: Path | None = None  # vocab.txt that the weights were trained with
  lowercase: bool | None = None
  vocab_tokens: list | None = None  # the vocab in id order, when there is no vocab.txt


def detect_kind(path: Path) -> str:
  if (path / 'model_config.json').is_file() and (path / 'discriminator.msgpack').is_file():
    return 'export'
  if (path / 'config.json').is_file() and any((path / w).is_file() for w in _HF_WEIGHTS):
    return 'huggingface'
  if (path / 'config.json').is_file() and (path / 'checkpoints').is_dir():
    return 'pretraining'
  raise FileNotFoundError(
      f'init_checkpoint {path}: expected an export dir (model_config.json + '
      f'discriminator.msgpack), a pre-training workdir (config.json + checkpoints/) or a '
      f'Hugging Face dir (config.json + {" or ".join(_HF_WEIGHTS)})')


def load(path: str) -> Pretrained:
  """Loads the discriminator encoder weights at `path` (see the module docstring)."""
  p = Path(path)
  if not p.is_dir():
    raise FileNotFoundError(f'init_checkpoint {path} is not a directory')
  kind = detect_kind(p)
  from electra_jax.io import checkpoint  # Orbax import only when a checkpoint is used.
  if kind == 'export':
    cfg, params = checkpoint.load_exported(p, 'discriminator')
    vocab = p / 'vocab.txt'
    return Pretrained(str(p), kind, cfg['model'], params, vocab if vocab.is_file() else None,
                      cfg.get('lowercase'))
  if kind == 'pretraining':
    cfg, params = checkpoint.load_pretraining_checkpoint(p, 'discriminator')
    run_cfg = json.loads((p / 'config.json').read_text())
    return Pretrained(str(p), kind, cfg['model'], params, _run_vocab(p, run_cfg),
                      run_cfg['data']['lowercase'])
  return _load_huggingface(p)


def _run_vocab(workdir: Path, run_cfg: dict) -> Path | None:
  """The vocab a pre-training run used: its export's copy, else its config's setting."""
  export_vocab = workdir / 'export' / 'vocab.txt'
  if export_vocab.is_file():
    return export_vocab
  setting = run_cfg['data']['vocab']
  if setting == 'builtin':
    return builtin_vocab()
  return Path(setting) if setting else None


def _load_huggingface(path: Path) -> Pretrained:
  try:
    from electra_jax.io import huggingface as hf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'init_checkpoint {path} is a Hugging Face dir, but the importer '
                      f'electra_jax.io.huggingface is not available: {e}') from None
  converted = hf.load_hf(path)  # Logs any head it drops (MLM, RTD, a classifier).
  vocab = path / 'vocab.txt'
  return Pretrained(str(path), 'huggingface', converted.model, converted.params,
                    vocab if vocab.is_file() else None, converted.lowercase,
                    None if vocab.is_file() else converted.vocab)


def builtin_vocab() -> Path:
  """The `tiny` quickstart's 8192-token vocab (built once, cached in ~/.cache/electra_jax)."""
  from electra_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  return builtin_corpus.builtin_vocab(Path.home() / '.cache' / 'electra_jax')


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
    where = f'init_checkpoint {ckpt.path} has no vocab.txt' if ckpt else 'random init'
    raise ValueError(f'no vocab: {where}; set --config.data.vocab=/path/to/vocab.txt '
                     f'(e.g. bert-base-uncased-vocab.txt) or --config.data.vocab=builtin')
  if not Path(path).is_file():
    raise FileNotFoundError(f'vocab file {path} not found (config.data.vocab={vocab!r})')
  tok = tok_lib.WordPieceTokenizer.from_vocab(path, lowercase=lowercase)
  log.info('vocab %s: %d tokens, lowercase=%s', path, tok.vocab_size, lowercase)
  return tok
