"""Folder and digits data need no TensorFlow: every command runs without it.

JAX GPU images often ship without TensorFlow. These commands run in fresh
processes where importing `tensorflow` or `tensorflow_datasets` fails as if
they were not installed (a meta-path finder stands in for them).
"""

import os
import subprocess
import sys

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


def _run(tmp_path, module, *args):
  env = dict(os.environ, PYTHONPATH=f'{tmp_path / "site"}{os.pathsep}{REPO}')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)


def test_every_command_runs_on_a_folder_without_tensorflow(tmp_path):
  (tmp_path / 'site').mkdir()
  (tmp_path / 'site' / 'sitecustomize.py').write_text(BLOCKER)
  check = _run(tmp_path, 'tensorboard.compat.proto.event_pb2')
  assert check.returncode == 0, check.stderr  # The blocker lets others be.
  blocked = subprocess.run(
      [sys.executable, '-c', 'import tensorflow'], capture_output=True,
      text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')))
  assert 'blocked' in blocked.stderr

  root = make_folder(tmp_path / 'data', {'train': 8, 'test': 2})
  workdir = str(tmp_path / 'run')
  train = _run(tmp_path, 'nin_jax.main', f'--workdir={workdir}',
               '--config=' + os.path.join(REPO, 'nin_jax/configs/test.py'),
               f'--config.dataset=folder:{root}', '--config.num_classes=3')
  assert train.returncode == 0, main_runner.failure_tail(train.stderr)
  assert 'test at step 4' in train.stderr
  assert os.listdir(os.path.join(workdir, 'tensorboard', 'train'))

  evaluate = _run(tmp_path, 'nin_jax.evaluate', f'--workdir={workdir}',
                  f'--out={tmp_path / "eval"}')
  assert evaluate.returncode == 0, main_runner.failure_tail(evaluate.stderr)
  image = str(root / 'test' / 'frog' / '000.png')
  predict = _run(tmp_path, 'nin_jax.predict', f'--workdir={workdir}', image)
  assert predict.returncode == 0, main_runner.failure_tail(predict.stderr)
  assert any(name in predict.stdout for name in ('cat', 'dog', 'frog'))
  visualize = _run(tmp_path, 'nin_jax.visualize', f'--workdir={workdir}',
                   f'--out={tmp_path / "maps"}', '--num_images=2')
  assert visualize.returncode == 0, main_runner.failure_tail(visualize.stderr)
  export = _run(tmp_path, 'nin_jax.export', f'--workdir={workdir}',
                f'--out={tmp_path / "model.stablehlo"}', '--platforms=cpu')
  assert export.returncode == 0, main_runner.failure_tail(export.stderr)

  # What does need TensorFlow says so, in one line.
  tfds = _run(tmp_path, 'nin_jax.main', f'--workdir={tmp_path / "tfds"}',
              '--config.dataset=cifar10')
  assert tfds.returncode == 2
  assert 'error:' in tfds.stderr and 'needs TensorFlow' in tfds.stderr
  assert not (tmp_path / 'tfds').exists()
