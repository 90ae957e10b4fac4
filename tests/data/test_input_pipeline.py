"""Input pipeline: shapes, value ranges, augmentation, determinism, errors."""

import itertools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nin_jax.data import input_pipeline
from nin_jax import errors


@pytest.fixture(scope='module')
def digits():
  from nin_jax.configs import test as test_config
  config = test_config.get_config()
  config.input_pipeline = 'streaming'
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  return config, dataset, info, input_pipeline.fit_preprocessing(
      dataset, info, config)


def test_digits_info_is_the_documented_fixed_split(digits):
  _, _, info, _ = digits
  assert (info.num_train, info.num_eval) == (1437, 360)
  assert info.image_shape == (8, 8, 1)
  assert info.num_classes == 10


def test_train_batches_have_shapes_dtypes_and_standardized_values(digits):
  config, dataset, info, prep = digits
  config.augment_pad = 0
  config.batch_size = 32
  batches = input_pipeline.train_batches(dataset, info, prep, config)
  images = np.concatenate([next(batches)['image'] for _ in range(20)])
  batch = next(batches)
  assert batch['image'].shape == (32, 8, 8, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert set(np.unique(batch['label'])) <= set(range(10))
  # Standardized with the training split's own statistics.
  assert abs(images.mean()) < 0.05
  assert abs(images.std() - 1.0) < 0.05


def test_augmentation_keeps_labels_and_changes_images(digits):
  config, dataset, info, prep = digits
  plain = config.copy_and_resolve_references()
  plain.augment_pad, plain.augment_flip = 0, False
  augmented = config.copy_and_resolve_references()
  augmented.augment_pad, augmented.augment_flip = 2, True
  plain.batch_size = augmented.batch_size = 64
  a = next(input_pipeline.train_batches(dataset, info, prep, plain))
  b = next(input_pipeline.train_batches(dataset, info, prep, augmented))
  # Same seed -> same shuffle order, so labels line up one to one.
  np.testing.assert_array_equal(a['label'], b['label'])
  assert a['image'].shape == b['image'].shape
  assert not np.allclose(a['image'], b['image'])
  # Translation only moves pixels and pads with the mean (0 after
  # standardization), so no new values appear beyond the original range.
  assert b['image'].max() <= a['image'].max() + 1e-5


def test_epochs_are_reshuffled_and_resume_reproduces_the_stream(digits):
  config, dataset, info, prep = digits
  config.batch_size = 64
  steps_per_epoch = info.num_train // 64
  full = list(itertools.islice(
      input_pipeline.train_batches(dataset, info, prep, config),
      steps_per_epoch + 3))
  first_epoch = np.concatenate([b['label'] for b in full[:steps_per_epoch]])
  assert len(first_epoch) == steps_per_epoch * 64  # Remainder dropped.
  assert not np.array_equal(full[0]['label'], full[steps_per_epoch]['label'])
  for start in (2, steps_per_epoch + 1):
    resumed = next(input_pipeline.train_batches(dataset, info, prep, config,
                                                start_step=start))
    np.testing.assert_array_equal(resumed['image'], full[start]['image'])
    np.testing.assert_array_equal(resumed['label'], full[start]['label'])


def test_eval_covers_every_example_exactly_once(digits):
  config, dataset, info, prep = digits
  batches = list(input_pipeline.eval_batches(dataset, info, prep, 100))
  assert len(batches) == 4  # 360 examples -> 3 full batches + 1 padded.
  assert all(b['image'].shape == (100, 8, 8, 1) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == info.num_eval == 360
  np.testing.assert_array_equal(mask[:360], 1.0)
  np.testing.assert_array_equal(mask[360:], 0.0)
  labels = np.concatenate([b['label'] for b in batches])[:360]
  _, expected = input_pipeline._digits_arrays('test')
  np.testing.assert_array_equal(labels, expected)


def test_even_shard_matches_tfds_even_splits():
  for n, count in ((10, 3), (360, 2), (7, 7), (1437, 4)):
    for drop in (True, False):
      bounds = [input_pipeline.even_shard(n, i, count, drop)
                for i in range(count)]
      sizes = [stop - start for start, stop in bounds]
      assert all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:]))  # Disjoint.
      if drop:
        assert sizes == [n // count] * count
      else:
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert bounds[-1][1] == n


def test_two_processes_read_disjoint_halves_of_the_same_global_batches(digits):
  config, dataset, info, prep = digits
  config.batch_size, config.data_shards = 32, 2
  one_process = list(itertools.islice(
      input_pipeline.train_batches(dataset, info, prep, config), 30))
  halves = [list(itertools.islice(input_pipeline.train_batches(
      dataset, info, prep, config, process_index=i, process_count=2), 30))
            for i in range(2)]
  for whole, first, second in zip(one_process, *halves):
    assert first['image'].shape[0] == second['image'].shape[0] == 16
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          whole[key], np.concatenate([first[key], second[key]]))
  sources = [dataset.source(input_pipeline.TRAIN, i, 2, drop_remainder=True)
             for i in range(2)]
  images = [np.stack([x['image'] for x in s.as_numpy_iterator()])
            for s in sources]
  assert len(images[0]) == len(images[1]) == info.num_train // 2
  flat = [set(map(bytes, x.reshape(len(x), -1))) for x in images]
  assert len(flat[0] & flat[1]) <= 5  # Only true duplicate digits overlap.


