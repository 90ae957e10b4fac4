"""Bad flags, configs and workdirs: exit status 2, one line, nothing lost."""

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
import pytest

from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.model import nin
from nin_jax.training import checkpointing
from nin_jax.training import config_checks
from nin_jax.training import metric_writers
from nin_jax.training import optimizer
from nin_jax.training import parallel
from nin_jax.training import train
from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(monkeypatch, capsys, workdir, *overrides, **kwargs):
  """(exit status, stderr) of `python -m nin_jax.main`."""
  code = main_runner.run_main(monkeypatch, workdir, *overrides, **kwargs)
  return code, capsys.readouterr().err


def _error_lines(err):
  return [line for line in err.splitlines() if line.startswith('error: ')]


@pytest.mark.parametrize('override,reason', [
    ('--config.no_such_field=1', "unknown config field 'no_such_field'"),
    ('--config.model.widths=3', "unknown config field 'widths'"),
    ('--config.learning_rat=0.1', "unknown config field 'learning_rat' in "
     '--config.learning_rat (Did you mean "learning_rate" instead of '
     '"learning_rat"?)'),
    ('--config.batch_size=abc', 'invalid literal'),
    ('--config.learning_rate=-1', 'learning_rate=-1.0 must be a positive'),
    ('--config.learning_rate=nan', 'learning_rate=nan must be a positive'),
    ('--config.model.dropout_rate=1.5', 'dropout_rate=1.5 must be in [0, 1)'),
    ('--config.model.pool_window=99', 'pool_window=99 is larger than the 8x8'),
    ('--config.lr_multipliers=(("bias[", 2.0),)', "regex 'bias[' does not"),
    ('--config.seed=4294967296', 'seed=4294967296 must be in [0, 2147483647]'),
    ('--config.optimizer=lamb', "optimizer='lamb' is not one of"),
    ('--config.eval_every_steps=0', 'eval_every_steps=0 must be -1'),
    ('--config.preprocessing=zca', "preprocessing='zca' is not one of"),
    ('--config.dataset=cifar11', "Unknown dataset 'cifar11'"),
    ('--config.num_classes=7', 'has 10 classes but config.num_classes=7'),
    ('--config.batch_size=5000', 'larger than the 1437 training examples'),
])
def test_bad_value_exits_2_with_one_line(override, reason, tmp_path,
                                         monkeypatch, capsys):
  code, err = run(monkeypatch, capsys, tmp_path / 'run', override)
  assert code == errors.EXIT_USER_ERROR
  lines = _error_lines(err)
  assert len(lines) == 1 and reason in lines[0], err[-2000:]
  assert 'Traceback' not in err
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def _set(config, field, value):
  *parents, name = field.split('.')
  for parent in parents:
    config = config[parent]
  config[name] = value


# One bad value for each module's part of the config, and the message.
_ONE_BAD_VALUE_PER_PART = [
    ({'dataset': ''}, 'config.dataset is empty'),
    ({'train_split': 'train+validation'}, "The digits dataset has splits "
     "('train', 'test'), not 'validation' (in 'train+validation')"),
    ({'input_pipeline': 'streaming', 'data_shards': 5}, 'config.data_shards=5 '
     'must be a multiple of the 1 processes and divide config.batch_size=16'),
    ({'shuffle_buffer': 0}, 'config.shuffle_buffer=0 must be at least 1'),
    ({'gcn_scale': 0.0}, 'config.gcn_scale=0.0 must be a positive number'),
    ({'model.pools': ('max', 'sum')}, "Unknown pool 'sum'"),
    ({'model.block_features': (8, 6, 4)}, 'must be a tuple of blocks'),
    ({'lr_multipliers': (('(', 2.0),)}, "regex '(' does not compile"),
    ({'lr_schedule': 'linear'}, "config.lr_schedule='linear' is not one of"),
    ({'batch_size': -16}, 'config.batch_size=-16 must be a positive multiple '
     'of the 1 devices'),
    ({'parallelism': 'pjit'}, "config.parallelism='pjit' is not one of"),
    ({'seed': 2**31}, 'config.seed=2147483648 must be in [0, 2147483647]'),
    ({'model.bias_init': float('nan')}, 'config.model.bias_init=nan must be '
     'finite'),
    ({'num_epochs': 0, 'num_train_steps': -1}, 'Set config.num_epochs'),
]


