"""Small helpers shared by the config files: typed `arg` strings and size tables.

`get_config(arg)` in every config file takes a string such as
`size=small,runlocal=True` (big_vision's convention). `parse_arg` turns it into
a `ConfigDict` whose value types come from the defaults, so a typo or a wrong
type fails at once with the key's name.
"""

from __future__ import annotations

import ml_collections


def _convert(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() in ('1', 'true', 'yes', 'y'):
      return True
    if value.lower() in ('0', 'false', 'no', 'n'):
      return False
    raise ValueError(f'config arg {key}={value!r}: expected a boolean')
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f'config arg {key}={value!r}: expected an integer') from None
  if isinstance(default, float):
    try:
      return float(value)
    except ValueError:
      raise ValueError(f'config arg {key}={value!r}: expected a float') from None
  return value


def parse_arg(arg: str | None, *, lazy_field: str | None = None, **defaults) -> ml_collections.ConfigDict:
  """Parses `k1=v1,k2=v2` into a ConfigDict typed by `defaults`.

  A bare word without `=` (e.g. `small`) sets `lazy_field` (e.g. `size`), so
  `configs/pretrain.py:small` and `configs/pretrain.py:size=small` both work.
  Unknown keys raise, naming the key and the accepted ones.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for part in arg.split(','):
    part = part.strip()
    if not part:
      continue
    if '=' not in part:
      if lazy_field is None:
        raise ValueError(f'config arg {part!r}: expected key=value')
      key, value = lazy_field, part
    else:
      key, value = part.split('=', 1)
      key, value = key.strip(), value.strip()
    if key not in defaults:
      raise ValueError(f'unknown config arg {key!r}; expected one of {sorted(defaults)}')
    out[key] = _convert(key, value, defaults[key])
  return out


# The paper's model sizes (docs/reference.md, "Model sizes"), plus `tiny`
# for CPU smoke runs and tests. generator_fraction scales the generator's
# hidden size (and FFN and heads) relative to the discriminator.
SIZES = {
    'tiny': dict(num_layers=2, hidden_size=64, intermediate_size=256, num_heads=2,
                 embedding_size=32, generator_fraction=0.5, mask_prob=0.15,
                 learning_rate=1e-3, batch_size=32, seq_len=64, num_steps=3000,
                 warmup_steps=300),
    'small': dict(num_layers=12, hidden_size=256, intermediate_size=1024, num_heads=4,
                  embedding_size=128, generator_fraction=0.25, mask_prob=0.15,
                  learning_rate=5e-4, batch_size=128, seq_len=128, num_steps=1_000_000,
                  warmup_steps=10_000),
    'base': dict(num_layers=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                 embedding_size=768, generator_fraction=1 / 3, mask_prob=0.15,
                 learning_rate=2e-4, batch_size=256, seq_len=512, num_steps=766_000,
                 warmup_steps=10_000),
    'large': dict(num_layers=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                  embedding_size=1024, generator_fraction=0.25, mask_prob=0.25,
                  learning_rate=2e-4, batch_size=2048, seq_len=512, num_steps=400_000,
                  warmup_steps=10_000),
}


# The keys of a size's table that fix the encoder's shape (a checkpoint has one of them).
SHAPE_KEYS = ('num_layers', 'hidden_size', 'intermediate_size', 'num_heads', 'embedding_size')


def size_table(size: str) -> dict:
  if size not in SIZES:
    raise ValueError(f'unknown size {size!r}; expected one of {sorted(SIZES)}')
  return dict(SIZES[size])
