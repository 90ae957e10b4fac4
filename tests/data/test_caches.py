"""Where nin_jax caches: never in TFDS's folder for data that is not TFDS's."""

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from nin_jax.configs import test as test_config
from nin_jax.data import image_folder
from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.training import train


@pytest.fixture
def places(tmp_path, monkeypatch):
  """A fresh home, TFDS data directory and cache root, all empty."""
  places = {name: tmp_path / name for name in ('home', 'tfds', 'cache')}
  for path in places.values():
    path.mkdir()
  monkeypatch.setenv('HOME', str(places['home']))
  monkeypatch.setenv('TFDS_DATA_DIR', str(places['tfds']))
  monkeypatch.setenv('NIN_JAX_CACHE_DIR', str(places['cache']))
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  return places


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob('*')
                if p.is_file())


def _ours_in_home(home):
  """What nin_jax (not matplotlib or Keras, say) wrote under `home`."""
  return [name for name in _files(home)
          if 'nin_jax' in name or 'tensorflow_datasets' in name]


def _folder(root):
  """Two classes of two tiny PNGs in train/ and one in test/."""
  for split, count in (('train', 2), ('test', 1)):
    for label, colour in (('a', (200, 0, 0)), ('b', (0, 0, 200))):
      (root / split / label).mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (4, 4), colour).save(root / split / label / f'{i}.png')
  config = test_config.get_config()
  config.dataset = f'{image_folder.PREFIX}{root}'
  config.num_classes = 2
  config.validation_size = 0
  return config


def test_digits_run_writes_its_arrays_and_fit_to_the_cache_root_only(
    places, tmp_path):
  train.train_and_evaluate(test_config.get_config(), str(tmp_path / 'run'))
  assert _files(places['tfds']) == [] and _ours_in_home(places['home']) == []
  cached = _files(places['cache'])
  assert len(cached) == 2, cached
  assert cached[0].startswith('nin_jax_digits/digits-sklearn'), cached
  assert cached[1].startswith('nin_jax_preprocessing/digits-standardize-')


_READ_DIGITS = '''
import hashlib, sys
from nin_jax.configs import test
from nin_jax.data import input_pipeline
dataset = input_pipeline.Dataset(test.get_config())
digest = hashlib.sha256()
for split in ('train', 'test'):
  for array in dataset.arrays(split):
    digest.update(array.tobytes())
print('sklearn' in sys.modules, digest.hexdigest())
'''


def test_cached_digits_are_scikit_learns_and_need_no_import_of_it(places):
  del places  # A fresh, empty cache root.
  runs = [subprocess.run([sys.executable, '-c', _READ_DIGITS],
                         capture_output=True, text=True, check=False)
          for _ in range(2)]
  for run in runs:
    assert run.returncode == 0, run.stderr[-2000:]
  (first, digest), (second, again) = (r.stdout.split() for r in runs)
  assert (first, second) == ('True', 'False')  # Written, then read.
  expected = hashlib.sha256()
  for split in ('train', 'test'):
    for array in input_pipeline._digits_arrays(split):  # pylint: disable=protected-access
      expected.update(array.tobytes())
  assert digest == again == expected.hexdigest()


def test_folder_decodes_and_fit_go_to_the_cache_root(places, tmp_path):
  config = _folder(tmp_path / 'pets')
  dataset = input_pipeline.Dataset(config)
  input_pipeline.fit_preprocessing(dataset, input_pipeline.get_info(dataset),
                                   config)
  assert _files(places['tfds']) == [] and _ours_in_home(places['home']) == []
  cached = _files(places['cache'])
  assert [name for name in cached if name.startswith(
      'nin_jax_folders/pets-')] == cached[:2], cached
  assert cached[2].startswith('nin_jax_preprocessing/folder_'), cached


def test_config_cache_dir_overrides_the_environment(places, tmp_path):
  config = _folder(tmp_path / 'pets')
  config.cache_dir = str(tmp_path / 'mine')
  input_pipeline.Dataset(config)
  assert _files(places['cache']) == [] and _files(places['tfds']) == []
  assert len(_files(tmp_path / 'mine' / 'nin_jax_folders')) == 2


def test_cache_root_falls_back_to_xdg_then_home(places, monkeypatch):
  config = test_config.get_config()
  assert workdir_files.cache_root(config) == str(places['cache'])
  monkeypatch.delenv('NIN_JAX_CACHE_DIR')
  home = places['home']
  assert workdir_files.cache_root(config) == str(home / '.cache' / 'nin_jax')
  monkeypatch.setenv('XDG_CACHE_HOME', 'relative')  # Ignored, as XDG says.
  assert workdir_files.cache_root(config) == str(home / '.cache' / 'nin_jax')
  monkeypatch.setenv('XDG_CACHE_HOME', str(home / 'xdg'))
  assert workdir_files.cache_root(config) == str(home / 'xdg' / 'nin_jax')
  config.cache_dir = '~/mine'
  assert workdir_files.cache_root(config) == str(home / 'mine')
  # TFDS data's fits stay beside it; other data's never go there.
  assert preprocessing.fits_directory(config, tfds_data=True) == os.path.join(
      str(places['tfds']), 'nin_jax_preprocessing')
  assert preprocessing.fits_directory(config, tfds_data=False) == str(
      home / 'mine' / 'nin_jax_preprocessing')


def test_an_unwritable_cache_root_warns_and_the_data_still_loads(
    places, tmp_path, monkeypatch, caplog):
  blocked = tmp_path / 'a_file'  # Not a directory: unwritable even for root.
  blocked.write_text('')
  monkeypatch.setenv('NIN_JAX_CACHE_DIR', str(blocked))
  config = _folder(tmp_path / 'pets')
  with caplog.at_level(logging.WARNING):
    dataset = input_pipeline.Dataset(config)
    input_pipeline.fit_preprocessing(dataset, input_pipeline.get_info(dataset),
                                     config)
  assert dataset.num_examples(input_pipeline.TRAIN) == 4
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 3, warnings  # Two splits decoded, one fit.
  for warning in warnings:
    assert str(blocked) in warning and '$NIN_JAX_CACHE_DIR' in warning
  assert _files(places['tfds']) == []


def test_a_damaged_cache_is_made_again_and_replaced(tmp_path, caplog):
  path = tmp_path / 'fits' / 'numbers.npz'
  path.parent.mkdir()
  path.write_bytes(b'garbage')
  made = []

  def make():
    made.append(len(made))
    return {'numbers': np.arange(3)}

  with caplog.at_level(logging.WARNING):
    first = workdir_files.cached(str(path), 'numbers', make)
    second = workdir_files.cached(str(path), 'numbers', make)  # Read back.
  assert made == [0]
  np.testing.assert_array_equal(second['numbers'], first['numbers'])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert 'unreadable numbers cache' in warnings[0] and str(path) in warnings[0]


def test_a_tfds_fit_of_a_bucket_data_dir_is_cached_locally(places):
  del places  # Only its temporary cache root.
  config = test_config.get_config()
  config.data_dir = 'gs://bucket/tensorflow_datasets'
  local = preprocessing.fits_directory(config, tfds_data=True)
  assert local.startswith(workdir_files.cache_root(config))
  assert not storage.is_remote(local)
