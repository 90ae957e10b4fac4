"""What every `python -m nin_jax.<command>` shares: flags and error exits.

A mistake a user can make (a bad flag, an unknown config field, a workdir
that holds no run) ends in one `error:` line and exit status 2, with a
traceback only under --verbosity=1.
"""

import contextlib
import logging as std_logging
import os
import shutil
import sys
import tempfile
import traceback
from typing import Callable, Iterator

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from nin_jax import errors
from nin_jax.files import storage

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs',
                              'default.py')


def _verbose() -> bool:
  """--verbosity=1 or more: everything libraries print reaches the console."""
  return logging.get_verbosity() >= logging.DEBUG


class QuietLibraries:
  """Drops library messages that ask nothing of the user, unless verbose.

  Orbax's, TensorFlow's and fsspec's INFO chatter (gcsfs logs a line for
  each file of a gs:// workdir it opens), JAX's probing of absent backends
  ('Unable to initialize backend tpu'), and TFDS's warning about a version
  folder without dataset_info.json, which it gives while checking whether
  the data is prepared (tfds.testing.mock_data's metadata folders are such).
  Their other warnings still show.
  """

  def filter(self, record) -> bool:
    if _verbose():
      return True
    if record.levelno < std_logging.WARNING:
      return not (_is_backend_probe(record) or any(
          part in record.pathname
          for part in ('/orbax/', '/tensorflow', '/fsspec/', '/gcsfs/')))
    return not ('/tensorflow_datasets/' in record.pathname
                and str(record.msg).startswith('Variant folder'))


def _is_backend_probe(record) -> bool:
  """JAX's note, at INFO, that a backend it tried is absent."""
  return (record.name.split('.')[0] == 'jax' and
          str(record.msg).startswith('Unable to initialize backend'))


# What JAX sets TF_CPP_MIN_LOG_LEVEL to when it is imported and the variable
# is unset (every command imports JAX before its main() runs), so this value
# is taken as nobody's choice.
_JAX_TF_LOG_LEVEL = '1'


def _quiet_tensorflow(verbose: bool) -> None:
  """TensorFlow's and XLA's C++ log level, for the TensorFlow a command
  imports later (TFDS data, streaming input, SavedModel export): 2
  (errors only) on a quiet console, their default (everything) when
  verbose; a level the user set is left as it is. What TensorFlow prints
  before it reads the variable (some builds print a start-up banner) still
  shows: hiding it would need file descriptor 2 redirected."""
  level = os.environ.get('TF_CPP_MIN_LOG_LEVEL')
  if level not in (None, _JAX_TF_LOG_LEVEL) or 'tensorflow' in sys.modules:
    return
  if verbose:
    os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)
  else:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'


def quiet_console() -> None:
  """One line per event on the console: library noise hidden, unless verbose.

  Called by the commands once flags are parsed (never on import: a notebook
  that imports nin_jax keeps its logging and environment); the filters
  check --verbosity when they run, so --verbosity=1 shows everything.
  """
  verbose = _verbose()
  _quiet_tensorflow(verbose)
  if verbose:
    return
  for target in (logging.get_absl_logger(), logging.get_absl_handler()):
    if not any(isinstance(f, QuietLibraries) for f in target.filters):
      target.addFilter(QuietLibraries())


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_USER_ERROR)


def _unknown_field(error: Exception, argv: list[str]) -> str:
  """One line from ml_collections' error: the field, and its suggestion."""
  names = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  # ml_collections raises an AttributeError around a KeyError whose args[0]
  # is "'field'" plus, on the next line, a "Did you mean" hint; str() of
  # either would quote and escape both.
  text = error
  while isinstance(text, BaseException):
    text = text.args[0] if text.args else ''
  lines = str(text).splitlines() or ['']
  field = lines[0].strip().strip('"\'')
  hint = ' '.join(line.strip() for line in lines[1:] if line.strip())
  return (f'unknown config field {field!r} in {" ".join(names)}'
          + (f' ({hint})' if hint else '') + '; every field is listed, with '
          'a comment, in nin_jax/configs/default.py')


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
  from nin_jax.training import trained_run  # pylint: disable=g-import-not-at-top
  workdir, pretrained = flags.FLAGS.workdir, flags.FLAGS.pretrained
  if bool(workdir) == bool(pretrained):
    fail('give --workdir=DIR (a training run) or --pretrained=NAME (a '
         'published model)' + (', not both' if workdir else ''))
  directory = workdir if workdir else trained_run.find_published(pretrained)
  return trained_run.load(directory, flags.FLAGS.step)


def _why(error: OSError) -> str:
  return error.strerror or str(error)


def output_path(path: str, flag: str = 'out') -> str:
  """Where output_directory(`path`) puts its files, as the user sees it: a
  URL as given (less a trailing '/'), a local path made absolute."""
  return (storage.location(path, f'--{flag}') if storage.is_remote(path)
          else os.path.abspath(path))