def test_eval_over_three_processes_covers_every_example_once(digits):
  config, dataset, info, prep = digits
  per_process = [list(input_pipeline.eval_batches(
      dataset, info, prep, 100, process_index=i, process_count=3))
                 for i in range(3)]
  assert len({len(batches) for batches in per_process}) == 1  # Same count.
  labels = np.concatenate([b['label'][b['mask'] == 1]
                           for batches in per_process for b in batches])
  _, expected = input_pipeline._digits_arrays('test')
  np.testing.assert_array_equal(labels, expected)


def test_tfds_path_under_mock_data(tiny_config, monkeypatch):
  monkeypatch.setattr(input_pipeline, '_host_reachable', lambda url: True)
  tiny_config.dataset = 'cifar10'
  tiny_config.input_pipeline = 'streaming'
  with tfds.testing.mock_data(num_examples=50):
    dataset = input_pipeline.Dataset(tiny_config)
    info = input_pipeline.get_info(dataset)
    prep = input_pipeline.fit_preprocessing(dataset, info, tiny_config)
    assert info.image_shape == (32, 32, 3)
    assert len(info.class_names) == 10
    assert info.num_train == 50
    batch = next(input_pipeline.train_batches(dataset, info, prep, tiny_config))
    assert batch['image'].shape == (16, 32, 32, 3)
    evals = list(input_pipeline.eval_batches(dataset, info, prep, 16))
    assert sum(b['mask'].sum() for b in evals) == 50


def test_offline_error_names_the_manual_download_route(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, '_host_reachable', lambda url: False)
  with pytest.raises(errors.DatasetUnavailableError) as raised:
    input_pipeline._prepare_tfds('cifar10', str(tmp_path))
  message = str(raised.value)
  manual = os.path.join(str(tmp_path), 'downloads', 'manual',
                        'cifar-10-binary.tar.gz')
  assert manual in message
  assert 'nin_jax/configs/digits.py' in message
  assert not os.path.exists(os.path.join(tmp_path, 'cifar10', '3.0.2'))


def test_manual_file_with_wrong_checksum_is_reported(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, '_host_reachable',
                      lambda url: pytest.fail('must not touch the network'))
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  (manual / 'cifar-10-binary.tar.gz').write_bytes(b'not the real archive')
  with pytest.raises(errors.DatasetUnavailableError,
                     match='(?s)Checksum mismatch.*folder:ROOT'):
    input_pipeline._prepare_tfds('cifar10', str(tmp_path))
  assert (manual / 'cifar-10-binary.tar.gz').exists()  # Nothing deleted.


