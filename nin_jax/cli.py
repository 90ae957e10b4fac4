"""What every `python -m nin_jax.<command>` shares: flags and error exits.

A mistake a user can make (a bad flag, an unknown config field, a workdir
that holds no run) ends in one `error:` line and exit status 2, with a
traceback only under --verbosity=1.
"""

import logging as std_logging
import os
import sys
import traceback
from typing import Callable

# Before TensorFlow is imported anywhere: hide its C++ start-up banners.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from nin_jax import errors  # pylint: disable=g-import-not-at-top

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs',
                              'default.py')


class QuietLibraries:
  """Drops the INFO chatter of Orbax and TensorFlow; their warnings still show."""

  def filter(self, record) -> bool:
    noisy = any(part in record.pathname for part in ('/orbax/', '/tensorflow'))
    return record.levelno >= std_logging.WARNING or not noisy


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_USER_ERROR)


def _unknown_field(error: Exception, argv: list[str]) -> str:
  names = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  return (f'unknown config field {str(error).strip(chr(34) + chr(39))!r} in '
          f'{" ".join(names)}; every field is listed, with a comment, in '
          'nin_jax/configs/default.py')


def define_config_flag(help_text: str) -> flags.FlagHolder:
  """--config (default: configs/default.py) with --config.FIELD overrides.

  Without an explicit --config, ml_collections reads the overrides from
  sys.argv while the flag is defined, so an unknown field fails here.
  """
  try:
    return config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, help_text,
                                           lock_config=True)
  except (AttributeError, KeyError) as e:
    fail(_unknown_field(e, sys.argv))
    raise  # Not reached.


def check_command_line(argv: list[str], *positive_flags: str) -> None:
  """No stray arguments, and each named integer flag at least 1."""
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  for name in positive_flags:
    value = flags.FLAGS[name].value
    if value < 1:
      fail(f'--{name} must be at least 1, got {value}')


def define_run_flags(reads_data: bool) -> None:
  """Flags of the commands that load a trained run: its workdir, or a
  published model."""
  flags.DEFINE_string('workdir', None, 'Workdir of a training run (the '
                      '--workdir given to python -m nin_jax.main). Give this '
                      'or --pretrained.')
  flags.DEFINE_string(
      'pretrained', None, 'A published model instead of --workdir: its name '
      'in nin_jax/pretrained/ (e.g. cifar10) or the path of its directory '
      '(python -m nin_jax.publish writes them). Nothing is ever written into '
      'it.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest; '
                       'a published model has one).')
  if reads_data:
    flags.DEFINE_enum(
        'split', 'test', ['test', 'validation', 'train'],
        'test: config.eval_split; validation: the held-out tail of the '
        'training split (if the run held one out); train: the rest of it.')
    flags.DEFINE_string('data_dir', None, 'Where the data is, if not where '
                        'the run read it from: the TFDS data directory, or '
                        'for a run trained on a folder of images, that '
                        'folder (ROOT, holding train/ and test/).')


def load_run():
  """The trained_run.TrainedRun that --workdir or --pretrained names, at --step."""
  from nin_jax import trained_run  # pylint: disable=g-import-not-at-top
  workdir, pretrained = flags.FLAGS.workdir, flags.FLAGS.pretrained
  if bool(workdir) == bool(pretrained):
    fail('give --workdir=DIR (a training run) or --pretrained=NAME (a '
         'published model)' + (', not both' if workdir else ''))
  directory = workdir if workdir else trained_run.find_published(pretrained)
  return trained_run.load(directory, flags.FLAGS.step)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error and exit status 2 on failure.

  Bad --config.* values (unknown field, wrong type, unreadable config file)
  otherwise end in a traceback or an absl FATAL message.
  """
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS:
      # An unloadable file gives a placeholder that raises on first use.
      flags.FLAGS['config'].value.get('dataset')
    return remaining
  except flags.Error as e:
    message = ' '.join(str(e).split())  # One line.
  except (AttributeError, KeyError) as e:  # config_flags: unknown field.
    message = _unknown_field(e, argv)
  except (OSError, SyntaxError, ImportError) as e:  # The --config file.
    while e.__cause__ is not None:  # The innermost error says why.
      e = e.__cause__
    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    message = f'cannot load the --config file: {reason}'
  fail(message)
  return []  # Not reached.


def report_user_errors(command: Callable[[list[str]], None]
                       ) -> Callable[[list[str]], None]:
  """Runs `command`, turning errors.UserError into one line and exit 2."""

  def run(argv: list[str]) -> None:
    # The commands print their results; logs are for problems (or for
    # --verbosity=0 and up, asked for explicitly).
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(QuietLibraries())
    try:
      command(argv)
    except errors.UserError as e:
      exit_with(e, errors.EXIT_USER_ERROR)
  return run


def exit_with(error: Exception, status: int) -> None:
  """Ends the process on `error`: its message on one line, then `status`.

  The message is the whole story; the traceback only with --verbosity=1.
  """
  if logging.get_verbosity() >= logging.DEBUG:
    traceback.print_exc()
  print(f'error: {error}', file=sys.stderr)
  sys.exit(status)


def run(command: Callable[[list[str]], None]) -> None:
  """app.run for a command: flags parsed as above, user errors reported."""
  app.run(report_user_errors(command), flags_parser=parse_flags)
