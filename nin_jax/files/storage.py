"""Files wherever they are: a local path, or a URL that etils.epath
understands (gs://bucket/run, s3://...).

Every file call of nin_jax on a workdir, a dataset's cache or an output goes
through here, so both kinds of place are read and written the same way.
Where an object store differs (no append, no rename of a directory,
objects appear only when whole, listings cached by gcsfs) the functions do
what it allows: files are written whole, directories copied and then
deleted, listings made afresh. Failures to write are one WorkdirError that
names the file, the reason and the fix.
"""

import contextlib
import importlib.util
import io
import logging as std_logging
import os
import re
import shutil
import tempfile
from typing import Iterator

from absl import logging
from etils import epath
import numpy as np

from nin_jax import errors


def is_remote(name: str) -> bool:
  """Whether `name` is a URL (gs://, s3://, ...) rather than a local path."""
  return bool(re.match(r'[A-Za-z][A-Za-z0-9+.-]*://', name or ''))


# The URL schemes etils.epath reads and writes (with TensorFlow's gfile or
# fsspec's gcsfs/s3fs behind it).
REMOTE_SCHEMES = ('gs', 's3', 'az')


def location(name: str, flag: str = '--workdir') -> str:
  """How a workdir is kept: a local path made absolute (~ expanded), a URL
  as given less a trailing '/'. A URL of a scheme nin_jax cannot write is
  a WorkdirError: os.path would make it the local folder './gs:/...'."""
  if not is_remote(name):
    return os.path.abspath(os.path.expanduser(name))
  scheme, rest = name.split('://', 1)
  if scheme not in REMOTE_SCHEMES or not rest.strip('/'):
    raise errors.WorkdirError(
        f'{flag}={name}: nin_jax reads and writes local paths and '
        f'{", ".join(s + "://" for s in REMOTE_SCHEMES)} URLs with a bucket '
        'name; mount other storage and pass the mount point.')
  use_remote_clients()
  return name.rstrip('/')


def check_reachable(name: str, flag: str = '--workdir') -> None:
  """For a URL: one request, so that no network, no credentials, a missing
  bucket or a missing client library is one WorkdirError up front rather
  than a traceback from deep in a library."""
  if not is_remote(name):
    return
  if name.startswith('gs://') and not _importable('google.cloud.storage'):
    # Orbax lists and deletes checkpoints on gs:// with it.
    raise errors.WorkdirError(
        f'{flag}={name} needs google-cloud-storage: pip install '
        '"nin_jax[gcs]" (or gcsfs, which brings it).')
  try:
    with _client_logs_held():
      _path(name).exists()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.WorkdirError(
        f'Cannot reach {flag}={name} ({errors.describe(e)}): check the '
        'network, your credentials (gcloud auth application-default login) '
        'and the bucket name; without TensorFlow, gs:// needs pip install '
        '"nin_jax[gcs]".') from None


@contextlib.contextmanager
def _client_logs_held() -> Iterator[None]:
  """gcsfs logs each retry of a request that fails with its traceback, and
  a warning per bucket it cannot classify: about 100 lines before the one
  error line that says it all when the network or credentials are missing.
  Held back here, unless --verbosity=1 (absl's DEBUG) asks for everything."""
  loggers = [std_logging.getLogger(name) for name in ('gcsfs', 'fsspec')]
  if logging.get_verbosity() >= logging.DEBUG:
    yield
    return
  levels = [logger.level for logger in loggers]
  for logger in loggers:  # Their child loggers inherit the level.
    logger.setLevel(std_logging.CRITICAL + 1)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def check_writable(url: str, flag: str) -> None:
  """For a URL: a probe object written and deleted, so that a bucket that
  cannot be written is one WorkdirError before any work is done."""
  probe = f'{url}/.write_test.{os.getpid()}'
  write_atomically(probe, 'ok', fix=f'give a {flag} you can write, or check '
                   'the bucket\'s permissions and your credentials.')
  remove_file(probe)


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A parent package is missing.
    return False


def check_local(name: str, flag: str,
                why: str = 'nin_jax memory-maps what it keeps there') -> None:
  """Refuses a URL where nin_jax needs a local directory (`why`)."""
  if is_remote(name):
    raise errors.WorkdirError(
        f'{flag}={name}: this must be a local directory ({why}); pass a '
        'local path.')


