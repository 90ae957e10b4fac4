"""End to end through `main`, resume, and the training loop's safeguards."""

import functools
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nin_jax.data import input_pipeline
from nin_jax import errors
from nin_jax import evaluate
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.training import checkpointing
from nin_jax.training import parallel
from nin_jax.training import steps
from nin_jax.training import train
from nin_jax.training import trained_run
from tests import main_runner


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def online(monkeypatch):
  """Pretend the download host answers (mock_data then serves the data)."""
  monkeypatch.setattr(input_pipeline, '_host_reachable', lambda url: True)


def test_main_trains_cifar10_under_mock_data_then_resume_is_a_no_op(
    tmp_path, online, monkeypatch):
  workdir = str(tmp_path / 'run')
  cifar = ['--config.dataset=cifar10', '--config.eval_batch_size=16']
  with tfds.testing.mock_data(num_examples=40):
    assert main_runner.run_main(monkeypatch, workdir, *cifar) == 0
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [r['step'] for r in train_rows] == [2, 4]
  for row in train_rows:
    for key in ('loss', 'accuracy', 'learning_rate'):
      assert math.isfinite(row[key]), key
  # The first window holds only the first dispatch, whose time (mostly
  # compilation) is left off the clock: its speed is unknown, not 0.
  assert 'images_per_sec' not in train_rows[0]
  assert train_rows[1]['images_per_sec'] > 0
  final = rows[-1]
  assert (final['split'], final['step']) == ('test', 4)
  assert 0.0 <= final['accuracy'] <= 1.0
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['dataset'] == 'cifar10'
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  events = [name for _, _, files in os.walk(os.path.join(workdir, 'tensorboard'))
            for name in files if name.startswith('events.out.tfevents')]
  assert len(events) == 2  # train and test

  # The same command again: the run is complete, nothing more is trained.
  # And `evaluate` sees every (mock) test image once, with the logits of a
  # direct computation on the raw images.
  with tfds.testing.mock_data(num_examples=40):
    assert main_runner.run_main(monkeypatch, workdir, *cifar) == 0
    run = trained_run.load(workdir)
    logits, labels = evaluate.predictions(run, 'test')
    raw = input_pipeline.Dataset(run.config).head('test', 100)
  assert read_metrics(workdir) == rows
  assert len(labels) == 40  # The last of 3 batches of 16 is padded.
  np.testing.assert_array_equal(labels, raw['label'])
  np.testing.assert_allclose(
      logits, np.asarray(run.logits(run.preprocess(raw['image']))),
      rtol=1e-5, atol=1e-5)


def test_dead_relu_warning(tiny_config, tmp_path, caplog):
  tiny_config.model.bias_init = -100.0  # Every ReLU starts (and stays) off.
  tiny_config.model.class_bias_init = -100.0
  tiny_config.log_every_steps = 1
  tiny_config.dead_relu_patience = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  rows = [r for r in read_metrics(str(tmp_path)) if r['split'] == 'train']
  assert all(r['dead_fraction'] == 1.0 for r in rows)
  np.testing.assert_allclose(rows[-1]['loss'], math.log(10), rtol=1e-6)
  assert any('ReLU after the last' in r.getMessage() for r in caplog.records)