def test_unknown_dataset_name():
  with pytest.raises(errors.DatasetUnavailableError, match='--config.dataset'):
    input_pipeline._prepare_tfds('cifar11', None)


def test_batch_larger_than_the_split_is_a_config_error(digits):
  config, _, info, _ = digits
  config.batch_size = 2048
  with pytest.raises(errors.ConfigError, match='larger than'):
    input_pipeline.steps_per_epoch(info, config, process_count=1)
  config.batch_size, config.data_shards = 30, 4
  with pytest.raises(errors.ConfigError, match='data_shards=4'):
    input_pipeline.steps_per_epoch(info, config, process_count=1)


def test_validation_is_the_held_out_tail_of_the_training_split():
  from nin_jax.configs import test as test_config
  config = test_config.get_config()
  config.validation_size = 200
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  assert (info.num_train, info.num_validation) == (1237, 200)
  images, labels = input_pipeline._digits_arrays('train')
  prep = input_pipeline.fit_preprocessing(dataset, info, config)
  validation = list(input_pipeline.eval_batches(
      dataset, info, prep, 100, split=input_pipeline.VALIDATION))
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in validation]), labels[1237:])
  train = [x for x in dataset.source(input_pipeline.TRAIN).as_numpy_iterator()]
  assert len(train) == 1237
  np.testing.assert_array_equal(np.stack([x['image'] for x in train]),
                                images[:1237])
  config.validation_size = 1437
  with pytest.raises(errors.ConfigError, match='validation_size'):
    input_pipeline.Dataset(config)


class NinJaxSlicingProbe(tfds.core.GeneratorBasedBuilder):
  """A real (prepared on disk) TFDS dataset whose pixels number the examples.

  tfds.testing.mock_data ignores split slicing; this checks the slicing
  strings the pipeline builds ('train[a:b]+extra[c:d]') against TFDS itself.
  """
  VERSION = tfds.core.Version('1.0.0')
  SIZES = {'train': 30, 'extra': 20, 'test': 10}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(4, 4, 1)),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(name, 100 * i)
            for i, name in enumerate(self.SIZES)}

  def _generate_examples(self, name, offset):
    for i in range(self.SIZES[name]):
      yield i, {'image': np.full((4, 4, 1), offset + i, np.uint8),
                'label': i % 10}


def test_slices_of_a_real_prepared_tfds_dataset(tmp_path, tiny_config):
  tiny_config.dataset = 'nin_jax_slicing_probe'
  tiny_config.data_dir = str(tmp_path)
  tiny_config.train_split, tiny_config.eval_split = 'train+extra', 'test'
  tiny_config.validation_size = 15
  dataset = input_pipeline.Dataset(tiny_config)
  builder = tfds.builder('nin_jax_slicing_probe', data_dir=str(tmp_path))

  def ids(ds):  # The number each example's pixels carry.
    return [int(x['image'][0, 0, 0]) for x in tfds.as_numpy(ds)]

  whole = ids(builder.as_dataset('train')) + ids(builder.as_dataset('extra'))
  assert len(whole) == 50
  assert ids(dataset.source(input_pipeline.TRAIN)) == whole[:35]
  assert ids(dataset.source(input_pipeline.VALIDATION)) == whole[35:]
  for shard in range(4):  # Streaming shards straddle the train/extra seam.
    start, stop = input_pipeline.even_shard(35, shard, 4, True)
    assert ids(dataset.source(input_pipeline.TRAIN, shard, 4, True)) == \
        whole[start:stop]
  assert ids(dataset.source(input_pipeline.TEST)) == ids(
      builder.as_dataset('test'))
  assert dataset.fingerprint(input_pipeline.TRAIN).startswith(
      'nin_jax_slicing_probe:1.0.0:train+extra[0:35]:')
