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
"""

import dataclasses
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from typing import Any

from absl import logging
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


# --- Writes a crash cannot leave half done --------------------------------------


def write_atomically(file: str, data: str | bytes | bytearray) -> None:
  """Replaces `file` with `data`, so that a crash leaves the old or the new
  file, never part of one (written beside it, then renamed over it)."""
  binary = not isinstance(data, str)
  try:
    with open(file + '.tmp', 'wb' if binary else 'w',
              encoding=None if binary else 'utf-8') as f:
      f.write(data)
    os.replace(file + '.tmp', file)
  except OSError as e:  # A full disk, most often: leave nothing half done.
    if os.path.exists(file + '.tmp'):
      os.remove(file + '.tmp')
    raise _write_error(file, e) from None


def write_npz_atomically(file: str, **arrays: np.ndarray) -> None:
  """np.savez to `file` through a uniquely named file beside it, so that
  concurrent writers (the processes of one run) and readers never clash."""
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


def _write_error(file: str, error: OSError) -> errors.WorkdirError:
  return errors.WorkdirError(
      f'Could not write {file} ({error.strerror or error}): free some disk '
      'space or fix the permissions, then run the same command again.')


def is_remote(name: str) -> bool:
  """Whether `name` is a URL (gs://, s3://, ...) rather than a local path."""
  return bool(re.match(r'[A-Za-z][A-Za-z0-9+.-]*://', name or ''))


def check_local(name: str, flag: str) -> None:
  """Refuses a remote path where nin_jax writes with local file calls.

  os.path would make `gs://b/run` the local folder `./gs:/b/run`, silently:
  a pod's hosts would then not share the run.
  """
  if is_remote(name):
    raise errors.WorkdirError(
        f'{flag}={name}: nin_jax reads and writes this with local file '
        'calls, and a URL would become a local folder. Mount the bucket '
        '(gcsfuse, with --implicit-dirs and --rename-dir-limit for Orbax\'s '
        'renames) and pass the mount point, or use a local directory and '
        'copy it (gcloud storage rsync -r).')


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
  if os.path.exists(file):
    with open(file, 'rb') as f:  # Bytes: it may be damaged.
      previous = f.read()
    if previous == text.encode('utf-8'):
      return
    kept = path(workdir, f'config.before_step{resumed_step}.json')
    os.replace(file, kept)
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
  file = path(workdir, CONFIG)
  if not os.path.exists(file):
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
  if not os.path.exists(file):
    raise errors.WorkdirError(f'{directory} has no {name}; {if_missing}')
  try:
    with open(file, 'rb') as f:
      parsed = json.loads(f.read().decode('utf-8'))
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
  if not os.path.exists(file):
    return []
  with open(file, 'rb') as f:
    lines = f.read().split(b'\n')
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


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a finished save: a directory named by its step
  (what Orbax renames a save to when it is complete); nothing is read."""
  directory = checkpoints_dir(workdir)
  return os.path.isdir(directory) and any(
      name.isdigit() for name in os.listdir(directory))


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
      raise errors.WorkdirError(
          f'Another trainer is running in {os.path.dirname(self._file)} '
          f'({holder or "holder unknown"}): wait for it or stop it, or pick '
          'another --workdir.') from None
    os.ftruncate(fd, 0)
    os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}, since '
                 f'{time.strftime("%Y-%m-%d %H:%M:%S")}'.encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