def test_non_finite_loss_stops_training(tiny_config, tmp_path):
  tiny_config.learning_rate = 1e30
  tiny_config.warmup_epochs = 0.0
  tiny_config.num_train_steps = 8
  with pytest.raises(FloatingPointError, match='No checkpoint had been saved'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_offline_default_command_fails_fast_with_the_manual_route(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(input_pipeline, '_host_reachable', lambda url: False)
  workdir = tmp_path / 'run'
  code = main_runner.run_main(monkeypatch, str(workdir),
                              '--config.dataset=cifar10',
                              f'--config.data_dir={tmp_path / "data"}')
  assert code == 2
  err = capsys.readouterr().err
  assert 'downloads/manual/cifar-10-binary.tar.gz' in err
  assert not workdir.exists()  # Nothing created.


def test_batch_size_must_divide_over_devices(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  with pytest.raises(train.errors.ConfigError, match='multiple of the 3'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_validation_split_is_used_until_the_final_test(tiny_config, tmp_path):
  tiny_config.validation_size = 100
  result = train.train_and_evaluate(tiny_config, str(tmp_path))
  evals = [(r['step'], r['split'], r['num_examples'])
           for r in read_metrics(str(tmp_path)) if r['split'] != 'train']
  assert evals == [(2, 'validation', 100), (4, 'validation', 100),
                   (4, 'test', 360)]
  assert result['num_examples'] == 360


def test_several_steps_per_dispatch_equal_the_steps_one_by_one(tiny_config):
  """train_steps (one compiled loop) against the trainer's per-step path."""
  from nin_jax.data import device_input  # pylint: disable=g-import-not-at-top,g-multiple-import
  from nin_jax.training import parallel
  dataset = input_pipeline.Dataset(tiny_config)
  info = input_pipeline.get_info(dataset)
  prep = input_pipeline.fit_preprocessing(dataset, info, tiny_config)
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  batches = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, tiny_config, strategy)
  key = steps.dropout_key(tiny_config.seed)

  def fresh_state():
    return strategy.put_state(steps.initial_state(
        tiny_config, info.image_shape, steps_per_epoch=10, num_steps=100)[0])

  one_by_one, sums = fresh_state(), []
  for index in range(5):
    one_by_one, metrics = strategy.train_step(one_by_one, batches.batch(index),
                                              key)
    sums.append(metrics)
  fused = strategy.compile_steps(functools.partial(
      steps.train_steps, draw=batches.draw))
  looped, first = fused(fresh_state(), batches.inputs, key, np.int32(0),
                        np.int32(2))
  looped, rest = fused(looped, batches.inputs, key, np.int32(2), np.int32(3))
  assert int(looped.step) == 5
  for a, b in zip(jax.tree.leaves(looped.params),
                  jax.tree.leaves(one_by_one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert set(first) == set(rest) == set(sums[0])
  for name in first:
    np.testing.assert_allclose(first[name] + rest[name],
                               sum(float(m[name]) for m in sums), rtol=1e-5)
  assert float(first['count'] + rest['count']) == 5 * tiny_config.batch_size


def test_dispatches_end_at_every_log_evaluation_and_checkpoint():
  plan = train.Plan(steps_per_epoch=22, num_steps=100, log_every=10,
                    eval_every=22, checkpoint_every=25)
  step, stops = 0, []
  while step < plan.num_steps:
    step = plan.next_event(step)
    stops.append(step)
  assert stops == [10, 20, 22, 25, 30, 40, 44, 50, 60, 66, 70, 75, 80, 88, 90,
                   100]




def test_a_resume_inside_a_log_window_logs_the_same_bits(
    tiny_config, tmp_path, monkeypatch):
  """A run resumed from step 2 of a 4-step log window must cut its steps into
  the same dispatches as the uninterrupted run, or the window's float32 loss
  sum (and so metrics.jsonl) could differ in the last bits."""
  config = tiny_config
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 8
  config.keep_checkpoints = 4
  config.steps_per_dispatch = 3
  config.lr_schedule = 'step'  # Constant: both runs share one schedule.
  dispatches = []
  compile_steps = parallel.Jit.compile_steps

  def recording(self, steps_fn):
    fused = compile_steps(self, steps_fn)

    def run(state, inputs, key, first, count):
      dispatches.append((int(first), int(count)))
      return fused(state, inputs, key, first, count)
    return run

  monkeypatch.setattr(parallel.Jit, 'compile_steps', recording)
  straight = tmp_path / 'straight'
  train.train_and_evaluate(config, str(straight))
  straight_dispatches, dispatches[:] = list(dispatches), []
  resumed = tmp_path / 'resumed'
  shutil.copytree(straight, resumed)
  for step in ('4', '6', '8'):
    shutil.rmtree(resumed / 'checkpoints' / step)
  train.train_and_evaluate(config, str(resumed))
  assert dispatches == [d for d in straight_dispatches if d[0] >= 2]

  def rows(workdir):
    with open(workdir / 'metrics.jsonl', encoding='utf-8') as f:
      return [{k: v for k, v in json.loads(line).items()
               if k not in ('time', 'images_per_sec')} for line in f]

  assert [r['step'] for r in rows(resumed)] == [4, 8, 8]
  assert rows(resumed) == rows(straight)


def test_keep_best_keeps_the_best_validation_checkpoint_and_profile_steps(
    tiny_config, tmp_path):
  config = tiny_config
  config.num_train_steps = 8
  config.eval_every_steps = config.checkpoint_every_steps = 2
  config.keep_checkpoints = 1
  config.keep_best = True
  config.validation_size = 100
  config.profile_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  validation = [r for r in read_metrics(str(tmp_path))
                if r['split'] == 'validation']
  assert [r['step'] for r in validation] == [2, 4, 6, 8]
  best = max(validation[::-1], key=lambda r: r['accuracy'])['step']
  kept = sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints'))
  assert kept == sorted({best, 8})
  _, _, progress = checkpointing.read_checkpoint(str(tmp_path))
  assert progress['best']['step'] == best
  traces = list((tmp_path / 'tensorboard' / 'plugins' / 'profile').glob(
      '*/*.xplane.pb'))
  assert len(traces) == 1


def test_the_best_of_equal_accuracies_is_the_later_and_unscored_ones_go(
    tmp_path):
  checkpointer = checkpointing.Checkpointer(
      workdir_files.Workdir(str(tmp_path)), keep=1, keep_best=True)
  for step, accuracy in [(1, 0.5), (2, 0.9), (3, 0.6), (4, None), (5, 0.9),
                         (6, 0.7)]:
    checkpointer.save(step, {'w': np.full(3, step, np.float32)},
                      {'step': step}, accuracy)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['5', '6']


def test_keep_best_needs_a_validation_split(tiny_config, tmp_path):
  tiny_config.keep_best = True
  tiny_config.validation_size = 0
  with pytest.raises(errors.ConfigError, match='validation_size'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_one_trainer_per_workdir_and_other_bad_workdirs(tiny_config, tmp_path):
  workdir = tmp_path / 'run'
  with workdir_files.RunLock(str(workdir)):  # A trainer already running.
    with pytest.raises(errors.WorkdirError,
                       match=f'Another trainer is running .*pid {os.getpid()}'):
      train.train_and_evaluate(tiny_config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['.lock']
  with pytest.raises(errors.WorkdirError, match='--workdir is empty'):
    train.train_and_evaluate(tiny_config, '')
  (workdir / 'checkpoints').write_text('not a directory')
  (workdir / 'metrics.jsonl').write_text('{"step": 2, "split": "train"}\n')
  with pytest.raises(errors.WorkdirError, match='checkpoints is a file'):
    train.train_and_evaluate(tiny_config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['.lock', 'checkpoints',
                                          'metrics.jsonl']


def test_a_url_workdir_never_becomes_a_local_folder(
    tiny_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # A scheme nin_jax cannot write is refused; gs:// that cannot be reached
  # (no network here) is one error too.
  with pytest.raises(errors.WorkdirError, match='hdfs://nn/run: .*mount'):
    train.train_and_evaluate(tiny_config, 'hdfs://nn/run')
  class Unreachable:
    def __init__(self, name):
      del name
    def exists(self):
      raise OSError('Could not resolve host')
  monkeypatch.setattr(storage, '_path', Unreachable)
  with pytest.raises(errors.WorkdirError,
                     match=r'Cannot reach --workdir=gs://bucket/run \(OSError'):
    train.train_and_evaluate(tiny_config, 'gs://bucket/run')
  monkeypatch.undo()
  monkeypatch.chdir(tmp_path)
  tiny_config.cache_dir = 's3://bucket/cache'
  with pytest.raises(errors.WorkdirError, match='config.cache_dir'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == []
