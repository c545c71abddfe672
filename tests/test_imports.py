"""The import graph has no cycles, counting imports inside functions too.

Every module of electra_jax/ (and benchmarks/, whose scripts import each other
by bare name) is parsed with `ast`; each `import` / `from ... import` anywhere
in it, at module level or deferred inside a function, is an edge to the module
it names. A cycle, even one hidden behind a function-level import, means two
modules that cannot be understood (or tested, or moved) one without the other.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules(root: Path, package: str | None) -> dict[str, Path]:
  """Dotted module name -> file, for every .py under root."""
  out = {}
  for path in sorted(root.rglob('*.py')):
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    name = '.'.join(([package] if package else []) + parts)
    out[name or package] = path
  return out


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
  """Names in `known` that the module's import statements (anywhere) refer to."""
  out = set()

  def add(name):
    # `import a.b.c` needs a.b.c; `from a.b import c` needs a.b.c if it is a module, else a.b.
    while name and name not in known:
      name = name.rpartition('.')[0]
    if name:
      out.add(name)

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        add(alias.name)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative import
        pkg = module if is_package else module.rpartition('.')[0]
        for _ in range(node.level - 1):
          pkg = pkg.rpartition('.')[0]
        base = f'{pkg}.{base}' if base else pkg
      for alias in node.names:
        full = f'{base}.{alias.name}'
        add(full if full in known else base)
  out.discard(module)
  return out


def import_graph(root: Path, package: str | None) -> dict[str, set[str]]:
  mods = _modules(root, package)
  known = set(mods)
  return {m: _imported(ast.parse(p.read_text(encoding='utf-8'), str(p)), m,
                       p.name == '__init__.py', known)
          for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def _describe(comps, graph) -> str:
  lines = []
  for comp in comps:
    members = set(comp)
    edges = [f'{a} -> {b}' for a in comp for b in sorted(graph[a] & members)]
    lines.append(f'cycle among {comp}: ' + '; '.join(edges))
  return '\n'.join(lines)


@pytest.mark.parametrize('root,package', [('electra_jax', 'electra_jax'), ('benchmarks', None)])
def test_no_import_cycles(root, package):
  graph = import_graph(REPO / root, package)
  assert graph, f'no modules found under {root}/'
  comps = cycles(graph)
  assert not comps, f'{len(comps)} import cycle(s) in {root}/:\n' + _describe(comps, graph)


def test_cycle_finder_sees_function_level_imports(tmp_path):
  pkg = tmp_path / 'pkg'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg import b\n')
  (pkg / 'b.py').write_text('def f():\n  from pkg import a\n  return a\n')
  (pkg / 'c.py').write_text('import pkg.a\n')
  graph = import_graph(pkg, 'pkg')
  assert graph['pkg.b'] == {'pkg.a'} and graph['pkg.c'] == {'pkg.a'}
  assert cycles(graph) == [['pkg.a', 'pkg.b']]


def test_run_logs_do_not_import_torch(tmp_path):
  """TensorBoard logging keeps torch out of the process (tensorboardX would import it: ~2.4 s
  and ~180 MB in every run), and torch stays importable afterwards."""
  pytest.importorskip('torch')  # without torch installed there is nothing to keep out
  code = (
      'import sys\n'
      'from electra_jax import runlog\n'
      'w = runlog.MetricsWriter(sys.argv[1]); w.write(1, {"loss": 1.5}); w.close()\n'
      'assert "torch" not in sys.modules, "torch was imported"\n'
      'import torch\n'
      'print("ok", torch.ones(2).sum().item())\n')
  r = subprocess.run([sys.executable, '-c', code, str(tmp_path)], cwd=REPO, capture_output=True,
                     text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert r.returncode == 0 and 'ok 2.0' in r.stdout, r.stdout + r.stderr[-2000:]
  events = list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert events and b'train/loss' in events[0].read_bytes()
