"""Importing nin_jax changes nothing global: a command sets what it needs.

A notebook that does `from nin_jax import models` (or any other module)
keeps its environment variables, import machinery, file descriptors,
logging set-up, warning filters and library settings as they were, apart
from what the libraries nin_jax imports change by being imported (JAX sets
TF_CPP_MIN_LOG_LEVEL, Orbax's first log line gives the root logger a
handler, ...): those are measured by importing the same libraries alone.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: a snapshot of what is global; then either
# every module of nin_jax (configs included) or, for comparison, only the
# libraries those modules import at their top level; the snapshot again.
# Prints both snapshots as JSON.
SCRIPT = r'''
import ast
import copy
import importlib
import json
import logging
import os
import pkgutil
import re
import signal
import sys
import warnings

from absl import logging as absl_logging
import fsspec
import matplotlib


def text(value):
  """repr() without object addresses or inode numbers, which differ
  between processes."""
  return re.sub(r' at 0x[0-9a-f]+|\[\d+\]', '', repr(value))


def describe(objects):
  return [f'{type(o).__module__}.{type(o).__qualname__}' for o in objects]


def open_files():
  fds = {}
  for fd in os.listdir('/proc/self/fd'):
    try:
      fds[fd] = text(os.readlink(f'/proc/self/fd/{fd}'))
    except OSError:  # The descriptor of the listing itself, now closed.
      pass
  return fds


def snapshot():
  absl_logger = logging.getLogger('absl')
  jax = sys.modules.get('jax')
  return {
      'os.environ': dict(os.environ),
      'sys.meta_path': describe(sys.meta_path),
      'sys.path_hooks': [text(hook) for hook in sys.path_hooks],
      'sys.excepthook': text(sys.excepthook),
      'sys.stdout/stderr': [text(sys.stdout), text(sys.stderr)],
      'file descriptors': open_files(),
      'root logger': [describe(logging.root.handlers),
                      describe(logging.root.filters), logging.root.level],
      'absl logger': [describe(absl_logger.handlers),
                      describe(absl_logger.filters), absl_logger.level,
                      absl_logging.get_verbosity()],
      'absl handler filters': describe(
          absl_logging.get_absl_handler().filters),
      'logger levels': {
          name: logger.level
          for name, logger in logging.root.manager.loggerDict.items()
          if isinstance(logger, logging.Logger)},
      'warnings filters': [text(f) for f in warnings.filters],
      'signal handlers': {
          s.name: text(signal.getsignal(s))
          for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
      'fsspec.config.conf': copy.deepcopy(fsspec.config.conf),
      # Read raw: reading rcParams['backend'] would resolve it.
      'matplotlib backend': text(
          dict.__getitem__(matplotlib.rcParams, 'backend')),
      'jax.config': ({k: text(v) for k, v in jax.config.values.items()}
                     if jax else None),
  }


def top_level_imports(module):
  """The modules `module`'s own code imports when it is imported (not
  those its functions import when called)."""
  tree = ast.parse(open(module.__file__).read())
  pending, names = list(tree.body), []
  while pending:
    node = pending.pop(0)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                         ast.ClassDef)):
      continue
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
      names += [f'{node.module}.{alias.name}' for alias in node.names]
    else:
      pending += [child for child in ast.iter_child_nodes(node)
                  if isinstance(child, ast.stmt)]
  return [name for name in names if name.split('.')[0] != 'nin_jax']


class RecordedEnviron(type(os.environ)):
  """os.environ, noting each write that nin_jax's own code makes, even one
  that changes nothing (a setdefault after JAX's, say)."""

  def _note(self, operation, *args):
    caller = sys._getframe(2).f_code.co_filename
    if os.path.dirname(os.path.abspath(caller)).startswith(PACKAGE):
      WRITES.append(f'{caller}: os.environ.{operation}{args}')

  def __setitem__(self, key, value):
    self._note('__setitem__', key, value)
    super().__setitem__(key, value)

  def __delitem__(self, key):
    self._note('__delitem__', key)
    super().__delitem__(key)

for operation in ('setdefault', 'pop', 'update', 'clear', 'popitem'):
  def recorded(self, *args, _operation=operation, **kwargs):
    self._note(_operation, *args, *kwargs.items())
    return getattr(super(RecordedEnviron, self), _operation)(*args, **kwargs)
  setattr(RecordedEnviron, operation, recorded)


import nin_jax
PACKAGE = os.path.dirname(os.path.abspath(nin_jax.__file__))
WRITES = []
modules = [m.name for m in pkgutil.walk_packages(nin_jax.__path__,
                                                 'nin_jax.')]
before = snapshot()
if sys.argv[1] == 'nin_jax':
  os.environ.__class__ = RecordedEnviron
  for name in modules:
    importlib.import_module(name)
else:
  source = {name: importlib.util.find_spec(name) for name in modules}
  for name in modules:
    spec = source[name]
    for imported in top_level_imports(type('M', (), {
        '__file__': spec.origin})):
      try:  # `from a import b`: the module a.b, or a name in a.
        importlib.import_module(imported)
      except ImportError:
        importlib.import_module(imported.rpartition('.')[0])
after = snapshot()
print(json.dumps({'modules': modules, 'before': before, 'after': after,
                  'environ writes': WRITES}))
'''


def _snapshots(what: str) -> dict:
  # As a user's shell has it: none of the variables nin_jax's commands set.
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'EPATH_USE_TF')}
  result = subprocess.run([sys.executable, '-c', SCRIPT, what], cwd=REPO,
                          env=dict(env, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_importing_every_module_changes_nothing_global():
  libraries = _snapshots('libraries')
  nin_jax = _snapshots('nin_jax')
  assert 'nin_jax.main' in nin_jax['modules']
  assert 'nin_jax.configs.default' in nin_jax['modules']
  changes = []
  for what, before in nin_jax['before'].items():
    after, expected = nin_jax['after'][what], libraries['after'][what]
    if after == expected:
      continue
    if isinstance(after, dict) and isinstance(expected, dict):
      after, expected = (
          {k: v for k, v in d.items() if other.get(k) != v}
          for d, other in ((after, expected), (expected, after)))
      before = {k: v for k, v in before.items() if k in {*after, *expected}}
    changes.append(f'{what}: {before} before the imports, {expected} after '
                   f'importing the libraries alone, {after} after importing '
                   'nin_jax')
  changes += [f'written at import: {write}'
              for write in nin_jax['environ writes']]
  assert not changes, '\n'.join(changes)
