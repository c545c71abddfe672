"""The paper's objective ablations, each a named `objectives.Objective`.

Filled in by the ablations work (issue 7); `objectives.registry()` merges
`VARIANTS` with the default ELECTRA objective.
"""

VARIANTS = {}
