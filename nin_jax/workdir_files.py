"""What a run keeps in its workdir: every path, each file's writer and reader.

    config.json                the config (a different earlier one is kept as
                               config.before_step<N>.json)
    dataset.json               the dataset's facts: classes, image shape, sizes
    preprocessing.npz          the fitted input transform (preprocessing.py)
    metrics.jsonl              one JSON row per log line and evaluation
    metrics.superseded.jsonl   rows a resumed run replaced
    tensorboard/               the same metrics as TensorBoard event files
    checkpoints/<step>/        Orbax checkpoints (checkpointing.py)
    checkpoints_unreadable/    damaged checkpoints, moved aside, never deleted
    .lock                      held by the running trainer (one per workdir)

The writers and readers of each file sit side by side here, so a format has
one owner. Also here: writes that a crash cannot leave half done, the data
root, where TFDS data lives, and the cache root, where nin_jax caches what
it derives from other data.

A workdir is a local directory or a URL that etils.epath understands
(gs://bucket/run, s3://...). Every file call below goes through
etils.epath, so both read and write the same way; where an object store
differs (no append, no rename of a directory, no lock) the functions here
do what it allows: files are written whole, directories are copied and then
deleted, and the run lock is a lease.
"""

import dataclasses
import fcntl
import importlib.util
import io
import json
import math
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from typing import Any

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from nin_jax import errors

CONFIG = 'config.json'
DATASET = 'dataset.json'
PREPROCESSING = 'preprocessing.npz'
METRICS = 'metrics.jsonl'
SUPERSEDED_METRICS = 'metrics.superseded.jsonl'
TENSORBOARD = 'tensorboard'
LOCK = '.lock'
CHECKPOINTS = 'checkpoints'
UNREADABLE_CHECKPOINTS = 'checkpoints_unreadable'


def path(workdir: str, name: str) -> str:
  """`workdir`/`name`, for one of the names above."""
  return os.path.join(workdir, name)


# --- Local or remote -------------------------------------------------------------


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
    _path(name).exists()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.WorkdirError(
        f'Cannot reach {flag}={name} ({errors.describe(e)}): check the '
        'network, your credentials (gcloud auth application-default login) '
        'and the bucket name; without TensorFlow, gs:// needs pip install '
        '"nin_jax[gcs]".') from None


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


def _list_afresh() -> None:
  """gcsfs (etils' client for gs:// where TensorFlow is absent or not
  used) caches directory listings for the life of a process, so saves by
  another process (a trainer, seen by a reader or a notebook) would go
  unseen: a newest checkpoint missing, or 'No checkpoint'. Listed afresh
  each time instead (a request either way)."""
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
  except ImportError:  # Then gcsfs is absent too.
    return
  fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache',
                                                       False)


_list_afresh()


def _path(name: str) -> epath.Path:
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
  """Deletes directory `name` and all it holds; no error if it is gone."""
  target = _path(name)
  if target.exists():
    target.rmtree()


def move_tree(source: str, target: str) -> None:
  """Moves directory `source` to `target`: renamed on a disk; on an object
  store, which has no directories to rename, copied file by file first and
  only then deleted, so a failure in between loses nothing."""
  if not is_remote(source):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)
    return
  source_path = _path(source)
  for relative in _files_below(source_path):
    copied = _path(target) / relative
    copied.parent.mkdir(parents=True, exist_ok=True)
    (source_path / relative).copy(copied, overwrite=True)
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
  """Copies every file under the local directory `local` into `target`."""
  for directory, _, files in os.walk(local):
    relative = os.path.relpath(directory, local)
    for name in files:
      copied = _path(target) / relative / name
      copied.parent.mkdir(parents=True, exist_ok=True)
      with open(os.path.join(directory, name), 'rb') as f:
        copied.write_bytes(f.read())


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


