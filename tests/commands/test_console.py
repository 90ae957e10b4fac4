"""A normal run prints one line per event; --verbosity=1 shows everything.

What absl, JAX and TFDS log about nothing a user can act on (backends that
are absent, library chatter) is hidden by nin_jax.cli, for training and for
every command, and comes back with --verbosity=1. TensorFlow's C++ log
level is raised on a quiet console; what a TensorFlow build prints at
start-up regardless (where it prints anything before reading the level)
is let be: hiding it would need file descriptor 2 redirected.
"""

import importlib.util
import logging as std_logging
import os
import re
import subprocess
import sys

from absl import logging
import pytest

from nin_jax import cli
from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The lines a normal run must not print, by what prints them.
NOISE = {
    'JAX backend probe': 'Unable to initialize backend',
    'TFDS variant folder': 'has no dataset_info.json',
}
LOG_LINE = re.compile(r'[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ')
# The time and thread of a C++ log line (TensorFlow's, absl's).
NATIVE_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+ +\d+ ')


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
def tensorflow_banner() -> set[str]:
  """What `import tensorflow` prints on this machine at its default log
  level (nothing, or notices that vary with the build and the CPU), less
  the time and thread of each line: let be wherever TensorFlow loads."""
  if importlib.util.find_spec('tensorflow') is None:
    return set()
  stderr = subprocess.run(
      [sys.executable, '-c', 'import tensorflow'], capture_output=True,
      text=True, timeout=300, check=False,
      env={k: v for k, v in os.environ.items()
           if k != 'TF_CPP_MIN_LOG_LEVEL'}).stderr
  return {NATIVE_PREFIX.sub('', line) for line in stderr.splitlines()}


def _without(banner: set[str], output: str) -> str:
  """`output` less the lines of TensorFlow's start-up banner."""
  return ''.join(line for line in output.splitlines(keepends=True)
                 if NATIVE_PREFIX.sub('', line.rstrip('\n')) not in banner)


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
  # Nothing else: training on digits (or a folder) does not import
  # TensorFlow, so not even its banner shows.
  others = [line for line in output.splitlines() if not LOG_LINE.match(line)]
  assert not others, others
  assert 'test at step 4: accuracy' in output


def test_commands_are_quiet_and_verbosity_1_brings_the_lines_back(
    trained, tmp_path, tensorflow_banner):
  pytest.importorskip('tensorflow')
  workdir, _ = trained
  export = ['nin_jax.export', f'--workdir={workdir}', '--format=savedmodel']
  quiet = _run(*export, f'--out={tmp_path / "quiet"}')
  assert quiet.returncode == 0, main_runner.failure_tail(quiet.stderr)
  assert _without(tensorflow_banner, quiet.stderr) == '' and (
      quiet.stdout.startswith('Wrote ')), quiet.stdout + quiet.stderr

  # The filters are the same for every format: the cheapest one here.
  verbose = _run('nin_jax.export', f'--workdir={workdir}', '--format=stablehlo',
                 f'--out={tmp_path / "verbose"}', '--verbosity=1')
  assert verbose.returncode == 0, main_runner.failure_tail(verbose.stderr)
  assert re.search(r"xla_bridge\.py:\d+\] .*backend '", verbose.stderr)


@pytest.mark.parametrize('verbosity, before, after', [
    (logging.WARNING, None, '2'),
    (logging.WARNING, '1', '2'),  # What importing JAX sets where unset.
    (logging.WARNING, '0', '0'),  # The user's.
    (logging.WARNING, '3', '3'),
    (logging.DEBUG, None, None),  # --verbosity=1: TensorFlow's default.
    (logging.DEBUG, '1', None),
    (logging.DEBUG, '2', '2'),
])
def test_tensorflow_log_level_quiet_unless_verbose_or_set_by_the_user(
    monkeypatch, verbosity, before, after):
  # Only the variable: the filters quiet_console adds are tested below.
  monkeypatch.delitem(sys.modules, 'tensorflow', raising=False)
  if before is None:
    monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  else:
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', before)
  try:
    logging.set_verbosity(verbosity)
    cli._quiet_tensorflow(cli._verbose())  # pylint: disable=protected-access
  finally:
    logging.set_verbosity(logging.INFO)
  assert os.environ.get('TF_CPP_MIN_LOG_LEVEL') == after


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
      record('absl', std_logging.INFO, '/nin_jax/training/train.py', 'test at step 4'),
  ]
  quiet = cli.QuietLibraries()
  try:
    logging.set_verbosity(logging.INFO)
    assert [quiet.filter(r) for r in hidden + shown] == [False] * 3 + [True] * 3
    logging.set_verbosity(logging.DEBUG)  # --verbosity=1
    assert all(quiet.filter(r) for r in hidden + shown)
  finally:
    logging.set_verbosity(logging.INFO)
