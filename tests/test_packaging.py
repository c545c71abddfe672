"""pyproject.toml and requirements.txt declare the same requirements; the console scripts exist."""

import importlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
  return tomllib.loads((REPO / 'pyproject.toml').read_text())


def test_requirements_txt_is_pyproject_core_plus_extras():
  project = _pyproject()['project']
  declared = set(project['dependencies'])
  for extra in project['optional-dependencies'].values():
    declared |= {r for r in extra if not r.startswith('electra_jax[')}
  listed = set()
  for line in (REPO / 'requirements.txt').read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      listed.add(line)
  assert listed == declared, (sorted(listed - declared), sorted(declared - listed))


def test_console_scripts_point_at_functions():
  for name, target in _pyproject()['project']['scripts'].items():
    module, _, attr = target.partition(':')
    assert callable(getattr(importlib.import_module(module), attr)), name
