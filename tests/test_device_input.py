"""The device-resident path draws the same distribution as the streaming one.

On the digits with preprocessing 'none' (pixels / 16, exact in float32) every
augmented image can be traced back to its training example, crop offset and
flip. Both paths must produce only such images, visit each example at most
once an epoch, and choose offsets and flips with the same (uniform)
frequencies.
"""

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from nin_jax import device_input
from nin_jax import input_pipeline
from nin_jax import parallel
from nin_jax import steps
from nin_jax.configs import test as test_config

PAD = 2
EPOCHS = 3


@pytest.fixture(scope='module')
def setup():
  config = test_config.get_config()
  config.preprocessing = 'none'
  config.augment_pad, config.augment_flip = PAD, True
  config.batch_size = 64
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  prep = input_pipeline.fit_preprocessing(dataset, info, config)
  return config, dataset, info, prep


def _variant_table(images):
  """bytes of each augmented variant -> (example, dy, dx, flip)."""
  size = images.shape[1]
  padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  table, ambiguous = {}, set()
  for dy, dx, flip in itertools.product(range(2 * PAD + 1), range(2 * PAD + 1),
                                        (0, 1)):
    crops = padded[:, dy:dy + size, dx:dx + size]
    if flip:
      crops = crops[:, :, ::-1]
    for i, crop in enumerate(crops):
      key = np.ascontiguousarray(crop).tobytes()
      if table.get(key, (i, dy, dx, flip)) != (i, dy, dx, flip):
        ambiguous.add(key)
      table[key] = (i, dy, dx, flip)
  for key in ambiguous:
    del table[key]
  return table


def _trace(batches, table, steps_per_epoch):
  """(epoch, example, dy, dx, flip, label) of every traceable image."""
  rows, untraced = [], 0
  for step, batch in enumerate(batches):
    for image, label in zip(np.asarray(batch['image']),
                            np.asarray(batch['label'])):
      found = table.get(np.ascontiguousarray(image).tobytes())
      if found is None:
        untraced += 1
      else:
        rows.append((step // steps_per_epoch, *found, label))
  return np.array(rows), untraced


def test_device_and_streaming_paths_draw_the_same_distribution(setup):
  config, dataset, info, prep = setup
  steps_per_epoch = input_pipeline.steps_per_epoch(info, config, 1)
  num_steps = EPOCHS * steps_per_epoch
  streaming = list(itertools.islice(
      input_pipeline.train_batches(dataset, info, prep, config), num_steps))
  config.input_pipeline = 'device'
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  device = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, config, strategy)
  drawn = [device.batch(i) for i in range(num_steps)]
  np.testing.assert_array_equal(np.asarray(device.batch(5)['image']),
                                np.asarray(drawn[5]['image']))  # Pure in step.

  images, labels = input_pipeline._digits_arrays('train')
  table = _variant_table(np.asarray(prep.apply_jax(images)))
  traced = {}
  for name, batches in (('streaming', streaming), ('device', drawn)):
    rows, untraced = _trace(batches, table, steps_per_epoch)
    total = num_steps * config.batch_size
    # Every image is an augmented training example (a few are ambiguous).
    assert untraced < 0.02 * total, (name, untraced)
    np.testing.assert_array_equal(rows[:, 5], labels[rows[:, 1]])
    for epoch in range(EPOCHS):  # Without replacement within an epoch.
      examples = rows[rows[:, 0] == epoch, 1]
      assert len(set(examples)) == len(examples)
    # Offsets and flips uniform (chi-square goodness of fit).
    for column, values in ((2, 2 * PAD + 1), (3, 2 * PAD + 1), (4, 2)):
      counts = np.bincount(rows[:, column], minlength=values)
      assert stats.chisquare(counts).pvalue > 1e-3, (name, column, counts)
    traced[name] = rows

  # And the two paths agree with each other: offsets, flips, labels.
  for column, values in ((2, 2 * PAD + 1), (3, 2 * PAD + 1), (4, 2), (5, 10)):
    table2 = [np.bincount(traced[name][:, column], minlength=values)
              for name in ('streaming', 'device')]
    assert stats.chi2_contingency(table2).pvalue > 1e-3, (column, table2)
  # Mean augmented image: the same within sampling noise.
  means = [np.mean([np.asarray(b['image']) for b in batches], axis=(0, 1))
           for batches in (streaming, drawn)]
  assert np.abs(means[0] - means[1]).max() < 0.05


def test_device_batches_are_sharded_over_the_data_axis(setup):
  config, dataset, info, prep = setup
  config.input_pipeline = 'device'
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  batch = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, config, strategy).batch(0)
  assert batch['image'].shape == (64, 8, 8, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  assert batch['image'].sharding.spec == jax.sharding.PartitionSpec('data')


def test_arrays_in_memory_give_each_example_once_an_epoch(setup):
  """from_arrays (the benchmark's path): an epoch is a permutation."""
  config, _, _, prep = setup
  config.input_pipeline = 'device'
  config.augment_pad, config.augment_flip = 0, False
  images = np.arange(130 * 64, dtype=np.uint8).reshape(130, 8, 8, 1) % 17
  images[:, 0, 0, 0] = np.arange(130)  # Tells the examples apart.
  labels = np.arange(130) % 10
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  batches = device_input.DeviceTrainBatches.from_arrays(
      images, labels, prep, config, strategy)
  drawn = [batches.batch(i) for i in range(2)]  # 130 // 64 = 2 steps.
  ids = np.concatenate([np.rint(np.asarray(b['image'])[:, 0, 0, 0] * 16)
                        for b in drawn]).astype(int)
  assert len(set(ids)) == 128 and ids.max() < 130
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(b['label']) for b in drawn]), labels[ids])
  config.batch_size = 256
  with pytest.raises(input_pipeline.errors.ConfigError, match='lower it'):
    device_input.DeviceTrainBatches.from_arrays(images, labels, prep, config,
                                                strategy)
