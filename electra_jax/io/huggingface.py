"""Hugging Face ELECTRA directories <-> electra_jax trees.

One HF directory holds one tower: ElectraForPreTraining (discriminator +
replaced-token head), ElectraForMaskedLM (generator + MLM head, output layer
tied to the word embeddings) or ElectraModel (body only). Names follow
transformers' modeling_electra.py; torch Linear weights are [out, in], the
transpose of a Flax Dense kernel; LayerNorm weight / bias are scale / bias.

Reading needs only numpy + safetensors (torch only for pytorch_model.bin);
writing produces config.json, model.safetensors and, given a vocab,
vocab.txt + tokenizer_config.json + special_tokens_map.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from electra_jax.io import common

# Single-tower tree kind <-> transformers class.
KIND_TO_CLASS = {'discriminator': 'ElectraForPreTraining', 'generator': 'ElectraForMaskedLM',
                 'model': 'ElectraModel'}
CLASS_TO_KIND = {v: k for k, v in KIND_TO_CLASS.items()}
# Non-parameter buffers some transformers versions saved.
_BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')


def _leaf(component: str, path) -> tuple:
  """Last path component -> (HF suffix, transposed?)."""
  if component == 'kernel':
    return 'weight', True
  if component == 'scale':
    return 'weight', False
  if component == 'bias':
    return 'bias', False
  if component.endswith('_embeddings'):
    return f'{component}.weight', False
  raise ValueError(f'no Hugging Face name for parameter {"/".join(path)}')


def rename(path, prefix: str = 'electra.') -> tuple:
  """A single-tower tree path -> (HF state-dict name, stored transposed?).

  `prefix` is 'electra.' inside the head models and '' for a bare ElectraModel.
  """
  top, *rest = path
  if top == 'generator_predictions' and rest == ['output_bias']:
    return 'generator_lm_head.bias', False
  parts = []
  for c in rest[:-1]:
    parts.extend(c.split('_', 1) if c.startswith('layer_') else [c])  # layer_3 -> layer.3
  suffix, transposed = _leaf(rest[-1], path)
  if top == 'embeddings':
    head = [prefix + 'embeddings']
  elif top in ('discriminator', 'generator'):
    head = [prefix.rstrip('.')] if prefix else []
  elif top in ('discriminator_predictions', 'generator_predictions'):
    head = [top]
  else:
    raise ValueError(f'no Hugging Face name for parameter {"/".join(path)}')
  return '.'.join(head + parts + [suffix]), transposed


# ----------------------------------------------------------------------------- reading


def read_state_dict(directory: str | os.PathLike) -> dict:
  """{name: np.ndarray} from model.safetensors (or its sharded index) or pytorch_model.bin."""
  d = Path(directory)
  if (d / 'model.safetensors').is_file():
    files = [d / 'model.safetensors']
  elif (d / 'model.safetensors.index.json').is_file():
    index = json.loads((d / 'model.safetensors.index.json').read_text())
    files = [d / f for f in sorted(set(index['weight_map'].values()))]
  elif (d / 'pytorch_model.bin').is_file():
    return _read_torch_bin(d / 'pytorch_model.bin')
  else:
    raise FileNotFoundError(f'{d}: no model.safetensors, model.safetensors.index.json or '
                            'pytorch_model.bin')
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  out = {}
  for f in files:
    try:
      out.update(load_file(str(f)))
    except Exception as e:  # noqa: BLE001 -- SafetensorError, OSError of a cut file
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise ValueError(f'{f} is truncated or corrupt ({first}); download or convert it '
                       'again') from None
  return out


def _read_torch_bin(path: Path) -> dict:
  """A weights-only pytorch_model.bin; a full pickle is refused (unpickling runs code)."""
  import pickle  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  try:
    sd = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    raise ValueError(
        f'{path} is a pickle that is not weights-only; electra_jax reads only safetensors or '
        'weights-only .bin files, since loading any other pickle can run code. Convert it '
        'where you trust it, e.g. `transformers.AutoModel.from_pretrained(DIR)'
        '.save_pretrained(OUT, safe_serialization=True)`, and point at OUT') from None
  except (RuntimeError, EOFError, OSError) as e:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ValueError(f'{path} is truncated or corrupt ({first}); download or convert it '
                     'again') from None
  if not isinstance(sd, dict):
    raise ValueError(f'{path} holds a {type(sd).__name__}, not a state dict of tensors')
  odd = [f'{k} ({type(v).__name__})' for k, v in sd.items() if not isinstance(v, torch.Tensor)]
  if odd:
    raise ValueError(f'{path} is not a state dict of tensors: it holds {", ".join(odd[:5])}')
  return {k: v.float().numpy() for k, v in sd.items()}


def _normalize_names(sd: dict) -> dict:
  """Old checkpoints name LayerNorm parameters gamma / beta."""
  out = {}
  for k, v in sd.items():
    if k.endswith('LayerNorm.gamma'):
      k = k[:-len('gamma')] + 'weight'
    elif k.endswith('LayerNorm.beta'):
      k = k[:-len('beta')] + 'bias'
    out[k] = v
  return out


def model_from_hf_config(cfg: dict) -> dict:
  """HF config.json -> config.model fields (the tower described as the discriminator)."""
  where = cfg.get('_path', 'config.json')
  if cfg.get('model_type', 'electra') != 'electra':
    raise ValueError(f'{where}: model_type={cfg.get("model_type")!r}; expected "electra"')
  act = cfg.get('hidden_act', 'gelu')
  if act != 'gelu':
    raise ValueError(f'{where}: hidden_act={act!r}; electra_jax implements only "gelu" '
                     '(exact erf GELU)')
  pos = cfg.get('position_embedding_type', 'absolute')
  if pos != 'absolute':
    raise ValueError(f'{where}: position_embedding_type={pos!r}; expected "absolute"')
  emb = cfg.get('embedding_size') or cfg['hidden_size']
  return common.model_dict(
      vocab_size=cfg['vocab_size'], embedding_size=emb, hidden_size=cfg['hidden_size'],
      num_layers=cfg['num_hidden_layers'], num_heads=cfg['num_attention_heads'],
      intermediate_size=cfg['intermediate_size'],
      max_position_embeddings=cfg.get('max_position_embeddings', 512),
      type_vocab_size=cfg.get('type_vocab_size', 2),
      dropout_rate=cfg.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=cfg.get('attention_probs_dropout_prob', 0.1),
      layer_norm_eps=cfg.get('layer_norm_eps', 1e-12),
      initializer_range=cfg.get('initializer_range', 0.02),
      generator_fraction=1.0)


def read_vocab(directory: Path) -> tuple:
  """(tokens or None, lowercase or None) from vocab.txt / tokenizer.json / tokenizer_config.json."""
  vocab, lowercase = None, None
  if (directory / 'vocab.txt').is_file():
    vocab = (directory / 'vocab.txt').read_text(encoding='utf-8').split('\n')
    if vocab and vocab[-1] == '':
      vocab = vocab[:-1]
  elif (directory / 'tokenizer.json').is_file():
    model = json.loads((directory / 'tokenizer.json').read_text(encoding='utf-8')).get('model', {})
    if model.get('type') == 'WordPiece':
      index = model['vocab']
      vocab = sorted(index, key=index.get)
  tc = directory / 'tokenizer_config.json'
  if tc.is_file():
    lowercase = json.loads(tc.read_text(encoding='utf-8')).get('do_lower_case')
  return vocab, lowercase


def import_dir(directory: str | os.PathLike, *, strict: bool = True) -> common.Converted:
  """One HF ELECTRA directory -> Converted of kind discriminator / generator / model.

  The kind follows the weights present: discriminator_predictions.* ->
  'discriminator', generator_predictions.* -> 'generator', neither -> 'model'.
  With strict=False, other heads (e.g. a fine-tuned classifier) are dropped.
  """
  d = Path(directory)
  if not (d / 'config.json').is_file():
    raise FileNotFoundError(f'{d}: no config.json (expected a Hugging Face ELECTRA directory)')
  hf_cfg = json.loads((d / 'config.json').read_text())
  hf_cfg['_path'] = str(d / 'config.json')
  model = model_from_hf_config(hf_cfg)
  sd = _normalize_names(read_state_dict(d))
  has = lambda p: any(k.startswith(p) for k in sd)  # noqa: E731
  if has('discriminator_predictions.'):
    kind = 'discriminator'
  elif has('generator_predictions.'):
    kind = 'generator'
  else:
    kind = 'model'
  prefix = 'electra.' if has('electra.') else ''
  tied = 'generator_lm_head.weight'
  if kind == 'generator' and tied in sd:
    # Older files store the tied output matrix; electra_jax ties it by construction.
    word = sd.get(prefix + 'embeddings.word_embeddings.weight')
    if word is None or np.shape(word) != np.shape(sd[tied]) or not np.array_equal(word, sd[tied]):
      raise ValueError(f'{d}: generator_lm_head.weight (shape {np.shape(sd[tied])}) differs from '
                       f'{prefix}embeddings.word_embeddings.weight (shape {np.shape(word)}); '
                       'electra_jax ties the output layer to the word embeddings')
  ignore = lambda n: n == tied or n.endswith(_BUFFERS)  # noqa: E731
  cfg = common.electra.ModelConfig.from_config(model)
  params = common.gather(common.expected_shapes(cfg, kind), lambda p: rename(p, prefix),
                         {k: np.shape(v) for k, v in sd.items()}, sd.__getitem__,
                         what=f'Hugging Face checkpoint {d}', model=model, ignore=ignore,
                         strict=strict)
  vocab, lowercase = read_vocab(d)
  if vocab is not None and len(vocab) != model['vocab_size']:
    raise ValueError(f'{d}: the vocab file has {len(vocab)} tokens but config.json has '
                     f'vocab_size={model["vocab_size"]}')
  # Without a vocab only pad_token_id is known, so config.tokens stays unset.
  return common.Converted(kind, model, params, tokens=common.tokens_from_vocab(vocab),
                          vocab=vocab, lowercase=lowercase)


# ----------------------------------------------------------------------------- writing


def hf_config(conv: common.Converted, architecture: str) -> dict:
  """config.json for a single-tower Converted (its config describes that tower)."""
  m = conv.model
  cfg = {
      'architectures': [architecture],
      'model_type': 'electra',
      'vocab_size': m['vocab_size'],
      'embedding_size': m['embedding_size'],
      'hidden_size': m['hidden_size'],
      'num_hidden_layers': m['num_layers'],
      'num_attention_heads': m['num_heads'],
      'intermediate_size': m['intermediate_size'],
      'hidden_act': 'gelu',
      'hidden_dropout_prob': m['dropout_rate'],
      'attention_probs_dropout_prob': m['attention_dropout_rate'],
      'max_position_embeddings': m['max_position_embeddings'],
      'type_vocab_size': m['type_vocab_size'],
      'initializer_range': m['initializer_range'],
      'layer_norm_eps': m['layer_norm_eps'],
      'position_embedding_type': 'absolute',
      'tie_word_embeddings': True,
      'dtype': 'float32',
      'summary_type': 'first',
      'summary_use_proj': True,
      'summary_activation': 'gelu',
      'summary_last_dropout': 0.1,
  }
  cfg['pad_token_id'] = conv.tokens['pad_id'] if conv.tokens else 0
  return cfg


def write_tokenizer(out: Path, vocab: list, lowercase: bool, max_length: int):
  """vocab.txt + tokenizer_config.json + special_tokens_map.json (BERT WordPiece)."""
  (out / 'vocab.txt').write_text(''.join(t + '\n' for t in vocab), encoding='utf-8')
  special = {'unk_token': '[UNK]', 'sep_token': '[SEP]', 'pad_token': '[PAD]',
             'cls_token': '[CLS]', 'mask_token': '[MASK]'}
  present = set(vocab)
  special = {k: v for k, v in special.items() if v in present}
  tok_cfg = {'tokenizer_class': 'ElectraTokenizer', 'do_lower_case': bool(lowercase),
             'do_basic_tokenize': True, 'tokenize_chinese_chars': True, 'strip_accents': None,
             'model_max_length': max_length, 'clean_up_tokenization_spaces': True, **special}
  (out / 'tokenizer_config.json').write_text(json.dumps(tok_cfg, indent=2) + '\n')
  (out / 'special_tokens_map.json').write_text(json.dumps(special, indent=2) + '\n')


def export_dir(conv: common.Converted, out_dir: str | os.PathLike, architecture: str) -> Path:
  """Writes a single-tower Converted as an HF directory `transformers` loads as `architecture`."""
  if architecture not in CLASS_TO_KIND:
    raise ValueError(f'architecture={architecture!r}; expected one of {sorted(CLASS_TO_KIND)}')
  kind = CLASS_TO_KIND[architecture]
  conv = common.single_tower(conv, kind)
  common.check_tree(conv.params, common.expected_shapes(conv.model_config, kind),
                    what=f'electra_jax {kind} params', model=conv.model)
  prefix = '' if kind == 'model' else 'electra.'
  tensors = common.scatter(conv.params, lambda p: rename(p, prefix))
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
  (out / 'config.json').write_text(json.dumps(hf_config(conv, architecture), indent=2) + '\n')
  if conv.vocab is not None:
    if len(conv.vocab) != conv.model['vocab_size']:
      raise ValueError(f'vocab has {len(conv.vocab)} tokens but the model has '
                       f'vocab_size={conv.model["vocab_size"]}')
    write_tokenizer(out, conv.vocab, True if conv.lowercase is None else conv.lowercase,
                    conv.model['max_position_embeddings'])
  return out


def load_hf(directory: str | os.PathLike) -> common.Converted:
  """The encoder body of an HF ELECTRA directory as `ElectraModel` params (kind 'model').

  What fine-tuning starts from (electra_jax.io.weights): any head in the
  directory (replaced-token, MLM, or a fine-tuned classifier) is dropped and
  logged; a generator's tower becomes the encoder.
  """
  conv = import_dir(directory, strict=False)
  return common.single_tower(conv, 'model')


# ----------------------------------------------------------------------------- fine-tuned models

# Head kind of a fine-tuned model (electra_jax.io.finetuned) -> transformers class.
TASK_CLASSES = {'classification': 'ElectraForSequenceClassification',
                'regression': 'ElectraForSequenceClassification',
                'span': 'ElectraForQuestionAnswering',
                'tagging': 'ElectraForTokenClassification'}
# Our head's parameter paths -> the HF class's (Dense kernels are stored transposed).
_HEAD_NAMES = {
    ('classifier', 'dense'): 'classifier.dense',  # head.form=hf: dense -> GELU -> ...
    ('classifier', 'out_proj'): 'classifier.out_proj',
    ('qa_outputs', 'dense'): 'qa_outputs',
    ('tagger', 'dense'): 'classifier',
}


def check_exportable(head: dict, where: str) -> str:
  """The transformers class a fine-tuned head exports to exactly; ValueError saying why not."""
  kind = head['kind']
  if kind in ('classification', 'regression') and head.get('form', 'official') != 'hf':
    raise ValueError(
        f'{where} has the official ELECTRA {kind} head (dropout, one dense layer on [CLS]), '
        "but Hugging Face's ElectraForSequenceClassification computes dense -> GELU -> "
        'dropout -> dense on [CLS], which cannot represent it: the export would change the '
        'predictions. Fine-tune with --config.head.form=hf to get a model that exports exactly')
  if kind == 'span' and (head.get('joint') or head.get('answerability')):
    parts, flags = [], []
    if head.get('joint'):
      parts.append('the joint start/end head (end logits conditioned on the start, '
                   'predicted with a beam)')
      flags.append('--config.head.qa_joint=False')
    if head.get('answerability'):
      parts.append('a SQuAD 2.0 answerability classifier')
      flags.append('--config.head.qa_answerable=False')
    raise ValueError(
        f'{where} has {" and ".join(parts)}; transformers has no ELECTRA class for '
        f'{"them" if len(parts) > 1 else "it"} (ElectraForQuestionAnswering scores start and '
        'end independently, with no classifier), so the export would change the predictions. '
        f'Fine-tune with {" ".join(flags)} to get a model that exports exactly')
  return TASK_CLASSES[kind]


def export_finetuned(saved, out_dir: str | os.PathLike) -> Path:
  """A fine-tuned model dir (electra_jax.io.finetuned.SavedModel) -> an HF task directory.

  Writes ElectraForSequenceClassification (classification with head.form=hf, regression
  with problem_type=regression), ElectraForQuestionAnswering (SQuAD with the independent
  start / end head and no answerability classifier) or
  ElectraForTokenClassification (chunking), with id2label from the label list, and the
  tokenizer files. Refuses (check_exportable) what no HF class computes exactly.
  """
  architecture = check_exportable(saved.head, str(saved.path))
  encoder = {k: saved.params[k] for k in ('embeddings', 'discriminator')}
  conv = common.Converted('model', common.model_dict(**saved.model_config), encoder,
                          tokens=common.tokens_from_vocab(_vocab_list(saved.vocab)),
                          vocab=_vocab_list(saved.vocab), lowercase=saved.lowercase)
  common.check_tree(conv.params, common.expected_shapes(conv.model_config, 'model'),
                    what='fine-tuned encoder params', model=conv.model)
  tensors = common.scatter(conv.params, lambda p: rename(p, 'electra.'))
  head_params = {k: v for k, v in saved.params.items() if k not in encoder}
  for (module, layer), name in _HEAD_NAMES.items():
    dense = head_params.get(module, {}).pop(layer, None)
    if dense is not None:
      tensors[f'{name}.weight'] = np.ascontiguousarray(np.asarray(dense['kernel'], np.float32).T)
      tensors[f'{name}.bias'] = np.asarray(dense['bias'], np.float32)
  left = sorted(f'{m}/{k}' for m, v in head_params.items() for k in v)
  if left:
    raise ValueError(f'{saved.path}: head parameters {left} have no place in {architecture}')
  cfg = hf_config(conv, architecture)
  kind, labels = saved.head['kind'], list(saved.task['label_list'])
  if kind == 'span':
    cfg['num_labels'] = 2  # start, end
  elif kind == 'regression':
    cfg.update(num_labels=1, problem_type='regression')
  else:
    cfg.update(id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    if kind == 'classification':
      cfg['problem_type'] = 'single_label_classification'
  cfg['classifier_dropout'] = saved.head['dropout_rate']
  cfg['electra_jax'] = {'task': saved.task, 'seq_len': saved.seq_len, 'step': saved.step}
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
  (out / 'config.json').write_text(json.dumps(cfg, indent=2) + '\n')
  write_tokenizer(out, conv.vocab, saved.lowercase, saved.seq_len)
  return out


def _vocab_list(path: Path) -> list:
  tokens = path.read_text(encoding='utf-8').split('\n')
  return tokens[:-1] if tokens and tokens[-1] == '' else tokens