@pytest.mark.parametrize('overrides,message', _ONE_BAD_VALUE_PER_PART)
def test_every_part_is_checked_before_data_or_factories(
    tiny_config, overrides, message, tmp_path, monkeypatch):
  """A bad config fails in validate: no data read, no model or optimizer
  built (the factories trust their input)."""
  def reached(*args, **kwargs):
    raise AssertionError('reached past config_checks.validate')
  for module, name in [(input_pipeline, 'Dataset'),
                       (input_pipeline, 'image_shape'),
                       (preprocessing, 'fit_cached'),
                       (nin, 'create_model'),
                       (optimizer, 'create_learning_rate_fn'),
                       (optimizer, 'create_optimizer'),
                       (parallel, 'create')]:
    monkeypatch.setattr(module, name, reached)
  for field, value in overrides.items():
    _set(tiny_config, field, value)
  with pytest.raises(errors.ConfigError, match=re.escape(message)) as raised:
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert '\n' not in str(raised.value)
  assert not (tmp_path / 'run').exists()


def test_batch_sizes_and_data_shards_are_checked_against_the_hardware(
    tiny_config, monkeypatch):
  config_checks.validate(tiny_config)
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  with pytest.raises(errors.ConfigError, match='batch_size=16 must be a '
                     'positive multiple of the 3 devices; pass e.g. '
                     '--config.batch_size=15'):
    config_checks.validate(tiny_config)
  tiny_config.batch_size = 48
  with pytest.raises(errors.ConfigError, match='eval_batch_size=80'):
    config_checks.validate(tiny_config)
  tiny_config.eval_batch_size = 81
  config_checks.validate(tiny_config)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  config_checks.validate(tiny_config)  # The device input ignores data_shards.
  tiny_config.input_pipeline = 'streaming'
  config_checks.validate(tiny_config)  # One shard per process.
  tiny_config.data_shards = 3
  with pytest.raises(errors.ConfigError, match='multiple of the 2 processes'):
    config_checks.validate(tiny_config)


def test_a_config_without_a_field_or_with_none_is_one_error(tiny_config):
  """A config file that deletes a field, or sets a number to None, failed
  with a KeyError or TypeError inside validate."""
  config = tiny_config.copy_and_resolve_references()
  del config['seed']
  with pytest.raises(errors.ConfigError, match=re.escape(
      'The config has no field(s) seed: build it from')):
    config_checks.validate(config)
  tiny_config.learning_rate = None
  with pytest.raises(errors.ConfigError, match=re.escape(
      'config.learning_rate=None is a NoneType; it must be a float')):
    config_checks.validate(tiny_config)
  tiny_config.learning_rate, tiny_config.data_dir = 0.1, None
  config_checks.validate(tiny_config)  # A placeholder may be None.


def test_a_saved_config_with_a_removed_field_still_loads(tiny_config,
                                                          tmp_path):
  """nin_jax/pretrained/cifar10's config.json holds accept_manual_checksums,
  since removed: reading drops it; any other unknown field is an error."""
  saved = dict(tiny_config.to_dict(), accept_manual_checksums=False)
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = ml_collections.ConfigDict(config_checks.saved_config(
      workdir_files.Workdir(str(tmp_path))))
  assert 'accept_manual_checksums' not in config
  config_checks.check_fields(config)
  saved['no_such_field'] = 1
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = ml_collections.ConfigDict(config_checks.saved_config(
      workdir_files.Workdir(str(tmp_path))))
  with pytest.raises(errors.ConfigError, match='no_such_field'):
    config_checks.check_fields(config)


