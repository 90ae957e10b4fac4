"""Damaged workdirs, odd images and bad --out paths: one line, never a crash.

Each case ends in one `error:` line and exit status 2, or recovers as the
trainer does (a damaged newest checkpoint: the next older one), and leaves
nothing behind: the readers never move or delete a user's file.
"""

import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax import evaluate
from nin_jax import export
from nin_jax.files import workdir_files
from nin_jax import predict
from nin_jax.training import trained_run
from nin_jax import visualize
from tests import main_runner

# `python -m nin_jax.<command> ARGS` in this process; its exit status.
_run = main_runner.run_command


def _one_error_line(capsys) -> str:
  """The single `error:` line of stderr (and no traceback)."""
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, err
  return lines[0]


def _listing(directory) -> list[str]:
  """Every path below `directory`, relative: what a command left there."""
  return sorted(os.path.relpath(os.path.join(d, name), directory)
                for d, dirs, files in os.walk(directory)
                for name in dirs + files)


@pytest.fixture
def workdir(trained_workdir, tmp_path):
  """A copy of the finished 4-step run (checkpoints 2 and 4), to damage."""
  copy = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, copy)
  return copy


def _truncate_checkpoint(workdir, step):
  """Every file of the checkpoint cut to nothing, as test_resume does."""
  for folder, _, files in os.walk(os.path.join(workdir, 'checkpoints',
                                               str(step))):
    for name in files:
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(0)


def _truncate_array_files(workdir, step):
  """The checkpoint's array data cut short, its metadata intact: TensorStore
  fails every pending read (a thousand lines of asyncio reports, once)."""
  data = os.path.join(workdir, 'checkpoints', str(step), 'state',
                      'ocdbt.process_0', 'd')
  for name in os.listdir(data):
    with open(os.path.join(data, name), 'r+b') as f:
      f.truncate(10)


def _garble_metadata(workdir, step):
  with open(os.path.join(workdir, 'checkpoints', str(step), 'state',
                         '_METADATA'), 'wb') as f:
    f.write(bytes(range(256)))


# --- Checkpoints ------------------------------------------------------------


@pytest.mark.parametrize('damage', [_truncate_checkpoint, _truncate_array_files,
                                    _garble_metadata])
def test_a_damaged_newest_checkpoint_gives_the_previous_one(workdir, damage,
                                                            caplog):
  damage(workdir, 4)
  before = _listing(workdir)
  with caplog.at_level('WARNING'):
    run = trained_run.load(workdir)
  assert run.step == 2
  warned = [r.getMessage() for r in caplog.records
            if r.levelname in ('WARNING', 'ERROR')]
  assert len(warned) == 1, warned  # asyncio's reports are hidden.
  assert 'Checkpoint at step 4' in warned[0] and 'using step 2' in warned[0]
  assert _listing(workdir) == before  # Read-only: nothing moved aside.


@pytest.mark.parametrize('command', [evaluate, predict, export])
def test_the_commands_fall_back_to_the_previous_checkpoint(
    command, workdir, tmp_path, capsys, caplog):
  _truncate_array_files(workdir, 4)
  image = str(tmp_path / 'digit.png')
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
  out = str(tmp_path / 'out')
  args = {evaluate: [f'--out={out}'], predict: ['--json', image],
          export: [f'--out={out}']}[command]
  assert _run(command, f'--workdir={workdir}', *args) == 0
  printed = capsys.readouterr()
  assert 'Traceback' not in printed.err
  assert any('Checkpoint at step 4' in r.getMessage() for r in caplog.records)
  if command is evaluate:
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())[
        'step'] == 2
  elif command is export:
    assert json.loads((tmp_path / 'out.json').read_text())[
        'checkpoint_step'] == 2
  else:
    assert 'top_k' in json.loads(printed.out)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
  assert not os.path.exists(
      os.path.join(workdir, workdir_files.UNREADABLE_CHECKPOINTS))


def test_a_damaged_step_asked_for_names_the_others(workdir, capsys):
  _truncate_checkpoint(workdir, 4)
  assert _run(predict, f'--workdir={workdir}', '--step=4', 'x.png') == 2
  line = _one_error_line(capsys)
  assert 'step 4' in line and 'cannot be read' in line
  assert 'pass another --step (2)' in line


