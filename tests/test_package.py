"""pyproject.toml: what the wheel holds, what each install brings, and the
README's test commands being the ones .ci/run runs."""

import importlib.metadata
import os
import shlex
import subprocess
import sys
import tomllib
import zipfile

from packaging import requirements
from packaging import version
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_TOOLS = {'pytest', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel',
              'hatchling', 'selenium'}
SERVE_TOOLS = {'starlette', 'uvicorn', 'python-multipart'}
EXPORT_TOOLS = {'jax2onnx', 'onnx', 'onnxruntime'}


def _project():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _names(lines):
  return {requirements.Requirement(line).name.lower() for line in lines}


def _commands(lines):
  """Shell lines as token lists: comments, continuations and pip's quiet
  flags dropped, `python -m pip` read as `pip`."""
  text = '\n'.join(lines).replace('\\\n', ' ')
  commands = []
  for line in text.splitlines():
    words = shlex.split(line, comments=True)
    if words[:3] == ['python', '-m', 'pip']:
      words = words[2:]
    if words[:1] == ['pip']:
      words = [w for w in words
               if w not in ('--quiet', '-q', '--disable-pip-version-check')]
    if words:
      commands.append(words)
  return commands


def test_the_wheel_holds_every_file_of_the_package(tmp_path):
  subprocess.run([sys.executable, '-m', 'hatchling', 'build', '-t', 'wheel',
                  '-d', str(tmp_path)], cwd=REPO, check=True,
                 capture_output=True)
  (wheel,) = tmp_path.glob('*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  package = set()
  for folder, dirs, files in os.walk(os.path.join(REPO, 'nin_jax')):
    dirs[:] = [d for d in dirs if d != '__pycache__']
    package.update(os.path.relpath(os.path.join(folder, f), REPO)
                   .replace(os.sep, '/') for f in files
                   if not f.endswith('.pyc'))
  assert {'nin_jax/configs/digits.py',
          'nin_jax/pretrained/cifar10/variables.msgpack',
          'nin_jax/pretrained/cifar10/preprocessing.npz'} <= package
  assert not package - names
  assert not {n for n in names if n.startswith(('tests/', 'experiments/'))}


def test_the_default_install_carries_no_test_export_or_serve_tools():
  project = _project()
  extras = project['optional-dependencies']
  runtime = _names(project['dependencies'])
  assert TEST_TOOLS <= _names(extras['test'])
  assert EXPORT_TOOLS == _names(extras['export'])
  assert SERVE_TOOLS == _names(extras['serve'])
  assert SERVE_TOOLS <= _names(extras['test'])  # The serve tests need them.
  assert not runtime & (TEST_TOOLS | EXPORT_TOOLS | SERVE_TOOLS)
  assert {'tensorflow-datasets', 'tensorflow-cpu', 'scikit-learn'} <= runtime


def test_the_export_extra_changes_no_orbax_version():
  """The orbax-checkpoint that pip picks for the package (the newest it
  allows), and the one installed here, are ones that jax2onnx allows."""
  ours = [requirements.Requirement(line)
          for line in _project()['dependencies']]
  (ours,) = [r.specifier for r in ours if r.name == 'orbax-checkpoint']
  installed = version.Version(importlib.metadata.version('orbax-checkpoint'))
  assert installed in ours
  try:
    needs = importlib.metadata.requires('jax2onnx') or []
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('the export extra is not installed')
  theirs = [requirements.Requirement(line) for line in needs]
  theirs = [r.specifier for r in theirs
            if r.name == 'orbax-checkpoint' and not r.marker]
  releases = [version.Version(f'0.{minor}.{patch}')
              for minor in (11, 12, 13) for patch in range(100)]
  newest = max(v for v in releases if v in ours)
  for picked in (newest, installed):
    assert all(picked in spec for spec in theirs), (
        f'orbax-checkpoint {picked}: the package allows it, jax2onnx '
        f'({theirs}) does not, so the export extra would change it')


def _outside_if_blocks(lines):
  """The lines outside `if ...` / `fi` blocks: .ci/run's installs of system
  packages for some tests, where they are missing, are no README command."""
  depth = 0
  for line in lines:
    first = line.split()[:1]
    if first == ['if']:
      depth += 1
    elif first == ['fi']:
      depth -= 1
      continue
    if not depth:
      yield line


def test_the_readme_test_commands_are_the_ones_ci_runs():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme[readme.index('\n## Tests\n'):]
  block = section[section.index('```bash\n') + 8:]
  block = block[:block.index('```')]
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    ci = [line for line in _outside_if_blocks(f)
          if not line.startswith(('cd ', 'set '))]
  assert _commands(block.splitlines()) == _commands(ci)
  assert _commands(ci) == [['pip', 'install', '-e', '.[test,export]'],
                           ['python', '-m', 'pytest', '-q', '-n', '3',
                            '--dist', 'loadfile']]


def test_requirements_txt_lists_the_package_and_its_test_and_export_extras():
  project = _project()
  with open(os.path.join(REPO, 'requirements.txt'), encoding='utf-8') as f:
    lines = [line.strip() for line in f
             if line.strip() and not line.startswith('#')]
  extras = project['optional-dependencies']
  assert lines == (project['dependencies'] + extras['test']
                   + extras['export'])