def test_config_file_with_a_wrong_type(tmp_path, monkeypatch, capsys):
  bad = tmp_path / 'bad_config.py'
  bad.write_text('import ml_collections\n'
                 'from nin_jax.configs import test\n'
                 'def get_config():\n'
                 '  fields = test.get_config().to_dict()\n'
                 "  fields['batch_size'] = '16'\n"
                 '  return ml_collections.ConfigDict(fields)\n')
  code, err = run(monkeypatch, capsys, tmp_path / 'run', config=str(bad))
  assert code == 2
  assert "config.batch_size='16' is a str; it must be a int" in err
  # A file that assigns the wrong type to a typed field fails as it loads.
  bad.write_text('from nin_jax.configs import test\n'
                 'def get_config():\n'
                 '  config = test.get_config()\n'
                 "  config.batch_size = '16'\n"
                 '  return config\n')
  code, err = run(monkeypatch, capsys, tmp_path / 'run', config=str(bad))
  assert code == 2 and 'cannot be casted' in _error_lines(err)[0]
  code, err = run(monkeypatch, capsys, tmp_path / 'run',
                  config=str(tmp_path / 'missing.py'))
  assert code == 2 and 'No such file' in _error_lines(err)[0]


def test_verbosity_shows_the_traceback(tmp_path, monkeypatch, capsys):
  code, err = run(monkeypatch, capsys, tmp_path, '--config.seed=-1',
                  '--verbosity=1')
  assert code == 2 and 'Traceback' in err and 'seed=-1' in err


def test_unwritable_workdir(tmp_path, monkeypatch, capsys):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  code, err = run(monkeypatch, capsys, blocker / 'run')
  assert code == 2
  assert 'Cannot write to the workdir' in _error_lines(err)[0]
  assert blocker.read_text() == 'not a directory'


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='no /proc')
def test_a_workdir_that_cannot_be_made_is_one_line(monkeypatch, capsys):
  # /proc takes no new directory, though os.access says it is writable (to
  # root, who may write anywhere else).
  code, err = run(monkeypatch, capsys, '/proc/nin_jax_test/run')
  assert code == 2 and 'Traceback' not in err, err
  [line] = _error_lines(err)
  assert 'Cannot write to the workdir /proc/nin_jax_test/run: ' in line
  assert 'Pick a writable --workdir' in line


def test_the_run_lock_of_a_workdir_that_cannot_be_made(tmp_path):
  # Should the workdir become unusable between the check and the lock.
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(errors.WorkdirError,
                     match=f'Cannot write to the workdir {blocker}/run: '
                     '.*Pick a writable --workdir'):
    with workdir_files.RunLock(str(blocker / 'run')):
      pass
  assert blocker.read_text() == 'not a directory'


def test_resume_refuses_another_model_and_allows_more_steps(
    tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'run'
  assert run(monkeypatch, capsys, workdir)[0] == 0
  before = {p: os.path.getmtime(p) for p in workdir.rglob('*')}

  code, err = run(monkeypatch, capsys, workdir,
                  '--config.model.block_features=((8, 6, 4), (8, 8, 8), (8, 12))')
  assert code == 2
  line = _error_lines(err)[0]
  assert 'model.block_features' in line and 'new --workdir' in line
  code, err = run(monkeypatch, capsys, workdir, '--config.num_classes=11')
  assert code == 2 and 'num_classes' in _error_lines(err)[0]
  # Nothing in the workdir was touched by the refused runs.
  assert {p: os.path.getmtime(p) for p in workdir.rglob('*')} == before

  code, _ = run(monkeypatch, capsys, workdir, '--config.num_train_steps=6')
  assert code == 0
  assert (workdir / 'config.before_step4.json').exists()
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '6']


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  """The save's other threads (Orbax commits each item in its own) end
  before what they wrote is removed."""
  real_save = ocp.CheckpointManager.save
  late = []

  def write_late(directory):
    time.sleep(0.5)
    (directory / 'late').write_text('still writing')

  def save(self, step, *args, **kwargs):
    if step == 4:
      directory = tmp_path / 'checkpoints' / f'4{checkpointing.TMP_SUFFIX}-1'
      directory.mkdir()
      late.append(threading.Thread(target=write_late, args=(directory,)))
      late[0].start()
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(errors.WorkdirError) as raised:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  message = str(raised.value)
  assert 'No space left on device' in message
  assert 'previous checkpoint (step 2) is intact' in message
  assert not late[0].is_alive()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']


