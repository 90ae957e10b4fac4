"""Folder and digits data need no TensorFlow: every command runs without it.

JAX GPU images often ship without TensorFlow. The commands run one after
another in one fresh process where importing `tensorflow` or
`tensorflow_datasets` fails as if they were not installed (a meta-path
finder stands in for them), each as its tests run it in-process.
"""

import os
import re
import subprocess
import sys

from nin_jax.files import workdir_files
from tests.data.test_image_folder import make_folder
from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKER = '''
import importlib.machinery, sys

class _Blocked:
  def create_module(self, spec):
    raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)",
                              name=spec.name)

  def exec_module(self, module):
    pass

class _Finder:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      return importlib.machinery.ModuleSpec(name, _Blocked())
    return None

sys.meta_path.insert(0, _Finder())
'''


# Run with the blocker installed: each command in turn, its exit status
# after it on stdout and on stderr, so that the outputs can be told apart.
DRIVER = '''
import sys
try:
  import tensorflow
except ModuleNotFoundError as e:
  assert 'blocked' in str(e), e
else:
  raise AssertionError('TensorFlow was not blocked')
from tensorboard.compat.proto import event_pb2  # The blocker lets others be.
import pytest
from nin_jax import evaluate, export, predict, visualize
from tests import main_runner

workdir, root, out, image = sys.argv[1:]
commands = {
    'main': lambda patch: main_runner.run_main(
        patch, workdir, f'--config.dataset=folder:{root}',
        '--config.num_classes=3'),
    'evaluate': lambda _: main_runner.run_command(
        evaluate, f'--workdir={workdir}', f'--out={out}/eval'),
    'predict': lambda _: main_runner.run_command(
        predict, f'--workdir={workdir}', image),
    'visualize': lambda _: main_runner.run_command(
        visualize, f'--workdir={workdir}', f'--out={out}/maps',
        '--num_images=2'),
    'export': lambda _: main_runner.run_command(
        export, f'--workdir={workdir}', f'--out={out}/model.stablehlo',
        '--platforms=cpu'),
    # What does need TensorFlow says so, in one line.
    'tfds': lambda patch: main_runner.run_main(
        patch, f'{out}/tfds', '--config.dataset=cifar10'),
}
for name, run in commands.items():
  with pytest.MonkeyPatch.context() as patch:
    code = run(patch)
  for stream in (sys.stdout, sys.stderr):
    print(f'=== {name} exited {code}', file=stream, flush=True)
'''
MARK = re.compile(r'^=== (\w+) exited (\S+)$', re.MULTILINE)


def _by_command(output: str) -> dict[str, tuple[str, str]]:
  """{command: (exit status, what it printed)} from the driver's output."""
  results, start = {}, 0
  for mark in MARK.finditer(output):
    results[mark.group(1)] = (mark.group(2), output[start:mark.start()])
    start = mark.end()
  return results


def test_every_command_runs_on_a_folder_without_tensorflow(tmp_path):
  (tmp_path / 'site').mkdir()
  (tmp_path / 'site' / 'sitecustomize.py').write_text(BLOCKER)
  root = make_folder(tmp_path / 'data', {'train': 8, 'test': 2})
  workdir = str(tmp_path / 'run')
  image = str(root / 'test' / 'frog' / '000.png')
  done = subprocess.run(
      [sys.executable, '-c', DRIVER, workdir, str(root), str(tmp_path),
       image], cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ,
               PYTHONPATH=f'{tmp_path / "site"}{os.pathsep}{REPO}'))
  assert done.returncode == 0, main_runner.failure_tail(done.stderr)
  out, err = _by_command(done.stdout), _by_command(done.stderr)
  assert list(err) == ['main', 'evaluate', 'predict', 'visualize', 'export',
                       'tfds'], main_runner.failure_tail(done.stderr)
  for name in ('main', 'evaluate', 'predict', 'visualize', 'export'):
    assert err[name][0] == '0', f'{name}: ' + main_runner.failure_tail(
        err[name][1])
  assert max(row['step'] for row in workdir_files.read_metrics(workdir)
             if row['split'] == 'test') == 4  # Trained to the end.
  assert os.listdir(os.path.join(workdir, 'tensorboard', 'train'))
  assert any(name in out['predict'][1] for name in ('cat', 'dog', 'frog'))
  assert (tmp_path / 'maps').is_dir() and (tmp_path / 'model.stablehlo').exists()

  code, printed = err['tfds']
  assert code == '2'
  assert 'error:' in printed and 'needs TensorFlow' in printed
  assert not (tmp_path / 'tfds').exists()
