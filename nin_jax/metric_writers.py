"""Where metrics go: `metrics.jsonl`, TensorBoard event files and the console."""

import json
import math
import os
import time
from typing import Mapping

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer

from nin_jax import files


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class MetricWriter:
  """Appends one JSON object per event and mirrors scalars to TensorBoard.

  Only the process that should write (process 0) opens files; on the others
  every call is a no-op, so callers need no `if`. A run resumed from the
  checkpoint of `resumed_step` recomputes every later event, so rows logged
  after that step by the interrupted run (and a line cut off mid-write) are
  moved to `metrics.superseded.jsonl`: metrics.jsonl then reads exactly as if
  the run had never stopped.
  """

  def __init__(self, workdir: str, enabled: bool = True,
               resumed_step: int = 0):
    self._enabled = enabled
    self._logged = set()  # (step, split) pairs in metrics.jsonl.
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._keep_rows_up_to(resumed_step)
    self._jsonl = open(self.path, 'a', encoding='utf-8')
    self._tb = {}
    self._tb_dir = os.path.join(workdir, 'tensorboard')

  def _keep_rows_up_to(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding='utf-8') as f:
      lines = f.read().splitlines(keepends=True)
    kept, superseded = [], []
    for line in lines:
      try:
        row = json.loads(line)
        complete = line.endswith('\n')
      except json.JSONDecodeError:
        row, complete = None, False
      if complete and row['step'] <= step:
        kept.append(line)
        self._logged.add((row['step'], row['split']))
      else:
        superseded.append(line if line.endswith('\n') else line + '\n')
    if not superseded:
      return
    # Kept first, then removed from metrics.jsonl (atomically).
    with open(os.path.join(os.path.dirname(self.path),
                           'metrics.superseded.jsonl'), 'a',
              encoding='utf-8') as f:
      f.writelines(superseded)
    files.write_atomically(self.path, ''.join(kept))
    logging.info('Moved %d metric rows logged after step %d (which the '
                 'resumed run logs again) to metrics.superseded.jsonl.',
                 len(superseded), step)

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
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._logged.add((int(step), split))
    if split not in self._tb:
      # TensorBoard's own event writer: no TensorFlow needed.
      self._tb[split] = event_file_writer.EventFileWriter(
          os.path.join(self._tb_dir, split))
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in metrics.items()])
    self._tb[split].add_event(event_pb2.Event(
        wall_time=record['time'], step=int(step), summary=summary))
    self._tb[split].flush()

  def close(self) -> None:
    if not self._enabled:
      return
    self._jsonl.close()
    for writer in self._tb.values():
      writer.close()


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
