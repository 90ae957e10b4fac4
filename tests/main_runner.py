"""Runs `python -m nin_jax.main` inside the test process.

In-process (not a subprocess) so that monkeypatches and
`tfds.testing.mock_data` apply, and no new JAX process has to start.
"""

import contextlib
import os
import sys

from absl import flags
from absl import logging

from nin_jax import cli
from nin_jax import main

TEST_CONFIG = os.path.join(os.path.dirname(main.__file__), 'configs', 'test.py')


def run_main(monkeypatch, workdir, *overrides, config=TEST_CONFIG) -> int:
  """Parses flags as the command line would; returns the exit status."""
  argv = ['nin_jax.main', f'--workdir={workdir}', f'--config={config}',
          *overrides]
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads overrides here.
  for name in list(flags.FLAGS):  # Forget the previous run's override flags.
    if name.startswith('config.'):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  try:
    main.main(cli.parse_flags(argv)[:1])
  except SystemExit as e:
    return e.code
  finally:
    logging.set_verbosity(logging.INFO)  # --verbosity must not leak.
    # Nor --config: the next in-process command (which may define no
    # --config of its own) must not see this run's file.
    flags.FLAGS.unparse_flags()
  return 0


def environment(devices: int = 1, **variables) -> dict[str, str]:
  """os.environ for a subprocess on `devices` simulated CPU devices, with
  the XLA flags the tests run with (tests/conftest.py)."""
  flags_ = os.environ.get('XLA_FLAGS', '')
  return dict(os.environ, **variables, XLA_FLAGS=(
      f'{flags_} --xla_force_host_platform_device_count={devices}').strip())


def failure_tail(output: str, chars: int = 3000) -> str:
  """The end of a failed subprocess's output, for an assertion message.

  Drops what a crash prints after the cause (Python's list of loaded
  extension modules, native stack frames), which would fill the tail.
  """
  lines = [line for line in output.splitlines()
           if not line.startswith(('Extension modules:', '    @ '))]
  return '\n'.join(lines)[-chars:]


# The flags the commands define, and nin_jax.main's --workdir.
COMMAND_FLAGS = ('workdir', 'pretrained', 'step', 'split', 'data_dir', 'top_k',
                 'json', 'out', 'num_images', 'format', 'platforms')


@contextlib.contextmanager
def command_flags(command):
  """`command`'s flags on absl's FLAGS for one run. Flags of the same names
  (nin_jax.main's --workdir, if another test file imported it) are set
  aside meanwhile and put back after."""
  aside = {name: flags.FLAGS[name] for name in COMMAND_FLAGS
           if name in flags.FLAGS}
  for name in aside:
    delattr(flags.FLAGS, name)
  before = set(flags.FLAGS)
  command.define_flags()
  try:
    yield
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    for name, flag in aside.items():
      flags.FLAGS[name] = flag


def run_command(command, *args) -> int:
  """`python -m nin_jax.<command> ARGS` in this process; its exit status."""
  with command_flags(command):
    try:
      argv = cli.parse_flags([command.__name__, *args])
      cli.report_user_errors(command.main)(argv)
    except SystemExit as e:
      return e.code
    finally:
      flags.FLAGS.unparse_flags()
      logging.set_verbosity(logging.INFO)  # --verbosity must not leak.
  return 0
