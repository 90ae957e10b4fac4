"""Where metrics go: `metrics.jsonl`, TensorBoard event files, W&B and the
console."""

import contextlib
import hashlib
import itertools
import importlib.util
import json
import math
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator, Mapping

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import record_writer

from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class EventFile:
  """One TensorBoard event file in a local folder, each event flushed.

  TensorBoard's `EventFileWriter` writes the same records, but through
  `tf.io.gfile`, which imports TensorFlow wherever it is installed: 5 to 7 s
  of CPU at the first metric row of every run, for a local file.
  """

  _numbers = itertools.count()  # Two files of one process in one second.

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    name = 'events.out.tfevents.%010d.%s.%d.%d' % (
        time.time(), socket.gethostname(), os.getpid(), next(self._numbers))
    self._records = record_writer.RecordWriter(
        open(os.path.join(folder, name), 'wb'))
    self.write(event_pb2.Event(wall_time=time.time(),
                               file_version='brain.Event:2'))

  def write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """Appends one JSON object per event and mirrors scalars to TensorBoard.

  Only the process that should write (process 0) opens files; on the others
  every call is a no-op, so callers need no `if`. A run resumed from the
  checkpoint of `resumed_step` recomputes every later event, so rows logged
  after that step by the interrupted run (and a line cut off mid-write) are
  moved to `metrics.superseded.jsonl`: metrics.jsonl then reads exactly as if
  the run had never stopped.

  In a remote workdir (gs://...), where objects cannot be appended to,
  metrics.jsonl is written whole and the TensorBoard event files (written
  locally) are uploaded whole: at most every UPLOAD_SECONDS, at every
  `flush` (before each checkpoint, so that a resume finds every row up to
  it) and at `close`. A run cut off between two uploads loses only rows
  after its last checkpoint, which the resumed run logs again.
  """

  UPLOAD_SECONDS = 30.0

  def __init__(self, workdir: workdir_files.Workdir, enabled: bool = True,
               resumed_step: int = 0, wandb_project: str = '',
               run_config: Mapping[str, Any] | None = None):
    """`wandb_project`: also log to that Weights & Biases project, in one
    W&B run per workdir (a resumed run continues it), with `run_config`."""
    self._enabled = enabled
    self._failed = False  # A write failed (e.g. a full disk).
    self._logged = set()  # (step, split) pairs in metrics.jsonl.
    if not enabled:
      return
    workdir.make()
    self.path = workdir.path(workdir_files.METRICS)
    self._remote = workdir.is_remote
    kept = self._keep_rows_up_to(resumed_step)
    self._rows = kept if self._remote else None  # Remote: every row.
    self._jsonl = None if self._remote else open(self.path, 'a',
                                                 encoding='utf-8')
    self._tb = {}
    self._tb_dir = workdir.path(workdir_files.TENSORBOARD)
    self._wandb = (_start_wandb(wandb_project, str(workdir), run_config)
                   if wandb_project else None)
    # Where the event files are written; uploaded from there if remote.
    self._tb_local = (tempfile.mkdtemp(prefix='nin_jax_tensorboard_')
                      if self._remote else self._tb_dir)
    self._unsent = set()  # Remote: splits with rows not uploaded yet.
    self._sent_at = time.monotonic()

  def _keep_rows_up_to(self, step: int) -> list[bytes]:
    """Moves rows after `step` aside; returns the rows kept."""
    if not storage.exists(self.path):
      return []
    # Bytes: a line may be damaged.
    lines = storage.read_bytes(self.path).splitlines(keepends=True)
    kept, superseded = [], []
    for line in lines:
      row = workdir_files.metrics_row(line)
      if row is not None and line.endswith(b'\n') and row['step'] <= step:
        kept.append(line)
        self._logged.add((row['step'], row['split']))
      else:  # Later, cut short or damaged.
        superseded.append(line if line.endswith(b'\n') else line + b'\n')
    if not superseded:
      return kept
    # Kept first, then removed from metrics.jsonl (atomically).
    storage.append_bytes(
        workdir_files.path(os.path.dirname(self.path),
                           workdir_files.SUPERSEDED_METRICS),
        b''.join(superseded))
    storage.write_atomically(self.path, b''.join(kept))
    logging.info('Moved %d metric rows logged after step %d (which the '
                 'resumed run logs again) to metrics.superseded.jsonl.',
                 len(superseded), step)
    return kept

  def logged(self, step: int, split: str) -> bool:
    return (int(step), split) in self._logged

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
    record.update({k: float(v) for k, v in metrics.items()})
    # json writes NaN/Infinity literals that other readers reject; use null.
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in record.items()}
    with self._one_line_if_storage_fails():
      line = json.dumps(record) + '\n'
      if self._remote:
        self._rows.append(line.encode('utf-8'))
        self._unsent.add(split)
      else:
        self._jsonl.write(line)
        self._jsonl.flush()
      self._logged.add((int(step), split))
      if split not in self._tb:
        self._tb[split] = EventFile(os.path.join(self._tb_local, split))
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=name, simple_value=float(value))
          for name, value in metrics.items()])
      self._tb[split].write(event_pb2.Event(
          wall_time=record['time'], step=int(step), summary=summary))
      if (self._remote and time.monotonic() - self._sent_at
          >= self.UPLOAD_SECONDS):
        self._upload()
    if self._wandb is not None:
      self._wandb.log({f'{split}/{name}': float(value)
                       for name, value in metrics.items()}, step=int(step))

  def _upload(self) -> None:
    """Remote: metrics.jsonl whole, and the event files of the splits that
    have new rows."""
    if self._unsent:
      storage.write_atomically(self.path, b''.join(self._rows))
      for split in sorted(self._unsent):
        storage.upload_tree(os.path.join(self._tb_local, split),
                            workdir_files.path(self._tb_dir, split))
    self._unsent.clear()
    self._sent_at = time.monotonic()

  def flush(self) -> None:
    """Every row written so far is in the workdir (remote: uploaded)."""
    if not self._enabled or not self._remote or self._failed:
      return
    with self._one_line_if_storage_fails():
      self._upload()

  @contextlib.contextmanager
  def _one_line_if_storage_fails(self) -> Iterator[None]:
    """A full disk or an unwritable bucket: one WorkdirError (and close()
    then stays quiet); any other error as it is."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if storage.failure(e) is None:
        raise
      self._failed = True
      raise self._error(e) from None

  def close(self) -> None:
    """Closes every file; after a failed write, quietly (that error stands)."""
    if not self._enabled:
      return
    try:
      if self._jsonl is not None:
        self._jsonl.close()
      for writer in self._tb.values():
        writer.close()
      if self._remote and not self._failed:
        self._upload()
    except Exception as e:  # pylint: disable=broad-except
      if storage.failure(e) is None:
        raise
      if not self._failed:
        raise self._error(e) from None
    finally:
      if self._remote:  # Uploaded above (or the upload failed and said so).
        shutil.rmtree(self._tb_local, ignore_errors=True)
      if self._wandb is not None:
        self._wandb.finish()

  def _error(self, error: Exception) -> errors.WorkdirError:
    if isinstance(error, errors.WorkdirError):  # It names file and fix.
      return error
    reason = getattr(error, 'strerror', None) or error
    return errors.WorkdirError(
        f'Could not write the metrics in {os.path.dirname(self.path)} '
        f'({reason}): free some disk space, then run the same command '
        'again; it resumes from the last checkpoint.')


def check_wandb(config: Any) -> None:
  """config.wandb_project needs the wandb package: say so before a run."""
  if config.wandb_project and importlib.util.find_spec('wandb') is None:
    raise errors.ConfigError(
        f'config.wandb_project={config.wandb_project!r} needs the wandb '
        'package: pip install wandb (or leave config.wandb_project empty).')


def _start_wandb(project: str, workdir: str,
                 run_config: Mapping[str, Any] | None) -> Any:
  import wandb  # pylint: disable=g-import-not-at-top
  # One W&B run per workdir, so that a resumed run continues its own. W&B
  # drops rows at steps it has already seen (those a resume logs again).
  run_id = hashlib.sha256(workdir.encode()).hexdigest()[:16]
  # W&B keeps its files in a local directory: the workdir, unless remote.
  return wandb.init(project=project, id=run_id, resume='allow',
                    dir=None if storage.is_remote(workdir) else workdir,
                    name=os.path.basename(workdir),
                    config=dict(run_config or {}))


class ProgressLogger:
  """One console line per log window: step, epoch, metrics, speed and ETA."""

  def __init__(self, total_steps: int, steps_per_epoch: int):
    self._total = total_steps
    self._steps_per_epoch = steps_per_epoch

  def log(self, step: int, metrics: Mapping[str, float],
          steps_per_second: float) -> None:
    """`steps_per_second` is 0 when no step of the window was timed."""
    epoch = step / self._steps_per_epoch
    line = (f'step {step}/{self._total} (epoch {epoch:.2f})  '
            f'loss {metrics["loss"]:.4f}  '
            f'accuracy {100 * metrics["accuracy"]:.2f}%  '
            f'lr {metrics["learning_rate"]:.4g}')
    if steps_per_second > 0:
      eta = format_duration((self._total - step) / steps_per_second)
      line += f'  {metrics["images_per_sec"]:.1f} img/s  ETA {eta}'
    logging.info('%s', line)
