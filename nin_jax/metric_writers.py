"""Where metrics go: `metrics.jsonl`, TensorBoard event files and the console."""

import json
import math
import os
import time
from typing import Mapping

from absl import logging
import tensorflow as tf


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
  every call is a no-op, so callers need no `if`.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._jsonl = open(self.path, 'a', encoding='utf-8')
    self._tb = {}
    self._tb_dir = os.path.join(workdir, 'tensorboard')

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
    if split not in self._tb:
      self._tb[split] = tf.summary.create_file_writer(
          os.path.join(self._tb_dir, split))
    with self._tb[split].as_default(step=int(step)):
      for name, value in metrics.items():
        tf.summary.scalar(name, float(value))
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
          seconds_per_step: float) -> None:
    epoch = step / self._steps_per_epoch
    eta = format_duration((self._total - step) * seconds_per_step)
    logging.info(
        'step %d/%d (epoch %.2f)  loss %.4f  accuracy %.2f%%  lr %.4g  '
        '%.1f img/s  ETA %s', step, self._total, epoch, metrics['loss'],
        100 * metrics['accuracy'], metrics['learning_rate'],
        metrics['images_per_sec'], eta)
