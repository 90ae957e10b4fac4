"""Runs `python -m nin_jax.main` inside the test process.

In-process (not a subprocess) so that monkeypatches and
`tfds.testing.mock_data` apply, and no new JAX process has to start.
"""

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
  return 0


def failure_tail(output: str, chars: int = 3000) -> str:
  """The end of a failed subprocess's output, for an assertion message.

  Drops what a crash prints after the cause (Python's list of loaded
  extension modules, native stack frames), which would fill the tail.
  """
  lines = [line for line in output.splitlines()
           if not line.startswith(('Extension modules:', '    @ '))]
  return '\n'.join(lines)[-chars:]
