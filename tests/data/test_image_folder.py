"""Folder datasets: ROOT/<split>/<class>/<image> read, shuffled, cached, checked."""

import json
import logging
import os

import numpy as np
from PIL import Image
import pytest

from nin_jax.configs import test as test_config
from nin_jax.data import image_folder
from nin_jax.data import input_pipeline
from nin_jax import errors
from nin_jax import evaluate
from nin_jax.training import train
from nin_jax.training import trained_run

from main_runner import run_main

CLASSES = ('cat', 'dog', 'frog')
# Each class's images are one solid colour, so a label can be read off its
# pixels (JPEG keeps a flat colour within a few levels).
COLOURS = {'cat': (200, 30, 30), 'dog': (30, 200, 30), 'frog': (30, 30, 200)}
FORMATS = ('png', 'jpg', 'bmp', 'gif', 'webp')


def make_folder(root, counts=None, size=(8, 8), mode='RGB', classes=CLASSES):
  """Writes solid-colour images in every format Pillow reads to ROOT."""
  counts = counts or {'train': 10, 'test': 3}
  for split, count in counts.items():
    for name in classes:
      directory = root / split / name
      directory.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        image = Image.new('RGB', size, COLOURS.get(name, (128, 128, 128)))
        # WebP stores grey as colour (lossy: R, G, B drift apart).
        formats = FORMATS[:-1] if mode == 'L' else FORMATS
        fmt = formats[i % len(formats)]
        stored = 'RGB' if fmt == 'jpg' and mode == 'RGBA' else mode
        image.convert(stored).save(directory / f'{i:03d}.{fmt}')
  return root


