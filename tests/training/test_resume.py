"""A run killed at any moment and restarted ends bit for bit as an
uninterrupted one; SIGTERM saves and exits 75; divergence saves nothing bad.

The interrupted run is killed four times, at moments chosen through
tests/faulty_main.py: after logging a step (before its checkpoint), after a
checkpoint (before its evaluation), in the middle of a checkpoint save, and
by SIGTERM. Each time the same command is simply run again.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from nin_jax import errors
from nin_jax.files import workdir_files
from nin_jax.training import checkpointing
from nin_jax.training import metric_writers
from nin_jax.training import steps
from nin_jax.training import stop_signals
from nin_jax.training import train

from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ['--config=nin_jax/configs/test.py', '--config.num_train_steps=8',
        '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
        '--config.eval_every_steps=4', '--config.validation_size=100',
        # The compiled loop over steps (GPU/TPU's default) must resume exactly.
        '--config.steps_per_dispatch=2']
# Logged values that depend on the wall clock, not on the computation.
TIMING = ('time', 'images_per_sec')


def _start(workdir, fault=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if fault:
    env['NIN_JAX_FAULT'] = fault
  program = ([os.path.join(REPO, 'tests', 'faulty_main.py')] if fault
             else ['-m', 'nin_jax.main'])
  return subprocess.Popen([sys.executable, *program, f'--workdir={workdir}',
                           *ARGS], cwd=REPO, env=dict(env, PYTHONPATH=REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('resume')
  straight, broken = str(root / 'straight'), str(root / 'broken')
  exits = []
  for fault in ('kill_after_log:3', 'kill_after_save:4', 'kill_in_save:6',
                'sigterm_after_log:7', None):
    process = _start(broken, fault)
    if fault == 'kill_after_log:3':
      # The uninterrupted run in this process meanwhile: the same command.
      with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_runner.run_main(monkeypatch, straight, *ARGS[1:]) == 0
    out, _ = process.communicate(timeout=300)
    exits.append((fault, process.returncode, out))
  return straight, broken, exits


def test_each_interruption_ended_as_intended(runs):
  _, broken, exits = runs
  codes = [code for _, code, _ in exits]
  assert codes == [-signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL,
                   errors.EXIT_PREEMPTED, 0], [out[-2000:] for *_, out in exits]
  sigterm_out = exits[3][2]
  assert 'SIGTERM received' in sigterm_out
  assert 'Saved a checkpoint at step 7' in sigterm_out
  # Rows logged after the checkpoint a run resumed from were set aside, and
  # the save cut short left nothing behind.
  assert os.path.exists(os.path.join(broken, 'metrics.superseded.jsonl'))
  assert not [n for n in os.listdir(os.path.join(broken, 'checkpoints'))
              if checkpointing.TMP_SUFFIX in n]
  assert 'left by a save that did not finish' in exits[3][2]


def test_killed_and_resumed_run_equals_the_uninterrupted_one(runs):
  straight, broken, _ = runs
  assert _rows(broken) == _rows(straight)  # Every step, split and value.
  step_a, arrays_a, _ = checkpointing.read_checkpoint(straight)
  step_b, arrays_b, _ = checkpointing.read_checkpoint(broken)
  assert step_a == step_b == 8
  leaves_a, tree_a = jax.tree.flatten(arrays_a)
  leaves_b, tree_b = jax.tree.flatten(arrays_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # Bit for bit.


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(
    tiny_config, tmp_path, caplog):
  tiny_config.num_train_steps = 4
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config, workdir)
  damaged = 0
  for folder, _, files in os.walk(os.path.join(workdir, 'checkpoints', '4')):
    for name in files:
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(0)
      damaged += 1
  assert damaged
  tiny_config.num_train_steps = 6  # Allowed change: train longer.
  result = train.train_and_evaluate(tiny_config, workdir)
  assert result['num_examples'] == 360
  assert any('Checkpoint at step 4 cannot be read' in r.getMessage()
             for r in caplog.records)
  kept = os.listdir(os.path.join(workdir, workdir_files.UNREADABLE_CHECKPOINTS))
  assert len(kept) == 1 and kept[0].startswith('4-')  # Moved, not deleted.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '2', '4', '6']


def test_nan_stops_training_and_keeps_the_good_checkpoints(
    tiny_config, tmp_path, monkeypatch):
  tiny_config.num_train_steps = 8
  tiny_config.log_every_steps = 1
  real_step = steps.train_step

  def poisoned_step(state, batch, key, axis_name=None):
    state, metrics = real_step(state, batch, key, axis_name)
    poison = jax.numpy.where(state.step >= 5, jax.numpy.nan, 0.0)
    params = jax.tree.map(lambda p: p + poison, state.params)
    return state.replace(params=params), metrics
  monkeypatch.setattr(steps, 'train_step', poisoned_step)
  with pytest.raises(errors.TrainingDiverged) as raised:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  message = str(raised.value)
  assert 'by step 6' in message and 'checkpoint is step 4' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  _, arrays, _ = checkpointing.read_checkpoint(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(arrays))


def test_checkpoints_hold_no_dropout_key_and_a_resume_keeps_the_seed(
    tiny_config, tmp_path):
  """Dropout comes from config.seed and the step, so a resume may not
  change the seed."""
  tiny_config.checkpoint_every_steps = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  step, arrays, _ = checkpointing.read_checkpoint(str(tmp_path))
  assert step == 4 and set(arrays) == {'train_state'}
  tiny_config.seed = 1
  with pytest.raises(errors.ConfigError, match='seed'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_a_stop_at_an_evaluation_step_evaluates_it_on_resume(
    tiny_config, tmp_path, monkeypatch):
  """A stop signal saves without evaluating; the resumed run evaluates that
  step first, so the metrics equal an uninterrupted run's."""
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  train.train_and_evaluate(tiny_config, straight)
  write = metric_writers.MetricWriter.write

  def write_then_stop(self, step, split, metrics):
    write(self, step, split, metrics)
    if step == tiny_config.eval_every_steps and split == 'train':
      os.kill(os.getpid(), signal.SIGTERM)
  with monkeypatch.context() as patch:
    patch.setattr(metric_writers.MetricWriter, 'write', write_then_stop)
    with pytest.raises(errors.Preempted):
      train.train_and_evaluate(tiny_config, stopped)
  assert [row['split'] for row in _rows(stopped)] == ['train']
  train.train_and_evaluate(tiny_config, stopped)
  assert _rows(stopped) == _rows(straight)