def use_remote_clients() -> None:
  """How gs:// is reached, set when nin_jax is given a URL (by location(),
  and before each use of one), not on import: a notebook that never uses
  one keeps its environment and fsspec's settings as they were.

  etils.epath reads and writes gs:// with TensorFlow's gfile wherever
  TensorFlow is installed (it is, for TFDS). Where gcsfs is installed too
  (the gcs extra), nin_jax has it use gcsfs instead (EPATH_USE_TF=false,
  unless the variable is set; EPATH_USE_TF=true keeps gfile): the client
  the tests run against a GCS emulator. etils decides once per process,
  at its first path of any kind, so this is in time where a command's
  first path is its workdir or output.

  gcsfs caches directory listings for the life of a process, so saves by
  another process (a trainer, seen by a reader or a notebook) would go
  unseen: a newest checkpoint missing, or 'No checkpoint'. Listed afresh
  each time instead (a request either way), unless fsspec's configuration
  says otherwise.
  """
  if not _importable('gcsfs'):
    return
  os.environ.setdefault('EPATH_USE_TF', 'false')
  import fsspec  # pylint: disable=g-import-not-at-top
  fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache',
                                                       False)


def _path(name: str) -> epath.Path:
  if is_remote(name):
    use_remote_clients()
  return epath.Path(name)


def exists(name: str) -> bool:
  return _path(name).exists()


def is_dir(name: str) -> bool:
  return _path(name).is_dir()


def list_dir(name: str) -> list[str]:
  """The names in directory `name` ([] if there is none)."""
  if not is_dir(name):
    return []
  return sorted(child.name for child in _path(name).iterdir())


def make_dirs(name: str) -> None:
  _path(name).mkdir(parents=True, exist_ok=True)


def read_bytes(name: str) -> bytes:
  return _path(name).read_bytes()


def append_bytes(file: str, data: bytes) -> None:
  """Adds `data` at the end of `file` (an object store cannot append: the
  object is read and written whole)."""
  if is_remote(file):
    write_atomically(file, (read_bytes(file) if exists(file) else b'') + data)
    return
  try:
    with open(file, 'ab') as f:
      f.write(data)
  except OSError as e:
    raise _write_error(file, e) from None


def remove_file(name: str) -> None:
  """Deletes file `name`; no error if it is gone."""
  _path(name).unlink(missing_ok=True)


def remove_tree(name: str) -> None:
  """Deletes directory `name` and all it holds; no error if it is gone.
  What cannot be deleted (another user's files, a read-only mount) is left,
  with a warning: it never stops a run."""
  try:
    target = _path(name)
    if target.exists():
      target.rmtree()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Could not delete %s (%s); delete it by hand.', name,
                    errors.describe(e))


def move_tree(source: str, target: str) -> None:
  """Moves directory `source` to `target`: renamed on a disk; on an object
  store, which has no directories to rename, copied file by file first and
  only then deleted, so a failure in between loses nothing."""
  if not is_remote(source):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)  # Across file systems too.
    return
  source_path = _path(source)
  for relative in _files_below(source_path):
    # No mkdir: an object store has no directories to make.
    (source_path / relative).copy(_path(target) / relative, overwrite=True)
  source_path.rmtree()


def _files_below(directory: epath.Path) -> list[str]:
  """Paths of all files below `directory`, relative to it (epath's walk
  drops the gs:// of what it yields)."""
  found = []
  for child in directory.iterdir():
    if child.is_dir():
      found += [f'{child.name}/{name}' for name in _files_below(child)]
    else:
      found.append(child.name)
  return found


def upload_tree(local: str, target: str) -> None:
  """Copies every file under the local directory `local` into the URL
  `target`; a failure is one WorkdirError (which file, why)."""
  for directory, _, files in os.walk(local):
    relative = os.path.relpath(directory, local)
    for name in files:
      with open(os.path.join(directory, name), 'rb') as f:
        write_atomically('/'.join(part for part in (target, relative, name)
                                  if part != '.'), f.read())


# --- Writes a crash cannot leave half done --------------------------------------


