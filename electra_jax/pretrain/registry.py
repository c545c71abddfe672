"""Every pre-training objective by name (`config.objective.name`): one registry.

    objective = get_objective('electra')   # objectives.Objective: loss, prepare_params, update_mask

'electra' (replaced-token detection, the default) is in objectives.py; the
paper's ablations are in variants.py.
"""

from __future__ import annotations

from electra_jax.pretrain import objectives
from electra_jax.pretrain import variants

OBJECTIVES: dict[str, objectives.Objective] = {'electra': objectives.ELECTRA, **variants.VARIANTS}
if set(OBJECTIVES) != set(objectives.NAMES):  # the config's names and the implementations agree
  raise ImportError(f'objectives.NAMES {sorted(objectives.NAMES)} != registry {sorted(OBJECTIVES)}')


def get_objective(name: str) -> objectives.Objective:
  """The objective called `name`; ValueError naming the bad value and the choices."""
  if name not in OBJECTIVES:
    raise ValueError(f'objective.name={name!r}; expected one of {sorted(OBJECTIVES)}')
  return OBJECTIVES[name]
