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
one owner. A command given a workdir makes one Workdir of it and hands that
down: a run's files are read and written through it. Also here: the data
root, where TFDS data lives, and the cache root, where nin_jax caches what
it derives from other data.

A workdir is a local directory or a URL (gs://bucket/run): every file call
goes through storage.py, which reads and writes both. An object store has
no lock, so there the run lock is a lease (LeaseLock).
"""

import dataclasses
import fcntl
import json
import math
import os
import secrets
import socket
import tempfile
import threading
import time
from typing import Any, Callable, TypeVar

from absl import logging
import ml_collections
import numpy as np

from nin_jax import errors
from nin_jax.files import storage

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
    storage.check_local(chosen, '--config.cache_dir' if config.get('cache_dir')
                        else f'${CACHE_DIR_VARIABLE}')
    return os.path.abspath(os.path.expanduser(chosen))
  xdg = os.environ.get('XDG_CACHE_HOME', '')
  base = xdg if os.path.isabs(xdg) else os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'nin_jax')


_Cached = TypeVar('_Cached')


def read_npz(path: str, names: tuple[str, ...] | None = None
             ) -> dict[str, np.ndarray]:
  """The arrays `names` (by default all) of an .npz file; no others are
  read."""
  with np.load(path, allow_pickle=False) as arrays:
    return {name: arrays[name] for name in names or arrays.files}


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  storage.write_npz_atomically(path, **arrays)


def cached(path: str, what: str, make: Callable[[], _Cached], *,
           read: Callable[[str], _Cached] = read_npz,
           write: Callable[[str, _Cached], None] = _write_npz,
           hint: str = RELOCATE_CACHE) -> _Cached:
  """`read(path)` if a cache is there, else `make()`, kept at `path` for
  the next run (by default a dict of arrays, as an .npz).

  A cache never stops a run: an unreadable one is made again and one that
  cannot be written costs a warning, ending with `hint` (where to cache
  instead). Every process of a run may write the same file: writes are
  atomic.
  """
  if storage.exists(path):
    try:
      value = read(path)
      logging.info('Reusing the %s cached in %s', what, path)
      return value
    except (OSError, ValueError, KeyError) as e:
      logging.warning('Ignoring the unreadable %s cache %s (%s).', what, path,
                      e)
  value = make()
  try:
    write(path, value)
  except OSError as e:
    logging.warning('Could not cache the %s in %s (%s); the next run makes '
                    'them again.%s', what, path, e, hint and ' ' + hint)
  return value


# --- The workdir ------------------------------------------------------------------


class Workdir:
  """A run's workdir, made once from the name a command was given and handed
  down: where it is, each file's path, and the reader and writer of each
  file a run keeps there (config.json, dataset.json), its checks and its
  lock. `str(workdir)` is where it is: a local path made absolute, or a URL.

  The readers of finished runs' other files (read_metrics, finished_steps,
  read_json) take a directory: a published model holds some of them too.
  """

  def __init__(self, name: str, flag: str = '--workdir'):
    """`name` as given on the command line (`flag`); no file is touched."""
    self._location = storage.location(name, flag)
    self._flag = flag

  @classmethod
  def reached(cls, name: str, flag: str = '--workdir') -> 'Workdir':
    """Workdir(name), whose storage answered (one request for a URL)."""
    workdir = cls(name, flag)
    storage.check_reachable(str(workdir), flag)
    return workdir

  def __str__(self) -> str:
    return self._location

  def __repr__(self) -> str:
    return f'Workdir({self._location!r})'

  def path(self, name: str) -> str:
    """The path of file or directory `name` in it (one of the names above)."""
    return path(self._location, name)

  @property
  def is_remote(self) -> bool:
    return storage.is_remote(self._location)

  @property
  def checkpoints(self) -> str:
    return checkpoints_dir(self._location)

  def is_dir(self) -> bool:
    return storage.is_dir(self._location)

  def make(self) -> None:
    storage.make_dirs(self._location)

  def check_writable(self) -> None:
    """Fails early, with the reason, if the workdir cannot be written.

    Creates nothing: a run that fails later (e.g. no dataset) leaves no
    empty workdir behind.
    """
    if self.is_remote:  # A probe object; a failure says why.
      storage.check_writable(self._location, self._flag)
      reason = None
    else:
      reason = _local_problem(self._location)
    if not reason and storage.exists(self.checkpoints) and not storage.is_dir(
        self.checkpoints):
      reason = (f'{self.checkpoints} is a file, where checkpoints go; move it '
                'aside')
    if reason:
      raise errors.WorkdirError(
          f'Cannot write to the workdir {self}: {reason}. Pick a writable '
          f'{self._flag} (or free some disk space).')

  def lock(self) -> 'RunLock | LeaseLock':
    """The lock that keeps a second trainer out."""
    return (LeaseLock(self._location) if self.is_remote
            else RunLock(self._location))

  def has_checkpoint(self) -> bool:
    """Whether it holds a finished save."""
    return bool(finished_steps(self._location))

  # config.json

  def write_config(self, config: ml_collections.ConfigDict,
                   resumed_step: int) -> None:
    """Writes config.json; a different earlier config is kept, not
    overwritten."""
    file = self.path(CONFIG)
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if storage.exists(file):
      # Compared as bytes: it may be damaged.
      if storage.read_bytes(file) == text.encode('utf-8'):
        return
      kept = self.path(f'config.before_step{resumed_step}.json')
      storage.rename(file, kept)
      logging.info('The earlier %s differs from this run\'s config: kept it '
                   'as %s.', CONFIG, kept)
    storage.write_atomically(file, text)

  def read_config(self, if_damaged: str | None = None
                  ) -> dict[str, Any] | None:
    """config.json as a dict; None if there is none.

    A damaged one (not JSON, not an object) is None too, with a warning, for
    the trainer, which then writes the config it runs with. Given
    `if_damaged` (what the user should do; the commands that load a run
    pass DAMAGED_CONFIG), it is a WorkdirError that names the file and ends
    with that instead.
    """
    if not storage.exists(self.path(CONFIG)):
      return None
    try:
      return read_json(self._location, CONFIG, '',
                       if_damaged or DAMAGED_CONFIG)
    except errors.WorkdirError:
      if if_damaged:
        raise
      logging.warning('Ignoring unreadable %s.', self.path(CONFIG))
      return None

  # dataset.json

  def write_dataset_info(self, info: Any) -> None:
    """`info`: an input_pipeline.DatasetInfo."""
    storage.write_atomically(self.path(DATASET),
                             json.dumps(dataclasses.asdict(info), indent=2))

  def read_dataset_info(self, if_damaged: str | None = None
                        ) -> dict[str, Any]:
    """dataset.json's fields (lists where DatasetInfo has tuples); a damaged
    file is a WorkdirError ending with `if_damaged` (or DAMAGED_RUN_FILE)."""
    return read_json(self._location, DATASET, 'it is not a training workdir: '
                     'pass the --workdir of a run of python -m nin_jax.main.',
                     if_damaged or DAMAGED_RUN_FILE)


def _local_problem(workdir: str) -> str | None:
  """Why the local directory `workdir` cannot be written (None if it can)."""
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f'{existing} is not a directory'
  if not os.access(existing, os.W_OK | os.X_OK):
    return f'{existing} is not writable'
  if existing != workdir:
    # A directory made and removed again: os.access says yes to root, and
    # to a place like /proc that takes no new directories.
    try:
      os.rmdir(tempfile.mkdtemp(prefix='.write_test.', dir=existing))
    except OSError as e:
      return (f'no directory can be made in {existing} '
              f'({e.strerror or e})')
    return None
  # Also catches a read-only or full disk.
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:
    with open(probe, 'w', encoding='utf-8') as f:
      f.write('ok')
  except OSError as e:
    return e.strerror or str(e)
  finally:
    if os.path.exists(probe):  # Created, even when the write failed.
      os.remove(probe)
  return None


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
  if not storage.exists(file):
    raise errors.WorkdirError(f'{directory} has no {name}; {if_missing}')
  try:
    parsed = json.loads(storage.read_bytes(file).decode('utf-8'))
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
  if not storage.exists(file):
    return []
  lines = storage.read_bytes(file).split(b'\n')
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


def save_finished(step_dir: str) -> bool:
  """Whether Orbax finished writing the step directory `step_dir`. On a
  disk every step directory is finished (Orbax renames a save into place
  when it is complete); on gs:// one holding commit_success.txt is."""
  return not step_dir.startswith('gs://') or storage.exists(
      path(step_dir, COMMIT_SUCCESS))