def test_a_signal_during_start_up_exits_75_before_the_workdir_is_touched(
    tiny_config, tmp_path, monkeypatch):
  before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # Not under nohup.
  monkeypatch.setattr(train, '_load_data', _hanging_up(train._load_data))
  try:
    with pytest.raises(errors.Preempted, match='SIGHUP received while the '
                       'run was starting: nothing new to save'):
      train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert not os.path.exists(tmp_path / 'run')
    # The handlers are restored afterwards.
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGHUP, before)


def test_a_run_started_with_nohup_ignores_sighup(tiny_config, tmp_path,
                                                 monkeypatch):
  before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # As nohup does.
  monkeypatch.setattr(train, '_load_data', _hanging_up(train._load_data))
  try:
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGHUP, before)
  assert [row['step'] for row in _rows(str(tmp_path / 'run'))
          if row['split'] == 'test'][-1] == tiny_config.num_train_steps


def _hanging_up(load_data):
  def load_then_hang_up(*args):
    os.kill(os.getpid(), signal.SIGHUP)  # A closed terminal, mid start-up.
    return load_data(*args)
  return load_then_hang_up


def test_a_signal_before_the_run_listens_exits_75_too(tiny_config, tmp_path):
  """python -m nin_jax.main notes stop signals from its first moment on
  (stop_signals.listen_early), before its imports: one that comes then
  killed the process (status -15) before."""
  previous = {s: signal.getsignal(s)
              for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
  stop_signals.listen_early()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(errors.Preempted, match='SIGTERM received while the '
                       'run was starting: nothing new to save'):
      train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  finally:
    now = {s: signal.getsignal(s) for s in previous}
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  assert now == previous  # The run gave the handlers back.
  assert not os.path.exists(tmp_path / 'run')
  # Forgotten once honoured: the next run in this process is not stopped.
  with stop_signals.StopSignals() as stop:
    assert stop.received is None


def test_a_second_sigint_is_one_line_and_exit_130(monkeypatch, tmp_path,
                                                   capsys):
  def interrupted(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(train, 'train_and_evaluate', interrupted)
  assert main_runner.run_main(monkeypatch, str(tmp_path)) == 130
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith('error: interrupted at once by a second SIGINT')
  assert 'Traceback' not in '\n'.join(err)


def test_a_damaged_config_json_is_kept_aside_on_resume(tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config, str(tmp_path))
  (tmp_path / 'config.json').write_bytes(bytes(range(256)))  # Not UTF-8.
  tiny_config.num_train_steps += 2  # Resume for two more steps.
  train.train_and_evaluate(tiny_config, str(tmp_path))
  assert (tmp_path / 'config.before_step4.json').read_bytes() == bytes(
      range(256))
  assert json.loads((tmp_path / 'config.json').read_text())[
      'num_train_steps'] == 6