def write_atomically(file: str, data: str | bytes | bytearray,
                     fix: str | None = None) -> None:
  """Replaces `file` with `data`, so that a crash leaves the old or the new
  file, never part of one (written beside it, then renamed over it; an
  object store does that itself: an object appears when it is whole).

  A failure is a WorkdirError with the reason and `fix` (what the user
  should do; by default, free space or fix permissions and rerun).
  """
  binary = not isinstance(data, str)
  encoded = bytes(data) if binary else data.encode('utf-8')
  if is_remote(file):
    try:
      _path(file).write_bytes(encoded)
    except Exception as e:  # pylint: disable=broad-except
      raise _write_error(file, e, fix) from None
    return
  try:
    with open(file + '.tmp', 'wb') as f:
      f.write(encoded)
    os.replace(file + '.tmp', file)
  except OSError as e:  # A full disk, most often: leave nothing half done.
    if os.path.exists(file + '.tmp'):
      os.remove(file + '.tmp')
    raise _write_error(file, e, fix) from None


def write_npz_atomically(file: str, **arrays: np.ndarray) -> None:
  """np.savez to `file` through a uniquely named file beside it, so that
  concurrent writers (the processes of one run) and readers never clash."""
  if is_remote(file):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(file, buffer.getvalue())
    return
  directory = os.path.dirname(file)
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, suffix='.npz.tmp')
  try:
    with os.fdopen(handle, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(temporary, file)
  except BaseException as e:
    if os.path.exists(temporary):
      os.remove(temporary)
    if isinstance(e, OSError):
      raise _write_error(file, e) from None
    raise


def _write_error(file: str, error: Exception,
                 fix: str | None = None) -> errors.WorkdirError:
  if is_remote(file):
    return errors.WorkdirError(
        f'Cannot write {file} ({errors.describe(error)}): ' + (
            fix or 'check the bucket\'s permissions and your credentials, '
            'then run the same command again.'))
  return errors.WorkdirError(
      f'Cannot write {file} ({getattr(error, "strerror", None) or error}): '
      + (fix or 'free some disk space or fix the permissions, then run the '
         'same command again.'))


# --- What a failure says about the storage ----------------------------------------

# Each kind of failure as the libraries under nin_jax name it: by the class
# of the error (Python's; TensorFlow's tf.errors, from TFDS's reads and from
# TensorBoard's writes where TensorFlow is installed; the HTTP clients' and
# Google auth's) or by the status code that TensorStore (under Orbax) writes
# into its message.
#
# The storage could not be reached, or refused access (network, credentials,
# permissions, quota): what it holds may well be intact.
UNREACHABLE = 'unreachable'
# TensorFlow could not read a file: garbled, cut short, gone, not readable.
UNREADABLE = 'unreadable'
# Any other failure of a disk or bucket: full, read-only, gone (an OSError,
# and storage's own WorkdirError, which is one).
FAILED = 'failed'
_FAILURES = (
    (UNREACHABLE, ('HttpError', 'ConnectionError', 'TimeoutError',
                   'PermissionError', 'TransportError', 'RefreshError',
                   'ClientConnectorError', 'ServerDisconnectedError'),
     ('PERMISSION_DENIED', 'UNAUTHENTICATED', 'UNAVAILABLE',
      'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED')),
    (UNREADABLE, ('DataLossError', 'FailedPreconditionError', 'NotFoundError',
                  'PermissionDeniedError'), ()),
    (FAILED, ('ResourceExhaustedError',), ('os_error_code', 'NOT_FOUND')),
)


def failure(error: BaseException) -> str | None:
  """What `error`, or an error that caused it, says about the storage:
  UNREACHABLE, UNREADABLE or FAILED, the first of them that any error of the
  chain is; None if none is (a bug, a bad value: not the storage's doing)."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  for kind, names, codes in _FAILURES:
    for link in chain:
      if type(link).__name__ in names or any(code in str(link)
                                             for code in codes):
        return kind
  return FAILED if any(isinstance(link, OSError) for link in chain) else None


def rename(source: str, target: str) -> None:
  """Renames file `source` to `target`, replacing it (on an object store: a
  copy, then a delete)."""
  _path(source).replace(target)
