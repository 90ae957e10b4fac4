"""A normal run prints one line per event; --verbosity=1 shows everything.

What TensorFlow, absl, JAX and TFDS print about nothing a user can act on
(start-up notices, backends that are absent) is hidden by nin_jax.cli, for
training and for every command, and comes back with --verbosity=1.
"""

import logging as std_logging
import os
import re
import subprocess
import sys

from absl import logging
import pytest

from nin_jax import cli
from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The lines a normal run must not print, by what prints them.
NOISE = {
    'TensorFlow oneDNN notice': 'oneDNN custom operations are on',
    'absl C++ notice': 'All log messages before absl::InitializeLog()',
    'JAX backend probe': 'Unable to initialize backend',
    'TFDS variant folder': 'has no dataset_info.json',
}
LOG_LINE = re.compile(r'[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ')


def _run(*args: str) -> subprocess.CompletedProcess:
  """A command as a user's shell runs it: no TF_CPP_MIN_LOG_LEVEL of ours."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO,
                        env=dict(env, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=300, check=False)


def _noise(output: str) -> list[str]:
  return [line for line in output.splitlines()
          if any(text in line for text in NOISE.values())]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The test config trained by `python -m nin_jax.main`, and its output."""
  workdir = str(tmp_path_factory.mktemp('console') / 'run')
  result = _run('nin_jax.main', f'--workdir={workdir}',
                '--config=nin_jax/configs/test.py')
  output = result.stdout + result.stderr
  assert result.returncode == 0, main_runner.failure_tail(output)
  return workdir, output


def test_training_prints_one_log_line_per_event(trained):
  _, output = trained
  assert not _noise(output), _noise(output)
  # TensorFlow is imported on the way (TensorBoard's event writer uses it
  # where installed), so its start-up lines would have been here.
  others = [line for line in output.splitlines() if not LOG_LINE.match(line)]
  assert not others, others
  assert 'test at step 4: accuracy' in output


def test_commands_are_quiet_and_verbosity_1_brings_the_lines_back(
    trained, tmp_path):
  pytest.importorskip('tensorflow')
  workdir, _ = trained
  export = ['nin_jax.export', f'--workdir={workdir}', '--format=savedmodel']
  quiet = _run(*export, f'--out={tmp_path / "quiet"}')
  assert quiet.returncode == 0, main_runner.failure_tail(quiet.stderr)
  assert quiet.stderr == '' and quiet.stdout.startswith('Wrote '), (
      quiet.stdout + quiet.stderr)

  verbose = _run(*export, f'--out={tmp_path / "verbose"}', '--verbosity=1')
  assert verbose.returncode == 0, main_runner.failure_tail(verbose.stderr)
  assert re.search(r"xla_bridge\.py:\d+\] .*backend '", verbose.stderr)
  # TensorFlow's own start-up lines, where this build prints any.
  bare = subprocess.run(
      [sys.executable, '-c', 'import tensorflow'], capture_output=True,
      text=True, timeout=300, check=False,
      env={k: v for k, v in os.environ.items()
           if k != 'TF_CPP_MIN_LOG_LEVEL'}).stderr
  for what, text in NOISE.items():
    if text in bare:
      assert text in verbose.stderr, what


def test_library_records_hidden_unless_verbose():
  def record(name, level, pathname, msg):
    return std_logging.LogRecord(name, level, pathname, 1, msg, None, None)

  hidden = [
      record('jax._src.xla_bridge', std_logging.INFO, '/jax/_src/xla_bridge.py',
             "Unable to initialize backend 'tpu': not found"),
      record('absl', std_logging.WARNING,
             '/tensorflow_datasets/core/utils/file_utils.py',
             'Variant folder /data/cifar10/3.0.2 has no dataset_info.json'),
      record('absl', std_logging.INFO, '/orbax/checkpoint/manager.py', 'Saved'),
  ]
  shown = [
      record('jax._src.xla_bridge', std_logging.WARNING,
             '/jax/_src/xla_bridge.py', 'An NVIDIA GPU may be present'),
      record('absl', std_logging.WARNING,
             '/tensorflow_datasets/core/dataset_builder.py', 'Slow download'),
      record('absl', std_logging.INFO, '/nin_jax/train.py', 'test at step 4'),
  ]
  quiet = cli.QuietLibraries()
  try:
    logging.set_verbosity(logging.INFO)
    assert [quiet.filter(r) for r in hidden + shown] == [False] * 3 + [True] * 3
    logging.set_verbosity(logging.DEBUG)  # --verbosity=1
    assert all(quiet.filter(r) for r in hidden + shown)
  finally:
    logging.set_verbosity(logging.INFO)


def test_native_stderr_filtered_keeps_all_but_the_noise(capfd):
  # pylint: disable-next=protected-access
  with cli._native_stderr_filtered(cli._TF_IMPORT_NOISE):
    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is '
             b'called are written to STDERR\n'
             b'I0000 00:00:1796056716.311562   22911 port.cc:153] oneDNN '
             b'custom operations are on.\n'
             b'E0000 00:00:1796056716.311562   22911 cuda.cc:1] a real error\n'
             b'plain text\n')
  assert capfd.readouterr().err == (
      'E0000 00:00:1796056716.311562   22911 cuda.cc:1] a real error\n'
      'plain text\n')