def folder_config(root, **overrides):
  config = test_config.get_config()
  config.dataset = f'{image_folder.PREFIX}{root}'
  config.num_classes = 3
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def test_classes_labels_and_every_format(tmp_path):
  root = make_folder(tmp_path / 'data')
  dataset = input_pipeline.Dataset(folder_config(root))
  info = input_pipeline.get_info(dataset)
  assert info.class_names == CLASSES
  assert (info.num_train, info.num_eval, info.image_shape) == (30, 9, (8, 8, 3))
  for split in (input_pipeline.TRAIN, input_pipeline.TEST):
    images, labels = dataset.arrays(split)
    assert images.dtype == np.uint8
    colours = np.array([COLOURS[CLASSES[label]] for label in labels])
    np.testing.assert_allclose(images[:, 4, 4, :], colours, atol=8)
    assert sorted(np.bincount(labels)) == [len(labels) // 3] * 3


def test_split_is_shuffled_before_the_validation_tail_and_the_shards(tmp_path):
  # Files are listed class by class: without a shuffle the 12 held-out
  # examples would all be frogs and each of 3 shards a single class.
  root = make_folder(tmp_path / 'data', {'train': 20, 'test': 2})
  dataset = input_pipeline.Dataset(folder_config(root, validation_size=12))
  _, held_out = dataset.arrays(input_pipeline.VALIDATION)
  assert len(held_out) == 12 and len(set(held_out)) == 3
  for shard in range(3):
    _, labels = dataset.arrays(input_pipeline.TRAIN, shard, 3,
                               drop_remainder=True)
    assert len(set(labels)) >= 2, labels
  # The order is fixed: another run (another seed too) holds out the same.
  again = input_pipeline.Dataset(folder_config(root, validation_size=12,
                                               seed=7))
  np.testing.assert_array_equal(again.arrays(input_pipeline.VALIDATION)[1],
                                held_out)


def test_grey_alpha_channels_and_resizing(tmp_path):
  grey = make_folder(tmp_path / 'grey', {'train': 4, 'test': 1}, size=(28, 28),
                     mode='L')
  dataset = input_pipeline.Dataset(folder_config(grey))
  assert input_pipeline.get_info(dataset).image_shape == (28, 28, 1)
  as_rgb = input_pipeline.Dataset(folder_config(grey, image_channels=3))
  images = as_rgb.arrays(input_pipeline.TRAIN)[0]
  assert images.shape[1:] == (28, 28, 3)
  np.testing.assert_array_equal(images[..., 0], images[..., 2])

  rgba = make_folder(tmp_path / 'rgba', {'train': 4, 'test': 1}, mode='RGBA')
  small = input_pipeline.Dataset(folder_config(rgba, image_size=4,
                                               image_channels=1))
  assert input_pipeline.get_info(small).image_shape == (4, 4, 1)
  assert input_pipeline.get_info(
      input_pipeline.Dataset(folder_config(rgba))).image_shape == (8, 8, 3)


def test_decoded_images_are_cached_and_a_changed_file_is_read_again(
    tmp_path, monkeypatch):
  root = make_folder(tmp_path / 'data', {'train': 4, 'test': 1})
  first = input_pipeline.Dataset(folder_config(root))
  cached = os.listdir(image_folder.cache_dir(folder_config(root)))
  assert any(name.startswith('data-train-') for name in cached)

  def no_decoding(*args):
    raise AssertionError(f'decoded again: {args}')

  monkeypatch.setattr(image_folder, '_decode', no_decoding)
  second = input_pipeline.Dataset(folder_config(root))
  for split in (input_pipeline.TRAIN, input_pipeline.TEST):
    for a, b in zip(first.arrays(split), second.arrays(split)):
      np.testing.assert_array_equal(a, b)
  Image.new('RGB', (8, 8), (1, 2, 3)).save(root / 'test' / 'cat' / '000.png')
  with pytest.raises(AssertionError, match='decoded again'):
    input_pipeline.Dataset(folder_config(root))


def _corrupt(root):
  path = root / 'train' / 'dog' / '001.jpg'
  path.write_bytes(path.read_bytes()[:40])  # Truncated.


def _empty_class(root):
  for path in (root / 'train' / 'cat').iterdir():
    path.unlink()


# Each breaks a good folder in place, or names (as a str) another root.
BREAKAGES = {
    'missing root': (lambda root: str(root / 'missing'), 'No folder'),
    'no train': (lambda root: (root / 'train').rename(root / 'training'),
                 'has no train/ folder'),
    'empty class': (_empty_class, 'cat holds no images'),
    'other classes': (lambda root: (root / 'test' / 'dog').rename(
        root / 'test' / 'bird'), "only in train: \\['dog'\\]; only in test: "
                                 "\\['bird'\\]"),
    'corrupt image': (_corrupt, 'Cannot read image .*dog/001.jpg'),
    'mixed sizes': (lambda root: Image.new('RGB', (9, 7)).save(
        root / 'train' / 'cat' / 'big.png'),
                    'different sizes .*is 8x8.*big.png is 9x7.*image_size=N'),
}


@pytest.mark.parametrize('name', BREAKAGES)
def test_bad_folders_get_one_clear_error(tmp_path, name):
  breakage, message = BREAKAGES[name]
  root = make_folder(tmp_path / 'data', {'train': 3, 'test': 1})
  other = breakage(root)
  with pytest.raises(errors.UserError, match=message):
    input_pipeline.Dataset(folder_config(other if isinstance(other, str)
                                         else root))


def test_a_single_class_is_refused(tmp_path):
  root = make_folder(tmp_path / 'data', {'train': 3, 'test': 1},
                     classes=('cat',))
  with pytest.raises(errors.UserError, match='single class'):
    input_pipeline.Dataset(folder_config(root))


def test_non_image_files_are_skipped_and_counted(tmp_path, caplog):
  root = make_folder(tmp_path / 'data', {'train': 3, 'test': 1})
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  (root / 'test' / 'dog' / 'labels.csv').write_text('a,b')
  (root / 'train' / 'cat' / '.DS_Store').write_bytes(b'\0')
  with caplog.at_level(logging.INFO):
    dataset = input_pipeline.Dataset(folder_config(root))
  assert dataset.num_examples(input_pipeline.TRAIN) == 9
  assert 'Skipped 2 files' in caplog.text


def test_a_validation_folder_is_the_validation_split(tmp_path):
  root = make_folder(tmp_path / 'data', {'train': 4, 'validation': 2,
                                         'test': 1})
  dataset = input_pipeline.Dataset(folder_config(root))
  assert dataset.num_examples(input_pipeline.VALIDATION) == 6
  assert dataset.num_examples(input_pipeline.TRAIN) == 12
  with pytest.raises(errors.UserError, match='validation_size=0'):
    input_pipeline.Dataset(folder_config(root, validation_size=3))


def test_training_on_a_grey_folder_records_its_classes(tmp_path):
  # MNIST-like: 28x28 grey images, a user's own class names.
  root = make_folder(tmp_path / 'data', {'train': 8, 'test': 2},
                     size=(28, 28), mode='L')
  workdir = tmp_path / 'run'
  result = train.train_and_evaluate(
      folder_config(f'{root}/../data', batch_size=8, eval_batch_size=8),
      str(workdir))
  assert result['num_examples'] == 6
  info = json.loads((workdir / 'dataset.json').read_text())
  assert info['class_names'] == list(CLASSES)
  assert info['image_shape'] == [28, 28, 1]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset'] == f'{image_folder.PREFIX}{root}'  # Absolute.
  # The folder moved (or the model went to another machine): --data_dir
  # names where it is now.
  moved = root.rename(tmp_path / 'moved')
  run = trained_run.load(str(workdir))
  with pytest.raises(errors.UserError, match='No folder'):
    evaluate.predictions(run, input_pipeline.TEST)
  logits, labels = evaluate.predictions(run, input_pipeline.TEST, str(moved))
  assert logits.shape == (6, 3) and sorted(labels) == [0, 0, 1, 1, 2, 2]


def test_the_command_line_reports_a_bad_folder_and_creates_nothing(
    tmp_path, monkeypatch, capsys):
  root = make_folder(tmp_path / 'data', {'train': 3, 'test': 1})
  _corrupt(root)
  status = run_main(monkeypatch, tmp_path / 'run',
                    f'--config.dataset={image_folder.PREFIX}{root}',
                    '--config.num_classes=3')
  assert status == errors.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert err.count('error:') == 1 and '001.jpg' in err
  assert not (tmp_path / 'run').exists()