@contextlib.contextmanager
def output_directory(path: str, flag: str = 'out') -> Iterator[str]:
  """Makes the output directory `path` before the work starts, so that an
  unusable --out (a file, /proc/x, read-only) is one WorkdirError up front.

  Yields its absolute path. Directories it made are removed again, if still
  empty, when the body fails: a failed command leaves nothing behind.

  A URL (gs://...) yields a local folder instead, whose files are uploaded
  to `path` when the body succeeds (plots and reports are written by
  libraries that know only local files).
  """
  path = output_path(path, flag)
  if storage.is_remote(path):
    storage.check_reachable(path, f'--{flag}')
    storage.check_writable(path, f'--{flag}')
    staging = tempfile.mkdtemp(prefix='nin_jax_out_')
    try:
      yield staging
      storage.upload_tree(staging, path)  # A failure is one WorkdirError.
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    return
  made, existing = [], path
  while not os.path.lexists(existing):
    made.append(existing)
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = ('is a file' if existing == path
            else f'is below {existing}, a file')
    raise errors.WorkdirError(
        f'--{flag}={path} {what}, not a directory: give --{flag} a '
        'directory (it is made if missing).')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    _remove_empty(made)
    raise errors.WorkdirError(
        f'Cannot make the output directory {path} ({_why(e)}): give a '
        f'writable --{flag}.') from None
  try:
    yield path
  except BaseException:
    _remove_empty(made)
    raise


def _remove_empty(directories: list[str]) -> None:
  """Removes these directories (deepest first) while they are empty."""
  for directory in directories:
    try:
      os.rmdir(directory)
    except OSError:
      return


def check_output_file(path: str, flag: str = 'out',
                      directory_ok: bool = False) -> None:
  """A file output (and its PATH.json) is never written over a directory
  (`directory_ok`: the output itself is one, as a SavedModel)."""
  if os.path.isdir(path) and not directory_ok:
    raise errors.WorkdirError(
        f'--{flag}={path} is a directory; the export is a file: give its '
        f'path, e.g. --{flag}={os.path.join(path, "nin.export")}.')
  if os.path.isdir(path + '.json'):
    raise errors.WorkdirError(
        f'--{flag}={path}: {path}.json, where its metadata goes, is a '
        f'directory: give another --{flag}.')


def write_output(file: str, data: str | bytes, flag: str = 'out') -> None:
  """Writes an output file atomically; a failed write is one WorkdirError
  and leaves neither the file's temporary copy nor half a file."""
  storage.write_atomically(
      file, data, fix=f'give a writable --{flag} (or free some disk space).')


@contextlib.contextmanager
def writing(path: str, flag: str = 'out') -> Iterator[None]:
  """Turns an OSError of the writes in the body into one WorkdirError."""
  try:
    yield
  except OSError as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.WorkdirError(
        f'Cannot write {getattr(e, "filename", None) or path} ({_why(e)}): '
        f'give a writable --{flag} (or free some disk space).') from None


class _NotAConfig(Exception):
  """The --config file gave something other than a ConfigDict."""


def bundled_config(argument: str) -> str:
  """--config=NAME (e.g. digits) as the path of nin_jax/configs/NAME.py.

  So that an installed package, whose configs sit in site-packages, is used
  as a clone is: --config=digits anywhere. A path is left as it is.
  """
  if not argument.startswith('--config='):
    return argument
  name, colon, rest = argument[len('--config='):].partition(':')
  path = os.path.join(os.path.dirname(DEFAULT_CONFIG), f'{name}.py')
  if name and os.sep not in name and not name.endswith('.py') and (
      os.path.isfile(path)) and not os.path.exists(name):
    return f'--config={path}{colon}{rest}'
  return argument


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error and exit status 2 on failure.

  Bad --config.* values (unknown field, wrong type, unreadable config file)
  otherwise end in a traceback or an absl FATAL message. --config=NAME
  names a bundled config (bundled_config).
  """
  argv = [bundled_config(argument) for argument in argv]
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS:
      config = flags.FLAGS['config'].value
      if not isinstance(config, ml_collections.ConfigDict):
        # For a file that failed to load, config_flags gives a stand-in
        # that raises the loading error (an OSError) on any attribute read.
        getattr(config, 'dataset', None)
        raise _NotAConfig(f'its get_config() returned {config!r:.60} (type '
                          f'{type(config).__name__}), not a ConfigDict')
  except flags.Error as e:
    message = ' '.join(str(e).split())  # One line.
  except (AttributeError, KeyError) as e:  # config_flags: unknown field.
    message = _unknown_field(e, argv)
  except (OSError, SyntaxError, ImportError) as e:  # The --config file.
    while e.__cause__ is not None:  # The innermost error says why.
      e = e.__cause__
    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    message = f'cannot load the --config file: {reason}'
    # ml_collections raises a plain OSError for a file it cannot find.
    if 'No such file' in reason:
      bundled = sorted(name[:-3] for name in os.listdir(
          os.path.dirname(DEFAULT_CONFIG))
                       if name.endswith('.py') and not name.startswith('_'))
      message += f' (a path, or a bundled config: {", ".join(bundled)})'
  except _NotAConfig as e:
    message = f'cannot use the --config file: {e}'
  except Exception as e:  # pylint: disable=broad-except
    # The file's own code (get_config) failed.
    message = (f'the --config file failed while building the config: '
               f'{type(e).__name__}: {" ".join(str(e).split())}')
  else:
    quiet_console()  # Now that --verbosity is known.
    return remaining
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
    quiet_console()
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