def data_root(config: ml_collections.ConfigDict) -> str:
  """config.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets: where
  TFDS data lives, and beside it the fits nin_jax derives from that data
  (they go when it goes). Caches of other data never go here: cache_root."""
  return (config.data_dir or os.environ.get('TFDS_DATA_DIR')
          or os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


CACHE_DIR_VARIABLE = 'NIN_JAX_CACHE_DIR'
# Ends a warning that the cache root could not be written.
RELOCATE_CACHE = (f'Set ${CACHE_DIR_VARIABLE} or --config.cache_dir=DIR to '
                  'cache elsewhere.')


def cache_root(config: ml_collections.ConfigDict) -> str:
  """Where nin_jax caches what it derives from data that is not TFDS's (the
  digits, folders of images), which has no data_dir of its own.

  config.cache_dir, else $NIN_JAX_CACHE_DIR, else $XDG_CACHE_HOME/nin_jax,
  else ~/.cache/nin_jax (a relative $XDG_CACHE_HOME is ignored, as the XDG
  spec asks). Everything in it can be deleted: it is rebuilt when needed.
  """
  # get(): a config built by hand (not from default.py) may lack the field.
  chosen = config.get('cache_dir') or os.environ.get(CACHE_DIR_VARIABLE)
  if chosen:
    return os.path.abspath(os.path.expanduser(chosen))
  xdg = os.environ.get('XDG_CACHE_HOME', '')
  base = xdg if os.path.isabs(xdg) else os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'nin_jax')


# --- config.json ------------------------------------------------------------------


def write_config(workdir: str, config: ml_collections.ConfigDict,
                 resumed_step: int) -> None:
  """Writes config.json; a different earlier config is kept, not overwritten."""
  file = path(workdir, CONFIG)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if exists(file):
    if read_bytes(file) == text.encode('utf-8'):  # Bytes: it may be damaged.
      return
    kept = path(workdir, f'config.before_step{resumed_step}.json')
    _path(file).replace(kept)
    logging.info('The earlier %s differs from this run\'s config: kept it as '
                 '%s.', CONFIG, kept)
  write_atomically(file, text)


def read_config(workdir: str, if_damaged: str | None = None
                ) -> dict[str, Any] | None:
  """config.json as a dict; None if there is none.

  A damaged one (not JSON, not an object) is None too, for the trainer,
  which then writes the config it runs with. Given `if_damaged` (what the
  user should do; the commands that load a run pass DAMAGED_CONFIG), it is
  a WorkdirError that names the file and ends with that instead.
  """
  if not exists(path(workdir, CONFIG)):
    return None
  try:
    return read_json(workdir, CONFIG, '', if_damaged or DAMAGED_CONFIG)
  except errors.WorkdirError:
    if if_damaged:
      raise
    return None


# --- dataset.json -----------------------------------------------------------------


def write_dataset_info(workdir: str, info: Any) -> None:
  """`info`: an input_pipeline.DatasetInfo."""
  write_atomically(path(workdir, DATASET),
                   json.dumps(dataclasses.asdict(info), indent=2))


def read_dataset_info(workdir: str, if_damaged: str | None = None
                      ) -> dict[str, Any]:
  """dataset.json's fields (lists where DatasetInfo has tuples); a damaged
  file is a WorkdirError ending with `if_damaged` (or DAMAGED_RUN_FILE)."""
  return read_json(workdir, DATASET, 'it is not a training workdir: pass the '
                   '--workdir of a run of python -m nin_jax.main.',
                   if_damaged or DAMAGED_RUN_FILE)


# What to do about a damaged file of a run (read_json's `if_damaged`).
DAMAGED_CONFIG = ('restore it from a backup, or rebuild it from the run\'s '
                  'launch command (its --config and --config.* flags), or '
                  'start a new --workdir.')
DAMAGED_RUN_FILE = ('restore it from a backup, or rerun the run\'s launch '
                   'command in a new --workdir.')
DAMAGED_FILE = 'restore it from a backup.'


_JSON_TYPES = {list: 'array', str: 'string', int: 'number', float: 'number',
               bool: 'boolean', type(None): 'null'}


def read_json(directory: str, name: str, if_missing: str,
              if_damaged: str = DAMAGED_FILE) -> dict[str, Any]:
  """`directory`/`name`, a JSON object, parsed.

  A missing file is a WorkdirError that ends with `if_missing` (what the
  user should do); one that is not a JSON object (random bytes, a list, a
  half-written file) is a WorkdirError that ends with `if_damaged`.
  """
  file = path(directory, name)
  if not exists(file):
    raise errors.WorkdirError(f'{directory} has no {name}; {if_missing}')
  try:
    parsed = json.loads(read_bytes(file).decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.WorkdirError(
        f'{name} in {directory} is not valid JSON ({errors.describe(e)}): '
        f'{if_damaged}') from None
  except OSError as e:
    raise errors.WorkdirError(
        f'Cannot read {file} ({e.strerror or e}): fix its permissions, or '
        f'{if_damaged}') from None
  if not isinstance(parsed, dict):
    raise errors.WorkdirError(
        f'{name} in {directory} holds a JSON {_JSON_TYPES[type(parsed)]}, '
        f'not the object nin_jax writes: {if_damaged}')
  return parsed


# --- metrics.jsonl ----------------------------------------------------------------


def metrics_row(line: bytes) -> dict[str, Any] | None:
  """One line of metrics.jsonl as its row; None if it is damaged (binary
  bytes, or not a JSON object with a numeric `step` and a string `split`)."""
  try:
    row = json.loads(line.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  if (isinstance(row, dict) and isinstance(row.get('split'), str)
      and isinstance(row.get('step'), (int, float))
      and not isinstance(row['step'], bool)):
    return row
  return None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """metrics.jsonl's rows ([] if there is none yet).

  A last line cut short by a crash (or still being written) is skipped.
  So are damaged lines (binary bytes, not a JSON object with a numeric
  `step` and a string `split`): every reader can rely on those two keys,
  and one warning line counts what was skipped.
  """
  file = path(workdir, METRICS)
  if not exists(file):
    return []
  lines = read_bytes(file).split(b'\n')
  # After the last '\n': empty, or a line cut short (or being written).
  lines, cut = lines[:-1], lines[-1]
  rows, damaged = [], 0
  for number, line in enumerate([*lines, cut]):
    if not line.strip():
      continue
    row = metrics_row(line)
    if row is not None:
      rows.append(row)
    elif number < len(lines):  # A cut last line is expected, not damage.
      damaged += 1
  if damaged:
    logging.warning('Skipped %d damaged line%s of %s (not a JSON object with '
                    'a step and a split).', damaged,
                    '' if damaged == 1 else 's', file)
  return rows


# --- checkpoints/ -----------------------------------------------------------------


def checkpoints_dir(workdir: str) -> str:
  return path(workdir, CHECKPOINTS)


# Orbax's mark of a finished save on gs:// (where it renames nothing).
COMMIT_SUCCESS = 'commit_success.txt'


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a finished save: a directory named by its step
  (what Orbax renames a save to when it is complete; on gs://, one that
  holds Orbax's commit_success.txt); no array is read."""
  directory = checkpoints_dir(workdir)
  finished = [name for name in list_dir(directory) if name.isdigit()]
  if directory.startswith('gs://'):
    return any(exists(path(path(directory, name), COMMIT_SUCCESS))
               for name in finished)
  return bool(finished)


def run_lock(workdir: str) -> 'RunLock | LeaseLock':
  """The lock that keeps a second trainer out of `workdir`."""
  return LeaseLock(workdir) if is_remote(workdir) else RunLock(workdir)


def _holder() -> str:
  return (f'pid {os.getpid()} on {socket.gethostname()}, since '
          f'{time.strftime("%Y-%m-%d %H:%M:%S")}')


def _held_elsewhere(workdir: str, holder: str) -> errors.WorkdirError:
  return errors.WorkdirError(
      f'Another trainer is running in {workdir} ({holder or "holder unknown"})'
      ': wait for it or stop it, or pick another --workdir.')


class RunLock:
  """One trainer per workdir: a second one stops with the first one's pid.

  An advisory lock (flock) on <workdir>/.lock, taken by process 0 for the
  whole run. The kernel releases it when the process ends in any way, so a
  killed run never leaves a stale lock behind. Readers (evaluate, predict,
  visualize, export) take none and keep working during training.
  """

  def __init__(self, workdir: str):
    self._file = path(workdir, LOCK)
    self._fd = None

  def __enter__(self) -> 'RunLock':
    os.makedirs(os.path.dirname(self._file), exist_ok=True)
    fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 200).decode('utf-8', 'replace').strip()
      os.close(fd)
      raise _held_elsewhere(os.path.dirname(self._file), holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, _holder().encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None



class LeaseLock:
  """RunLock for an object store, which has no flock: a lease.

  <workdir>/.lock holds the holder, a random token and the time of its
  last renewal; a thread renews it every RENEW_SECONDS. A lock renewed
  within EXPIRES_SECONDS keeps a second trainer out; an older one was left
  by a process that died (on any host) and is taken over, as is a fresh
  one whose holder was a process of this host that no longer exists (a
  killed run restarted at once). Two trainers
  started within a second of each other both write the lock: each reads it
  back after SETTLE_SECONDS and only the one whose token it holds goes on.
  The clocks of the hosts that share a workdir must agree to well within
  EXPIRES_SECONDS (NTP does).
  """

  RENEW_SECONDS = 30.0
  EXPIRES_SECONDS = 120.0
  SETTLE_SECONDS = 2.0

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._file = path(workdir, LOCK)
    self._token = secrets.token_hex(8)
    self._stop = threading.Event()
    self._renewer = None

  def _read(self) -> dict[str, Any] | None:
    try:
      lease = json.loads(read_bytes(self._file).decode('utf-8'))
    except FileNotFoundError:
      return None
    except (UnicodeDecodeError, json.JSONDecodeError):
      return {}  # Damaged: treated as expired.
    return lease if isinstance(lease, dict) else {}

  def _write(self, holder: str) -> None:
    write_atomically(self._file, json.dumps(
        {'holder': holder, 'token': self._token, 'renewed': time.time(),
         'host': socket.gethostname(), 'pid': os.getpid()}))

  def _age(self, lease: dict[str, Any]) -> float:
    """Seconds since the lease was renewed (infinite if damaged)."""
    renewed = lease.get('renewed')
    if not isinstance(renewed, (int, float)) or isinstance(renewed, bool):
      return math.inf
    return time.time() - renewed

  @staticmethod
  def _holder_is_gone(lease: dict[str, Any]) -> bool:
    """Whether the holder was a process of this host that has ended."""
    pid = lease.get('pid')
    if lease.get('host') != socket.gethostname() or not isinstance(pid, int):
      return False
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    except OSError:  # It exists, as another user's process.
      return False
    return False

  def __enter__(self) -> 'LeaseLock':
    lease = self._read()
    if lease and self._age(lease) < self.EXPIRES_SECONDS and not (
        self._holder_is_gone(lease)):
      raise errors.WorkdirError(
          f'Another trainer is running in {self._workdir} '
          f'({lease.get("holder") or "holder unknown"}, lock renewed '
          f'{self._age(lease):.0f} s ago): wait for it or stop it, or pick '
          f'another --workdir. If it was killed, its lock expires '
          f'{self.EXPIRES_SECONDS:.0f} s after that renewal (or delete '
          f'{self._file}).')
    if lease is not None:
      logging.info('Took over the lock %s of %s, which stopped without '
                   'releasing it.', self._file,
                   lease.get('holder', 'an unknown holder'))
    self._holder = _holder()
    self._write(self._holder)
    time.sleep(self.SETTLE_SECONDS)
    lease = self._read() or {}
    if lease.get('token') != self._token:
      raise _held_elsewhere(self._workdir, str(lease.get('holder', '')))
    self._renewer = threading.Thread(target=self._renew, daemon=True,
                                     name='nin_jax-lease')
    self._renewer.start()
    return self

  def _renew(self) -> None:
    while not self._stop.wait(self.RENEW_SECONDS):
      try:
        self._write(self._holder)
      except errors.WorkdirError as e:  # The next renewal may work.
        logging.warning('Could not renew the lock: %s', e)

  def __exit__(self, *exc) -> None:
    if self._renewer is None:
      return
    self._stop.set()
    self._renewer.join()
    self._renewer = None
    try:
      if (self._read() or {}).get('token') == self._token:
        _path(self._file).unlink()
    except Exception as e:  # pylint: disable=broad-except
      # It expires by itself.
      logging.warning('Could not release the lock %s (%s); it expires in '
                      '%.0f s.', self._file, errors.describe(e),
                      self.EXPIRES_SECONDS)