def test_a_stray_argument_is_one_line_and_exit_2(tmp_path):
  # A subprocess: the in-process runner passes main() no positional args.
  done = subprocess.run(
      [sys.executable, '-m', 'nin_jax.main', f'--workdir={tmp_path / "run"}',
       '--config=nin_jax/configs/test.py', 'stray'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == errors.EXIT_USER_ERROR
  assert done.stderr.strip().splitlines() == [
      'error: unexpected arguments: stray']
  assert not os.path.exists(tmp_path / 'run')



def test_a_full_disk_anywhere_is_one_line_and_leaves_no_temporary_file(
    tiny_config, tmp_path, monkeypatch):
  """ENOSPC from each kind of writer; experiments/drills/full_disk.py does it for
  real on a small tmpfs, at every size from config.json to a later save."""
  full = OSError(errno.ENOSPC, 'No space left on device')
  # An atomic write (config.json, dataset.json, exports): no .tmp stays.
  with monkeypatch.context() as patch:
    patch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(full))
    with pytest.raises(errors.WorkdirError, match='No space left'):
      storage.write_atomically(str(tmp_path / 'a.json'), '{}')
  assert os.listdir(tmp_path) == []
  # TensorStore's way of saying it, from inside an Orbax save.
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: No '
                       "space left on device [os_error_code='28']")
    return real_save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(errors.WorkdirError,
                     match='RESOURCE_EXHAUSTED.*step 2. is intact'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['2']


def test_a_full_disk_while_logging_metrics_is_one_error(tmp_path):
  writer = metric_writers.MetricWriter(workdir_files.Workdir(str(tmp_path)))

  class FullFile:
    def write(self, text):
      raise OSError(errno.ENOSPC, 'No space left on device')
    flush = close = lambda self: None
  writer._jsonl.close()  # pylint: disable=protected-access
  writer._jsonl = FullFile()  # pylint: disable=protected-access
  with pytest.raises(errors.WorkdirError, match='metrics .*No space left'):
    writer.write(2, 'train', {'loss': 1.0})
  writer.close()  # Quiet: the error above is the one that counts.


@pytest.mark.parametrize('body,reason', [
    ('raise RuntimeError("boom")', 'failed while building the config: '
     'RuntimeError: boom'),
    ('return 42', 'get_config() returned 42 (type int), not a ConfigDict'),
])
def test_a_config_file_whose_get_config_fails_is_one_line(
    body, reason, tmp_path, monkeypatch, capsys):
  path = tmp_path / 'bad_config.py'
  path.write_text(f'def get_config():\n  {body}\n')
  code, err = run(monkeypatch, capsys, tmp_path / 'run', config=str(path))
  assert code == errors.EXIT_USER_ERROR
  assert _error_lines(err) == [f'error: {_error_lines(err)[0][7:]}']
  assert reason in err and 'Traceback' not in err
  assert not os.path.exists(tmp_path / 'run')


def test_a_bundled_config_by_name(tmp_path, monkeypatch, capsys):
  # The installed package's configs, without their site-packages path.
  code, err = run(monkeypatch, capsys, tmp_path / 'run',
                  '--config.learning_rate=-1', config='digits')
  assert code == errors.EXIT_USER_ERROR
  assert _error_lines(err) == [
      'error: config.learning_rate=-1.0 must be a positive number.']
  code, err = run(monkeypatch, capsys, tmp_path / 'run', config='digitz')
  assert code == errors.EXIT_USER_ERROR
  assert 'a bundled config: cifar100, cifar10_cpu, cifar10_paper_cpu, default, digits' in err

