"""A fine-tuned model on disk: everything needed to predict, without the training config.

    finetuned.save('runs/rte/model', params, info, vocab_tokens)
    m = finetuned.load('runs/rte/model')   # -> SavedModel
    m.model_config, m.head, m.task, m.params, m.vocab, m.lowercase, m.seq_len

Layout of DIR/model/ (written by the fine-tuning loop at the end of a run):
  finetuned.msgpack   the FinetuneModel params: the encoder (`embeddings`, `discriminator`,
                      the same paths as ElectraModel) and the task head
  model_config.json   {'kind': 'finetuned', 'model': config.model fields, 'head': HeadConfig
                      fields, 'task': {'name', 'kind', 'label_list', task settings}, 'seq_len',
                      'lowercase', 'step'}
  vocab.txt           the vocabulary, in id order

`electra_jax.io.weights.load` reads this dir too (its encoder: a fine-tuned model can
start another fine-tuning), and `electra_jax.io.convert --from electra_jax --to hf`
writes the matching Hugging Face task class.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from flax import serialization

from electra_jax.io import checkpoint

KIND = 'finetuned'
PARAMS = 'finetuned'  # -> finetuned.msgpack


@dataclasses.dataclass
class SavedModel:
  path: Path
  model_config: dict  # config.model fields (electra.ModelConfig.from_config)
  head: dict  # heads.HeadConfig fields
  task: dict  # name, kind, label_list and the task's settings (SQuAD windows, ...)
  params: Any  # numpy tree of FinetuneModel
  seq_len: int
  lowercase: bool
  step: int

  @property
  def vocab(self) -> Path:
    return self.path / 'vocab.txt'


def is_saved_model(path) -> bool:
  """Whether `path` holds a fine-tuned model written by `save`."""
  f = Path(path) / 'model_config.json'
  if not f.is_file() or not (Path(path) / f'{PARAMS}.msgpack').is_file():
    return False
  return json.loads(f.read_text()).get('kind') == KIND


def save(out_dir, params, info: dict, vocab_tokens: list[str]) -> Path:
  """Writes the model dir (atomically: a complete new dir replaces the old one).

  info: model_config.json without 'kind' (model, head, task, seq_len, lowercase, step).
  All hosts must call it (sharded params are gathered); process 0 writes.
  """
  missing = sorted({'model', 'head', 'task', 'seq_len', 'lowercase', 'step'} - set(info))
  if missing:
    raise ValueError(f'finetuned.save: info lacks {missing}')
  checkpoint.export_params(out_dir, {PARAMS: params}, {'kind': KIND, **info}, vocab_tokens)
  return Path(out_dir)


def load(path) -> SavedModel:
  """The model dir at `path`; FileNotFoundError naming what is missing."""
  p = Path(path).expanduser()
  cfg_file, params_file, vocab = p / 'model_config.json', p / f'{PARAMS}.msgpack', p / 'vocab.txt'
  for f in (cfg_file, params_file, vocab):
    if not f.is_file():
      raise FileNotFoundError(f'{f} not found; expected a fine-tuned model dir (RUN/model, '
                              'written at the end of python -m electra_jax.finetune)')
  cfg = json.loads(cfg_file.read_text())
  if cfg.get('kind') != KIND:
    raise ValueError(f'{cfg_file}: kind={cfg.get("kind")!r}; expected {KIND!r} (a fine-tuned '
                     'model dir, RUN/model)')
  params = serialization.msgpack_restore(params_file.read_bytes())
  return SavedModel(path=p, model_config=cfg['model'], head=cfg['head'], task=cfg['task'],
                    params=params, seq_len=int(cfg['seq_len']), lowercase=bool(cfg['lowercase']),
                    step=int(cfg['step']))
