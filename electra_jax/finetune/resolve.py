"""Which model a fine-tuning run builds: the tokenizer, and config.model resolved against the
starting checkpoint's (the checkpoint fixes the sizes and vocab; how the model runs is the
fine-tuning config's)."""

from __future__ import annotations

import dataclasses

from electra_jax import configlib
from electra_jax.io import weights
from electra_jax.models import electra


def load_tokenizer(config, checkpoint: weights.Pretrained | None):
  return weights.load_tokenizer(config.data.vocab, checkpoint, config.data.lowercase)


# config.model keys that fix the parameter shapes. Starting from a checkpoint, its values are
# used; a different value asked for (a --config.model.* override, or size=) is refused.
# (io.weights.STRUCTURE without the generator's: fine-tuning loads the discriminator alone.)
STRUCTURAL_KEYS = tuple(k for k in weights.STRUCTURE
                        if k not in ('generator_fraction', 'generator_layers', 'sharing'))
# How the model runs, not what it holds: the fine-tuning config's values are always applied.
RUNTIME_KEYS = ('dropout_rate', 'attention_dropout_rate', 'dtype', 'matmul_dtype',
                'attention_impl', 'remat', 'recompute_activations')
# Every other key (layer_norm_eps, initializer_range, the generator's and sharing keys) is
# the checkpoint's unless asked for explicitly, which is then applied.


def default_model(size: str) -> dict:
  """config.model of configs/finetune.py for `size` before any override (vocab_size 0)."""
  d = {f.name: f.default for f in dataclasses.fields(electra.ModelConfig)
       if f.default is not dataclasses.MISSING}
  d.update({k: v for k, v in configlib.size_table(size).items()
            if k in configlib.SHAPE_KEYS + ('generator_fraction',)})
  d['vocab_size'] = 0
  return d


def requested_model_keys(config) -> dict:
  """{key: where} of the model keys a config asks for: those off the size's defaults.

  The command line knows better (its --config.model.* flags and whether size= was given);
  electra_jax.finetune passes that instead.
  """
  defaults = default_model(config.size)
  return {k: 'the config' for k, v in dict(config.model).items()
          if k in defaults and v != defaults[k]}


def resolve_model(config, ckpt: weights.Pretrained | None, tokenizer,
                  requested: dict | None = None) -> dict:
  """The config.model that runs, as a dict (see STRUCTURAL_KEYS and RUNTIME_KEYS).

  requested: {key: where it was asked for, e.g. '--config.model.hidden_size' or 'size=base'};
  None = `requested_model_keys(config)`.
  """
  requested = requested_model_keys(config) if requested is None else requested
  asked = dict(config.model)
  if ckpt is None or ckpt.model_config is None:
    model = dict(asked)
  else:
    have = dict(ckpt.model_config)
    model = {**asked, **have}
    for k in RUNTIME_KEYS:
      model[k] = asked[k]
    refused = []
    for k, where in sorted(requested.items()):
      if k in RUNTIME_KEYS or k not in asked:
        continue
      if k in STRUCTURAL_KEYS:
        if k == 'vocab_size' and not asked[k]:
          continue
        if k in have and asked[k] != have[k]:
          refused.append(f'model.{k}={asked[k]} ({where}) but the checkpoint has {have[k]}')
      else:
        model[k] = asked[k]
    if refused:
      raise ValueError(f'train.init_from {ckpt.path} fixes the model\'s sizes and vocab: '
                       + '; '.join(refused) + '. Drop these settings to fine-tune it as it is, '
                       "or train from random init (--config.train.init_from='')")
  if not model['vocab_size']:
    model['vocab_size'] = tokenizer.vocab_size
  if model['vocab_size'] != tokenizer.vocab_size:
    raise ValueError(f'model vocab_size={model["vocab_size"]} but the vocab '
                     f'{getattr(tokenizer, "name", None) or config.data.vocab or "of the checkpoint"}'
                     f' has {tokenizer.vocab_size} tokens')
  if config.train.seq_len > model['max_position_embeddings']:
    raise ValueError(f'train.seq_len={config.train.seq_len} is longer than the '
                     f'model\'s max_position_embeddings={model["max_position_embeddings"]}; '
                     'lower train.seq_len')
  return model
