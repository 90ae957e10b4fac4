"""Bad flags, configs and workdirs: exit status 2, one line, nothing lost."""

import errno
import os

import orbax.checkpoint as ocp
import pytest

from nin_jax import errors
from nin_jax import train
from tests import main_runner

def run(monkeypatch, capsys, workdir, *overrides, **kwargs):
  """(exit status, stderr) of `python -m nin_jax.main`."""
  code = main_runner.run_main(monkeypatch, workdir, *overrides, **kwargs)
  return code, capsys.readouterr().err


def _error_lines(err):
  return [line for line in err.splitlines() if line.startswith('error: ')]


@pytest.mark.parametrize('override,reason', [
    ('--config.no_such_field=1', "unknown config field 'no_such_field'"),
    ('--config.model.widths=3', "unknown config field 'widths'"),
    ('--config.batch_size=abc', 'invalid literal'),
    ('--config.learning_rate=-1', 'learning_rate=-1.0 must be a positive'),
    ('--config.learning_rate=nan', 'learning_rate=nan must be a positive'),
    ('--config.model.dropout_rate=1.5', 'dropout_rate must be in [0, 1), got 1.5'),
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
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(errors.WorkdirError) as raised:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  message = str(raised.value)
  assert 'No space left on device' in message
  assert 'previous checkpoint (step 2) is intact' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
