"""End to end through `main`, resume, and the training loop's safeguards."""

import json
import math
import os
import sys

from absl import flags
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nin_jax import input_pipeline
from nin_jax import main
from nin_jax import train

TEST_CONFIG = os.path.join(os.path.dirname(main.__file__), 'configs', 'test.py')


def run_main(monkeypatch, workdir, *overrides):
  """Runs `python -m nin_jax.main` in this process (so mock_data applies)."""
  argv = ['nin_jax.main', f'--workdir={workdir}', f'--config={TEST_CONFIG}',
          *overrides]
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads overrides here.
  for name in list(flags.FLAGS):  # Forget the previous run's override flags.
    if name.startswith('config.'):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  main.main(argv[:1])


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
    run_main(monkeypatch, workdir, *cifar)
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [r['step'] for r in train_rows] == [2, 4]
  for row in train_rows:
    for key in ('loss', 'accuracy', 'learning_rate', 'images_per_sec'):
      assert math.isfinite(row[key]), key
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
  with tfds.testing.mock_data(num_examples=40):
    run_main(monkeypatch, workdir, *cifar)
  assert read_metrics(workdir) == rows


class _Interrupt(Exception):
  pass


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(
    tiny_config, tmp_path, monkeypatch):
  tiny_config.num_train_steps = 6
  tiny_config.input_pipeline = 'streaming'  # Interrupted through its batches.
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(tiny_config, straight)

  real_batches = input_pipeline.train_batches

  def dies_after_five_steps(*args, **kwargs):
    for i, batch in enumerate(real_batches(*args, **kwargs)):
      if i == 5:
        raise _Interrupt()
      yield batch

  resumed = str(tmp_path / 'resumed')
  monkeypatch.setattr(input_pipeline, 'train_batches', dies_after_five_steps)
  with pytest.raises(_Interrupt):
    train.train_and_evaluate(tiny_config, resumed)
  monkeypatch.setattr(input_pipeline, 'train_batches', real_batches)
  assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['2', '4']
  train.train_and_evaluate(tiny_config, resumed)  # Continues at step 5.

  resumed_rows = [r for r in read_metrics(resumed) if r['step'] == 6]
  straight_rows = [r for r in read_metrics(straight) if r['step'] == 6]
  for a, b in zip(resumed_rows, straight_rows):
    assert a['split'] == b['split']
    assert a['loss'] == b['loss'] and a['accuracy'] == b['accuracy']
  assert len(resumed_rows) == len(straight_rows) == 2


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
  with pytest.raises(SystemExit) as exited:
    run_main(monkeypatch, str(workdir), '--config.dataset=cifar10',
             f'--config.data_dir={tmp_path / "data"}')
  assert exited.value.code == 2
  err = capsys.readouterr().err
  assert 'downloads/manual/cifar-10-binary.tar.gz' in err
  assert not (workdir / 'checkpoints').exists()


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