def finished_steps(workdir: str) -> list[int]:
  """The steps of `workdir`'s finished saves, oldest first; no array is
  read."""
  directory = checkpoints_dir(workdir)
  return sorted(int(name) for name in storage.list_dir(directory)
                if name.isdigit() and save_finished(path(directory, name)))


def _holder() -> str:
  return (f'pid {os.getpid()} on {socket.gethostname()}, since '
          f'{time.strftime("%Y-%m-%d %H:%M:%S")}')


def _pid_space() -> str:
  """This boot of this machine and this process's pid namespace ('' where
  /proc does not say): pids mean the same only where both agree."""
  try:
    with open('/proc/sys/kernel/random/boot_id', encoding='ascii') as f:
      boot = f.read().strip()
    return f'{boot}/{os.stat("/proc/self/ns/pid").st_ino}'
  except OSError:
    return ''


def _held_elsewhere(workdir: str, holder: str,
                    if_killed: str = '') -> errors.WorkdirError:
  return errors.WorkdirError(
      f'Another trainer is running in {workdir} ({holder or "holder unknown"})'
      ': wait for it or stop it, or pick another --workdir.' + if_killed)


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
    workdir = os.path.dirname(self._file)
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # /proc/x, a read-only disk, a file on the way.
      raise errors.WorkdirError(
          f'Cannot write to the workdir {workdir}: cannot make {self._file} '
          f'({e.strerror or e}). Pick a writable --workdir.') from None
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

  def check(self) -> None:
    """Nothing to check: the kernel holds a flock until the process ends."""

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
    self.lost_to = ''  # Who took the lock over, if anyone did.

  def _read(self) -> dict[str, Any] | None:
    try:
      lease = json.loads(storage.read_bytes(self._file).decode('utf-8'))
    except FileNotFoundError:
      return None
    except (UnicodeDecodeError, json.JSONDecodeError):
      return {}  # Damaged: treated as expired.
    return lease if isinstance(lease, dict) else {}

  def _write(self) -> None:
    storage.write_atomically(self._file, json.dumps(
        {'holder': self._holder, 'token': self._token, 'renewed': time.time(),
         'host': socket.gethostname(), 'pid': os.getpid(),
         'pid_space': _pid_space()}))

  def _age(self, lease: dict[str, Any]) -> float:
    """Seconds since the lease was renewed (infinite if damaged)."""
    renewed = lease.get('renewed')
    if not isinstance(renewed, (int, float)) or isinstance(renewed, bool):
      return math.inf
    return time.time() - renewed

  @staticmethod
  def _holder_is_gone(lease: dict[str, Any]) -> bool:
    """Whether the holder was a process of this host that has ended. Only
    where its pids are ours to see: containers can share a host name (host
    networking) but not their processes."""
    pid = lease.get('pid')
    if (lease.get('host') != socket.gethostname() or not isinstance(pid, int)
        or not _pid_space() or lease.get('pid_space') != _pid_space()):
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
      raise _held_elsewhere(
          self._workdir, f'{lease.get("holder") or "holder unknown"}, lock '
          f'renewed {self._age(lease):.0f} s ago',
          f' If it was killed, its lock expires {self.EXPIRES_SECONDS:.0f} s '
          f'after that renewal (or delete {self._file}).')
    if lease is not None:
      logging.info('Took over the lock %s of %s, which stopped without '
                   'releasing it.', self._file,
                   lease.get('holder', 'an unknown holder'))
    self._holder = _holder()
    self._write()
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
        lease = self._read() or {}
        if lease.get('token') != self._token:
          # Taken over while this process could not renew (suspended, or
          # cut off for EXPIRES_SECONDS): the other trainer owns the
          # workdir now. check() stops this one at its next save.
          self.lost_to = str(lease.get('holder') or 'another trainer')
          return
        self._write()
      except Exception as e:  # pylint: disable=broad-except
        # The next renewal may work.
        logging.warning('Could not renew the lock %s: %s', self._file,
                        errors.describe(e))

  def check(self) -> None:
    """Raises a WorkdirError if another trainer took the lock over."""
    if self.lost_to:
      raise errors.WorkdirError(
          f'This trainer lost the lock of {self._workdir} to {self.lost_to}, '
          'which took it over after this process had not renewed it for '
          f'{self.EXPIRES_SECONDS:.0f} s; stopped without saving, so as not '
          'to write over its checkpoints.')

  def __exit__(self, *exc) -> None:
    if self._renewer is None:
      return
    self._stop.set()
    self._renewer.join()
    self._renewer = None
    try:
      if (self._read() or {}).get('token') == self._token:
        storage.remove_file(self._file)
    except Exception as e:  # pylint: disable=broad-except
      # It expires by itself.
      logging.warning('Could not release the lock %s (%s); it expires in '
                      '%.0f s.', self._file, errors.describe(e),
                      self.EXPIRES_SECONDS)