def test_no_readable_checkpoint_is_one_error(workdir, capsys):
  _truncate_checkpoint(workdir, 4)
  _garble_metadata(workdir, 2)
  assert _run(export, f'--workdir={workdir}',
              f'--out={workdir}/x.export') == 2
  line = _one_error_line(capsys)
  assert 'No checkpoint in' in line and 'can be read' in line
  assert not os.path.exists(os.path.join(workdir, 'x.export'))


# --- The run's other files --------------------------------------------------


@pytest.mark.parametrize('name, content, expected', [
    ('config.json', bytes(range(256)), 'config.json in .* is not valid JSON'),
    ('config.json', b'[1, 2]', 'config.json in .* holds a JSON array'),
    ('config.json', b'{"model": {', 'config.json in .* is not valid JSON'),
    ('dataset.json', b'\x00\xff\xfe', 'dataset.json in .* is not valid JSON'),
    ('dataset.json', b'{"name": "digits"}',
     'dataset.json in .* does not describe a dataset'),
    ('preprocessing.npz', b'garbage' * 10,
     'preprocessing.npz is not a preprocessing file .*not a .npz archive'),
    ('preprocessing.npz', None,  # Truncated.
     'preprocessing.npz is not a preprocessing file .*damaged or truncated'),
], ids=['config-bytes', 'config-list', 'config-cut', 'dataset-bytes',
        'dataset-fields', 'npz-garbage', 'npz-truncated'])
def test_a_damaged_run_file_is_one_error_naming_the_fix(workdir, name, content,
                                                        expected):
  file = os.path.join(workdir, name)
  if content is None:
    with open(file, 'rb') as f:
      content = f.read()[:100]
  with open(file, 'wb') as f:
    f.write(content)
  with pytest.raises(errors.WorkdirError, match=expected) as raised:
    trained_run.load(workdir)
  message = str(raised.value)
  assert 'pickle' not in message and '\n' not in message
  assert 'restore it from a backup' in message  # The fix.
  assert '--workdir' in message


def test_a_damaged_file_is_one_line_from_the_command(workdir, tmp_path, capsys):
  with open(os.path.join(workdir, 'config.json'), 'wb') as f:
    f.write(bytes(range(256)))
  assert _run(evaluate, f'--workdir={workdir}',
              f'--out={tmp_path / "out"}') == 2
  assert 'config.json in' in _one_error_line(capsys)
  assert not (tmp_path / 'out').exists()


def _edit_config(workdir, edit):
  file = os.path.join(workdir, 'config.json')
  with open(file, encoding='utf-8') as f:
    config = json.load(f)
  edit(config)
  with open(file, 'w', encoding='utf-8') as f:
    json.dump(config, f)


def _delete(group, name):
  return lambda config: config[group].pop(name)


def _assign(value, *keys):
  def edit(config):
    for key in keys[:-1]:
      config = config[key]
    config[keys[-1]] = value
  return edit


# Valid JSON, but not a config the model can be built from (each failed
# inside nin.create_model or Flax with a traceback before), or one that
# builds another model than the checkpoint's.
@pytest.mark.parametrize('edit, expected', [
    (_assign('abc', 'model', 'block_features'),
     "config.model.block_features='abc' is a str"),
    (_assign('10', 'num_classes'), "config.num_classes='10' is a str"),
    (_assign(None, 'learning_rate'), 'config.learning_rate=None is a NoneType'),
    (_assign('x', 'model'), "config.model='x' is a str; it must be a group"),
    (_assign(1, 'no_such_field'), 'Unknown config field(s) no_such_field'),
    (_assign(1, 'model.widths'), 'does not accept dots'),
    (_assign(['max'], 'model', 'pools'), 'config.model.pools needs 2 entries'),
    (_assign([[8, 6, 4], [8, 8, 8], [8, 9]], 'model', 'block_features'),
     'the model of its checkpoint of step 4 (params/mlpconv3/mlp1/bias: '
     'saved (8,), described (9,))'),
    # A deleted field takes its default (as one added after the run was
    # saved does): here the paper's widths, not the checkpoint's.
    (_delete('model', 'block_features'), 'saved (8,), described (192,)'),
    (_assign(True, 'model', 'use_batchnorm'), 'described, not saved'),
], ids=['widths-str', 'classes-str', 'none', 'group-str', 'unknown', 'dotted',
        'pools', 'other-width', 'deleted', 'batchnorm'])
