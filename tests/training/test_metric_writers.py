"""The console line of each log window, and where metric rows go."""

import importlib.util
import logging
import subprocess
import sys

import pytest

from nin_jax import errors
from nin_jax.files import workdir_files
from nin_jax.training import config_checks
from nin_jax.training import metric_writers

METRICS = {'loss': 1.5, 'accuracy': 0.25, 'learning_rate': 0.1,
           'images_per_sec': 256.0}


def _line(caplog, steps_per_second, metrics=METRICS):
  logger = metric_writers.ProgressLogger(total_steps=1000, steps_per_epoch=100)
  with caplog.at_level(logging.INFO, logger='absl'):
    logger.log(100, metrics, steps_per_second)
  return caplog.records[-1].getMessage()


def test_speed_and_eta_from_the_timed_steps(caplog):
  line = _line(caplog, steps_per_second=2.0)
  assert line.startswith('step 100/1000 (epoch 1.00)  loss 1.5000  '
                         'accuracy 25.00%  lr 0.1')
  assert line.endswith('256.0 img/s  ETA 7m30s')  # 900 steps at 2 per second.


def test_no_speed_or_eta_when_only_compilation_was_timed(caplog):
  # The first window can hold just the first dispatch, whose time is left
  # off the clock: no invented 0 img/s and an ETA of a million hours.
  metrics = {k: v for k, v in METRICS.items() if k != 'images_per_sec'}
  line = _line(caplog, steps_per_second=0.0, metrics=metrics)
  assert 'img/s' not in line and 'ETA' not in line
  assert line.endswith('lr 0.1')


def test_metrics_also_go_to_weights_and_biases_offline(tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = workdir_files.Workdir(str(tmp_path / 'run'))
  writer = metric_writers.MetricWriter(workdir, wandb_project='nin-test',
                                       run_config={'seed': 0})
  writer.write(2, 'train', {'loss': 1.5, 'accuracy': 0.25})
  writer.write(2, 'test', {'loss': 1.7, 'accuracy': 0.2})
  writer.close()
  runs = list((tmp_path / 'run' / 'wandb').glob('offline-run-*/run-*.wandb'))
  assert len(runs) == 1 and runs[0].stat().st_size > 0
  # One W&B run per workdir: its id comes from the workdir's path.
  again = metric_writers.MetricWriter(workdir, resumed_step=2,
                                      wandb_project='nin-test')
  again.close()
  ids = {p.name for p in (tmp_path / 'run' / 'wandb').glob(
      'offline-run-*/run-*.wandb')}
  assert len(ids) == 1


def test_wandb_project_without_the_package_is_a_config_error(
    tiny_config, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      None if name == 'wandb' else find_spec(name, *a)))
  tiny_config.wandb_project = 'nin-test'
  with pytest.raises(errors.ConfigError, match='pip install wandb'):
    config_checks.validate(tiny_config)


def test_a_resume_keeps_rows_up_to_its_step_and_moves_the_rest(tmp_path):
  """Later rows, damaged lines and a cut last line go to the superseded file
  (before, a row without a step or binary bytes stopped the resume)."""
  good = b'{"step": 2, "split": "train", "loss": 1.0}\n'
  later = b'{"step": 4, "split": "train", "loss": 0.9}\n'
  damaged = [b'\xff\xfe binary\n', b'{"split": "train"}\n']
  cut = b'{"step": 6, "spl'
  (tmp_path / 'metrics.jsonl').write_bytes(good + later + b''.join(damaged)
                                           + cut)
  writer = metric_writers.MetricWriter(workdir_files.Workdir(str(tmp_path)),
                                       resumed_step=2)
  writer.close()
  assert writer.logged(2, 'train') and not writer.logged(4, 'train')
  assert (tmp_path / 'metrics.jsonl').read_bytes() == good
  assert (tmp_path / 'metrics.superseded.jsonl').read_bytes() == (
      later + b''.join(damaged) + cut + b'\n')


def test_tensorboard_reads_the_event_files_and_tensorflow_stays_unloaded(
    tmp_path):
  # In a fresh interpreter: this one may have imported TensorFlow already.
  script = f'''
import sys
from tensorboard.backend.event_processing import event_file_loader
from nin_jax.files import workdir_files
from nin_jax.training import metric_writers
writer = metric_writers.MetricWriter(workdir_files.Workdir({str(tmp_path)!r}))
writer.write(2, 'train', {{'loss': 1.5, 'accuracy': 0.25}})
writer.write(4, 'train', {{'loss': 1.25, 'accuracy': 0.5}})
writer.close()
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
# TensorBoard's loader then reads with its own record reader, as it does
# where TensorFlow is not installed (importing it here would cost seconds).
sys.modules['tensorflow'] = None
import glob
[path] = glob.glob({str(tmp_path)!r} + '/tensorboard/train/events.out.tfevents.*')
events = list(event_file_loader.LegacyEventFileLoader(path).Load())
assert events[0].file_version == 'brain.Event:2', events[0]
print([(e.step, [(v.tag, round(v.simple_value, 2)) for v in e.summary.value])
       for e in events[1:]])
'''
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == ("[(2, [('loss', 1.5), ('accuracy', 0.25)]), "
                                "(4, [('loss', 1.25), ('accuracy', 0.5)])]")
