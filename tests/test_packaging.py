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


def test_configs_load_from_any_working_directory(tmp_path, monkeypatch):
  """configs/*.py import each other as `configs.*` without the repo on sys.path."""
  import importlib.util
  import sys
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, 'path', [p for p in sys.path if Path(p or '.').resolve() != REPO])
  for name in [m for m in sys.modules if m == 'configs' or m.startswith('configs.')]:
    monkeypatch.delitem(sys.modules, name)
  for rel, arg in (('configs/finetune.py', 'task=rte'), ('configs/ablations/efficiency.py', None)):
    spec = importlib.util.spec_from_file_location(f'_cfg_{Path(rel).stem}', REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config(arg) is not None, rel