def test_a_config_json_of_wrong_fields_is_one_error_naming_the_fix(
    workdir, edit, expected):
  _edit_config(workdir, edit)
  with pytest.raises(errors.WorkdirError) as raised:
    trained_run.load(workdir)
  message = str(raised.value)
  assert message.startswith(f'config.json in {workdir} ') and '\n' not in message
  assert expected in message
  assert message.endswith(workdir_files.DAMAGED_CONFIG)


@pytest.mark.parametrize('command', [evaluate, predict, visualize, export])
def test_a_config_json_of_wrong_types_is_one_line_from_each_command(
    command, workdir, tmp_path, capsys):
  _edit_config(workdir, _assign('abc', 'model', 'block_features'))
  before = _listing(workdir)
  out = str(tmp_path / 'out')
  args = {evaluate: [f'--out={out}'], predict: ['x.png'],
          visualize: [f'--out={out}'], export: [f'--out={out}']}[command]
  assert _run(command, f'--workdir={workdir}', *args) == 2
  assert 'config.json in' in _one_error_line(capsys)
  assert _listing(workdir) == before and not os.path.exists(out)


def test_a_damaged_preprocessing_cache_is_refitted(tmp_path):
  path = str(tmp_path / 'cached.npz')
  with open(path, 'wb') as f:
    f.write(b'garbage')
  with pytest.raises(OSError, match='not a .npz archive'):  # fit_cached's.
    preprocessing.Preprocessing.load(path)


def test_damaged_metrics_rows_are_skipped_and_counted(workdir, tmp_path,
                                                      caplog):
  metrics = os.path.join(workdir, 'metrics.jsonl')
  with open(metrics, 'rb') as f:
    good = f.read()
  with open(metrics, 'wb') as f:
    f.write(good)
    f.write(b'{"split": "train", "loss": 1.0}\n')  # No step.
    f.write(b'\x00\xff\x89PNG binary\n')
    f.write(b'[4, "train"]\n')
    f.write(b'{"step": 6, "split": "train", "loss": 1.0, "accu')  # Cut.
  expected = workdir_files.read_metrics(os.path.dirname(metrics))
  assert len(expected) == good.count(b'\n')
  assert any('Skipped 3 damaged lines' in r.getMessage()
             for r in caplog.records)
  rows = visualize.read_metrics(workdir)
  assert rows == expected
  visualize.plots.training_curves(rows, 'damaged', str(tmp_path / 'c.png'))
  assert (tmp_path / 'c.png').stat().st_size > 10_000

  with open(metrics, 'ab') as f:  # Complete rows, but nothing to plot.
    f.write(b'\n{"step": 8, "split": "test"}\n')
  caplog.clear()
  assert visualize.read_metrics(workdir) == expected
  assert any('Skipped 1 rows' in r.getMessage() for r in caplog.records)
  with open(metrics, 'wb') as f:
    f.write(b'\xff\xfe\n{"step": 2}\n')
  with pytest.raises(errors.WorkdirError, match='no metrics.jsonl rows'):
    visualize.read_metrics(workdir)


# --- TFDS data --------------------------------------------------------------

_PROBE = 'nin_jax_damage_probe'


