"""An offline default pre-training corpus: the docstrings of Python's standard library.

Every Python installation carries several MB of English prose in its standard library's
docstrings, so `builtin:python-docs` lets pre-training (and its tests and smoke runs) work
on a machine with no data and no network. The text is written in the pre-training text
format: one paragraph per line, a blank line between documents. A document is one module
docstring, one top-level function, or one class with its methods' docstrings; its first line
is the object's dotted name.

`write_builtin_corpus(out_dir)` writes the corpus (cached: reused when already complete);
`builtin_vocab(cache_dir)` trains an 8192-token WordPiece vocab on it (cached).
Both are deterministic for a given Python installation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import flags

from electra_jax import cli

BUILTIN_SOURCE = 'builtin:python-docs'
BUILTIN_VOCAB_SIZE = 8192
NUM_FILES = 4
_FORMAT_VERSION = 1

# Top-level modules never imported: side effects on import (antigravity opens a browser,
# `this` prints, turtledemo/idlelib/tkinter start or need a GUI), test suites, or packaging
# helpers whose import is slow or noisy.
_SKIP_TOP = {
    'antigravity', 'this', 'idlelib', 'tkinter', 'turtle', 'turtledemo', 'test', 'pydoc_data', '__main__', '__phello__', '__hello__', 'xxsubtype',
    'xxlimited', 'xxlimited_35', '_xxtestfuzz', 'msilib', 'winreg', 'winsound', 'msvcrt',
    '_winapi', 'nt', 'pip', 'setuptools', 'distutils',
}


def _paragraphs(doc: str) -> list[str]:
  """Splits a cleaned docstring into paragraphs, each joined onto one line."""
  paras, cur = [], []
  for line in doc.splitlines():
    line = line.strip()
    if line:
      cur.append(line)
    elif cur:
      paras.append(' '.join(cur))
      cur = []
  if cur:
    paras.append(' '.join(cur))
  return paras


def _walk_stdlib(out_path: str) -> None:
  """Imports stdlib modules and writes all documents to `out_path` (runs in a subprocess)."""
  import importlib
  import inspect
  import pkgutil
  import warnings

  warnings.simplefilter('ignore')
  names = set()
  for top in sorted(sys.stdlib_module_names):
    if top in _SKIP_TOP or top.startswith(('_test', '__')):
      continue
    try:
      mod = importlib.import_module(top)
    except BaseException:  # noqa: BLE001 -- any failure (ImportError, SystemExit...) just skips it
      continue
    names.add(top)
    path = getattr(mod, '__path__', None)
    if path:
      for info in pkgutil.walk_packages(path, prefix=top + '.', onerror=lambda _: None):
        if not any(p.startswith('_test') or p in ('test', 'tests', 'idle_test', '__main__')
                   for p in info.name.split('.')):
          names.add(info.name)

  seen_docs = set()

  def clean(obj) -> str | None:
    # inspect.cleandoc on the object's own __doc__ rather than inspect.getdoc: getdoc falls back
    # to the inherited docstring, which would repeat e.g. object.__init__'s text thousands of times.
    doc = getattr(obj, '__doc__', None)
    if not isinstance(doc, str) or not doc.strip():
      return None
    doc = inspect.cleandoc(doc)
    key = hashlib.sha1(doc.encode('utf-8', 'replace')).digest()
    if key in seen_docs:
      return None
    seen_docs.add(key)
    return doc

  with open(out_path, 'w', encoding='utf-8', errors='replace') as out:
    def emit(title, parts):
      lines = [p for doc in parts for p in _paragraphs(doc)]
      if lines:
        out.write(title + '\n' + '\n'.join(lines) + '\n\n')

    for name in sorted(names):
      try:
        mod = importlib.import_module(name)
      except BaseException:  # noqa: BLE001
        continue
      doc = clean(mod)
      if doc:
        emit(name, [doc])
      for attr in sorted(vars(mod)):
        if attr.startswith('__'):
          continue
        obj = vars(mod)[attr]
        if getattr(obj, '__module__', None) != name:
          continue  # re-exported from elsewhere: documented where it is defined
        if inspect.isclass(obj):
          parts = [d for d in [clean(obj)] if d]
          for meth_name in sorted(vars(obj)):
            meth = vars(obj)[meth_name]
            if isinstance(meth, (staticmethod, classmethod)):
              meth = meth.__func__
            if inspect.isfunction(meth) or inspect.ismethoddescriptor(meth) or isinstance(meth, property):
              d = clean(meth)
              if d:
                parts.append(d)
          emit(f'{name}.{attr}', parts)
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
          d = clean(obj)
          if d:
            emit(f'{name}.{attr}', [d])

    # The language reference and library topics that pydoc shows offline (`help('if')`).
    try:
      from pydoc_data.topics import topics
    except ImportError:
      topics = {}
    for key in sorted(topics):
      emit(f'pydoc topic {key}', [topics[key]])


def _split_documents(text: str, num_files: int) -> list[str]:
  """Splits the corpus at document boundaries into `num_files` parts of similar size."""
  docs = [d for d in text.split('\n\n') if d.strip()]
  target = max(1, len(text) // num_files)
  parts, cur, size = [], [], 0
  for d in docs:
    cur.append(d)
    size += len(d) + 2
    if size >= target and len(parts) < num_files - 1:
      parts.append('\n\n'.join(cur) + '\n\n')
      cur, size = [], 0
  if cur:
    parts.append('\n\n'.join(cur) + '\n\n')
  return parts


def write_builtin_corpus(out_dir: str | os.PathLike) -> list[Path]:
  """Writes the stdlib-docstring corpus as `NUM_FILES` text files under `out_dir`.

  Returns the sorted file paths. Reuses a complete earlier build (marked by `done.json`, which
  also records the Python version). The module walk runs in a subprocess so that imports'
  side effects (printing, signal handlers, threads) never touch the caller.
  """
  out_dir = Path(out_dir)
  marker = out_dir / 'done.json'
  want = {'version': _FORMAT_VERSION, 'python': sys.version.split()[0], 'num_files': NUM_FILES}
  if marker.exists():
    got = json.loads(marker.read_text())
    if {k: got.get(k) for k in want} == want:
      return [out_dir / f for f in got['files']]
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp_dir = Path(tempfile.mkdtemp(prefix='.builtin_corpus_tmp', dir=out_dir.parent))
  try:
    raw = tmp_dir / 'all.txt'
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONHASHSEED='0', PYTHONWARNINGS='ignore', DISPLAY='',
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    r = subprocess.run([sys.executable, '-c',
                        'import sys; from electra_jax.data.builtin_corpus import _walk_stdlib; '
                        '_walk_stdlib(sys.argv[1])', str(raw)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=env, cwd=str(tmp_dir), timeout=1800)
    if r.returncode != 0 or not raw.exists():
      tail = r.stderr.decode('utf-8', 'replace').strip().splitlines()[-1:] or ['no output']
      raise RuntimeError(f'walking the standard library for {BUILTIN_SOURCE} failed: {tail[0]}')
    parts = _split_documents(raw.read_text(encoding='utf-8'), NUM_FILES)
    raw.unlink()
    files = []
    for i, part in enumerate(parts):
      name = f'python_docs_{i:02d}.txt'
      (tmp_dir / name).write_text(part, encoding='utf-8')
      files.append(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in files:  # os.replace is atomic per file; the marker is written last
      os.replace(tmp_dir / name, out_dir / name)
    sha = hashlib.sha256(b''.join((out_dir / f).read_bytes() for f in files)).hexdigest()[:16]
    tmp_marker = tmp_dir / 'done.json'
    tmp_marker.write_text(json.dumps(dict(want, files=files, sha256=sha,
                                          bytes=sum((out_dir / f).stat().st_size for f in files))))
    os.replace(tmp_marker, marker)
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return [out_dir / f for f in files]


def builtin_vocab(cache_dir: str | os.PathLike) -> Path:
  """Path of an 8192-token WordPiece vocab trained on the builtin corpus (built once, cached).

  Ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]. If training yields fewer than 8192 tokens the
  vocab is padded with `[unused{i}]` so its size is exactly `BUILTIN_VOCAB_SIZE` (configs
  hard-code that size).
  """
  from electra_jax.data import tokenizer as tok_lib

  cache_dir = Path(cache_dir)
  files = write_builtin_corpus(cache_dir / 'python_docs')
  corpus_sha = json.loads((cache_dir / 'python_docs' / 'done.json').read_text())['sha256']
  path = cache_dir / f'builtin_vocab_{BUILTIN_VOCAB_SIZE}_{corpus_sha}.txt'
  if path.exists():
    return path
  tmp = cache_dir / f'.vocab_tmp{os.getpid()}.txt'
  tok_lib.train_wordpiece([str(f) for f in files], BUILTIN_VOCAB_SIZE, tmp, lowercase=True)
  tokens = tok_lib.read_vocab(tmp)
  if len(tokens) > BUILTIN_VOCAB_SIZE:
    raise ValueError(f'builtin vocab has {len(tokens)} tokens, expected at most {BUILTIN_VOCAB_SIZE}')
  existing = set(tokens)
  i = 0
  while len(tokens) < BUILTIN_VOCAB_SIZE:
    if f'[unused{i}]' not in existing:
      tokens.append(f'[unused{i}]')
    i += 1
  tmp.write_text(''.join(t + '\n' for t in tokens), encoding='utf-8')
  os.replace(tmp, path)
  return path


def define_flags():
  flags.DEFINE_string('output', None, 'Cache directory (default $ELECTRA_JAX_CACHE or '
                      '~/.cache/electra_jax).')


def main(argv) -> None:
  """python -m electra_jax.data.builtin_corpus [--output=DIR]: writes the corpus and vocab."""
  from electra_jax import runlog  # pylint: disable=g-import-not-at-top
  cli.no_positional(argv)
  out = runlog.cache_dir(flags.FLAGS.output)
  files = write_builtin_corpus(out / 'python_docs')
  vocab = builtin_vocab(out)
  total = sum(f.stat().st_size for f in files)
  print(f'corpus: {len(files)} files, {total / 1e6:.1f} MB; vocab: {vocab}')


if __name__ == '__main__':
  cli.run(main, define_flags)