@pytest.fixture(scope='module')
def prepared_tfds(tmp_path_factory):
  """A small TFDS dataset prepared on disk (tfds.testing.mock_data writes no
  files to damage): 8x8 grey images as the digits', 48 + 24 of them, in 4
  files per split, so that a damaged middle file is found only by the reads
  of the whole split (not by the fingerprint's of its first and last 8)."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class NinJaxDamageProbe(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      features = tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(8, 8, 1)),
          'label': tfds.features.ClassLabel(num_classes=10)})
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(48),
              'test': self._generate_examples(24)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {'image': np.full((8, 8, 1), 10 * (i % 10), np.uint8),
                  'label': i % 10}

  root = str(tmp_path_factory.mktemp('tfds'))
  NinJaxDamageProbe(data_dir=root).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=4))
  return root


def _damaged_tfds(prepared_tfds, tmp_path, split, how):
  """A copy of the prepared dataset with the second file of `split` garbled,
  cut or emptied."""
  root = str(tmp_path / 'tfds')
  shutil.copytree(prepared_tfds, root)
  version = os.path.join(root, _PROBE, '1.0.0')
  file = os.path.join(version, f'{_PROBE}-{split}.tfrecord-00001-of-00004')
  with open(file, 'r+b') as f:
    # A record: its length (8 bytes), their CRC (4), the data, its CRC (4).
    second = 16 + int.from_bytes(f.read(8), 'little')
    if how == 'garbled':
      f.seek(second + 20)
      f.write(b'\xff' * 8)
    else:  # Within the second record, or before the first.
      f.truncate(second + 20 if how == 'cut' else 0)
  return root, version


@pytest.mark.parametrize('how, reason', [
    ('garbled', 'DataLossError: corrupted record at'),
    ('cut', 'DataLossError: truncated record at'),
    # TFDS counts the examples against its record of the split.
    ('emptied', 'FailedPreconditionError: Input dataset was expected to '
     'contain 24 elements but contained only 18 elements.')])
def test_a_damaged_tfds_file_is_one_line_from_evaluate(
    workdir, prepared_tfds, tmp_path, capsys, how, reason):
  root, version = _damaged_tfds(prepared_tfds, tmp_path, 'test', how)
  # The digits run, pointed at the probe (the same 8x8 grey images).
  _edit_config(workdir, _assign(_PROBE, 'dataset'))
  before = _listing(workdir)
  out = tmp_path / 'out'
  assert _run(evaluate, f'--workdir={workdir}', f'--data_dir={root}',
              f'--out={out}') == 2
  line = _one_error_line(capsys)
  assert f"TFDS dataset '{_PROBE}' in {version} is damaged: its 'test' split " \
      'cannot be read' in line and reason in line
  assert f'Delete {version} and run the same command again' in line
  assert _listing(workdir) == before and not out.exists()


@pytest.mark.parametrize('input_pipeline_, preprocessing_', [
    ('device', 'standardize'),  # Found while fitting the preprocessing.
    ('device', 'none'),  # While reading the split onto the devices.
    ('streaming', 'none')])  # In the first training batches.
def test_a_damaged_tfds_file_stops_the_trainer_with_one_line(
    prepared_tfds, tmp_path, monkeypatch, capsys, input_pipeline_,
    preprocessing_):
  """Found before the workdir is written only by the preprocessing's fit,
  which reads the whole split; the training batches are read once the
  run's files are recorded, and then no checkpoint is saved."""
  root, version = _damaged_tfds(prepared_tfds, tmp_path, 'train', 'garbled')
  workdir = tmp_path / 'run'
  assert main_runner.run_main(
      monkeypatch, workdir, f'--config.dataset={_PROBE}',
      f'--config.data_dir={root}',
      f'--config.input_pipeline={input_pipeline_}',
      f'--config.preprocessing={preprocessing_}') == 2
  line = _one_error_line(capsys)
  assert f"in {version} is damaged: its 'train' split cannot be read " \
      '(DataLossError: corrupted record at' in line
  if preprocessing_ == 'none':
    assert os.listdir(workdir / 'checkpoints') == []
  else:
    assert not workdir.exists()


# --- Images ----------------------------------------------------------------


def _digit(index=0) -> np.ndarray:
  images, _ = input_pipeline._digits_arrays('test')
  return (images[index, ..., 0] * (255 / 16)).round().astype(np.uint8)


def test_a_16_bit_png_is_scaled_not_saturated(trained_workdir, tmp_path):
  pixels = _digit()
  Image.fromarray(pixels).save(tmp_path / 'eight.png')
  Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / 'sixteen.png')
  with Image.open(tmp_path / 'sixteen.png') as image:
    assert image.mode.startswith('I')  # Really 16 bits.
  # Exact at the image's size; resized, Pillow rounds 8-bit pixels its way.
  for shape, pixel_max, within in (((8, 8, 1), 16, 0), ((8, 8, 1), 255, 0),
                                   ((32, 32, 3), 255, 1)):
    np.testing.assert_allclose(
        predict.load_image(str(tmp_path / 'sixteen.png'), shape, pixel_max),
        predict.load_image(str(tmp_path / 'eight.png'), shape, pixel_max),
        rtol=0, atol=within)
  run = trained_run.load(trained_workdir)
  eight, sixteen = predict.predict_files(
      run, [str(tmp_path / 'eight.png'), str(tmp_path / 'sixteen.png')], 3)
  assert eight['top_k'] == sixteen['top_k']


def test_a_decompression_bomb_is_that_file_s_error(trained_workdir, tmp_path,
                                                   monkeypatch, capsys):
  Image.fromarray(_digit()).save(tmp_path / 'small.png')
  Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / 'huge.png')
  # 10,000 pixels: over twice the limit, which Pillow refuses to decode.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  paths = [str(tmp_path / 'huge.png'), str(tmp_path / 'small.png')]
  run = trained_run.load(trained_workdir)
  huge, small = predict.predict_files(run, paths, 3)
  assert 'too large to decode safely' in huge['error'] and 'top_k' in small
  assert _run(predict, f'--workdir={trained_workdir}', *paths) == 2
  printed = capsys.readouterr()
  assert printed.out.startswith(paths[1] + ': 1. ')  # The other file.
  assert printed.err.count('error:') == 1 and 'Traceback' not in printed.err


# --- Outputs ----------------------------------------------------------------


def test_export_to_a_directory_or_an_unwritable_path(trained_workdir, tmp_path,
                                                     capsys):
  (tmp_path / 'existing').mkdir()
  assert _run(export, f'--workdir={trained_workdir}',
              f'--out={tmp_path / "existing"}') == 2
  assert 'is a directory' in _one_error_line(capsys)
  (tmp_path / 'meta.json').mkdir()
  assert _run(export, f'--workdir={trained_workdir}',
              f'--out={tmp_path / "meta"}') == 2
  assert 'meta.json, where its metadata goes' in _one_error_line(capsys)
  assert _listing(tmp_path) == ['existing', 'meta.json']

  if os.path.isdir('/proc/self'):
    assert _run(export, f'--workdir={trained_workdir}', '--out=/proc/x') == 2
    assert 'Cannot write /proc/x' in _one_error_line(capsys)
  blocker = tmp_path / 'file'
  blocker.write_text('mine')
  assert _run(export, f'--workdir={trained_workdir}',
              f'--out={blocker}/sub/model') == 2
  assert 'a file, not a directory' in _one_error_line(capsys)
  assert blocker.read_text() == 'mine'


def test_a_failed_export_write_leaves_no_temporary_file(
    trained_workdir, tmp_path, monkeypatch):
  run = trained_run.load(trained_workdir)
  out = tmp_path / 'new' / 'deeper' / 'nin.export'

  def full_disk(source, target):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(os, 'replace', full_disk)
  with pytest.raises(errors.WorkdirError, match='No space left'):
    export.write(run, str(out))
  assert _listing(tmp_path) == []  # Nor the directories it made.


def test_evaluate_and_visualize_refuse_an_unusable_out(trained_workdir,
                                                       tmp_path, capsys):
  if os.path.isdir('/proc/self'):
    assert _run(evaluate, f'--workdir={trained_workdir}', '--out=/proc/x') == 2
    assert 'Cannot make the output directory /proc/x' in _one_error_line(
        capsys)
  regular = tmp_path / 'report'
  regular.write_text('mine')
  for command in (evaluate, visualize):
    assert _run(command, f'--workdir={trained_workdir}',
                f'--out={regular}') == 2
    assert 'is a file, not a directory' in _one_error_line(capsys)
  assert regular.read_text() == 'mine' and _listing(tmp_path) == ['report']
