"""The device-resident path: its batches and their distribution.

A global batch must be a function of (seed, step) alone: the same bits on 1
device as on 8 (jit or pmap), however its rows are split between devices.

On the digits with preprocessing 'none' (pixels / 16, exact in float32) every
augmented image can be traced back to its training example, crop offset and
flip. Both paths must produce only such images, visit each example at most
once an epoch, and choose offsets and flips with the same (uniform)
frequencies.
"""

import functools
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nin_jax.configs import test as test_config
from nin_jax.data import device_input
from nin_jax.data import input_pipeline
from nin_jax.training import parallel
from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAD = 2
EPOCHS = 3
# Steps drawn on 1 and on 8 devices: both sides of the first epoch boundary
# (the digits' 1,437 examples make 22 batches of 64).
STEPS = (0, 1, 21, 22, 23)


def _strategy(kind='jit'):
  """A parallel strategy for its mesh and placement; its steps never run."""
  def unused(*args, **kwargs):
    raise AssertionError('no step runs in these tests')
  return {'jit': parallel.Jit, 'pmap': parallel.Pmap}[kind](unused, unused)


def _config():
  config = test_config.get_config()
  config.preprocessing = 'none'
  config.augment_pad, config.augment_flip = PAD, True
  config.batch_size = 64
  return config


@pytest.fixture(scope='module')
def setup():
  config = _config()
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
  strategy = _strategy()
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
  strategy = _strategy()
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
  strategy = _strategy()
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


def test_epoch_order_is_a_uniform_random_permutation():
  key = jax.random.key(3)
  for size in (1, 2, 17, 1437):
    order = np.asarray(device_input.epoch_order(key, jnp.arange(size), size))
    np.testing.assert_array_equal(np.sort(order), np.arange(size))
  orders = [np.asarray(device_input.epoch_order(jax.random.key(k),
                                                jnp.arange(1437), 1437))
            for k in range(3)]
  assert all((a != b).mean() > 0.99 for a, b in itertools.combinations(
      orders, 2))
  assert (orders[0] != np.arange(1437)).mean() > 0.99
  # Over 2,400 keys, each of the 120 orders of 5 examples about 20 times.
  orders = jax.vmap(lambda k: device_input.epoch_order(k, jnp.arange(5), 5))(
      jax.random.split(key, 2400))
  ids = {order: i for i, order in enumerate(itertools.permutations(range(5)))}
  counts = np.bincount([ids[tuple(o)] for o in np.asarray(orders).tolist()],
                       minlength=120)
  assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_any_split_of_a_batch_into_rows_draws_the_same_batch(setup):
  """draw_rows for one device's B rows and for 2 or 8 devices' slices."""
  _, dataset, info, prep = setup
  config = _config()
  images, labels = dataset.arrays(input_pipeline.TRAIN)
  data = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}

  @functools.partial(jax.jit, static_argnums=2)
  def rows(index, first_row, num_rows):
    return device_input.draw_rows(
        data, prep, index, first_row, num_rows, seed=config.seed,
        steps_per_epoch=info.num_train // config.batch_size,
        batch_size=config.batch_size, pad=PAD, flip=True)

  for index in STEPS:
    whole = rows(index, 0, 64)
    for devices in (2, 8):
      parts = [rows(index, d * 64 // devices, 64 // devices)
               for d in range(devices)]
      for key in whole:
        np.testing.assert_array_equal(
            np.concatenate([p[key] for p in parts]), whole[key])


_DRAW_ON_EIGHT_DEVICES = """
import sys
import numpy as np
from nin_jax.data import device_input, input_pipeline
from nin_jax.training import parallel
from tests.data import test_device_input as t

config = t._config()
dataset = input_pipeline.Dataset(config)
info = input_pipeline.get_info(dataset)
prep = input_pipeline.fit_preprocessing(dataset, info, config)
out = {}
for kind in ('jit', 'pmap'):
  batches = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, config, t._strategy(kind))
  for index in t.STEPS:
    for key, value in batches.batch(index).items():
      out[f'{kind}_{key}_{index}'] = np.asarray(value)
np.savez(sys.argv[1], **out)
"""


def test_eight_devices_draw_the_batches_of_one(setup, tmp_path):
  """The global batches of a step on 1 device and on 8 (jit and pmap)."""
  _, dataset, info, prep = setup
  config = _config()
  config.input_pipeline = 'device'
  path = str(tmp_path / 'eight.npz')
  env = main_runner.environment(8)
  process = subprocess.run(
      [sys.executable, '-c', _DRAW_ON_EIGHT_DEVICES, path], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=300, check=False)
  assert process.returncode == 0, main_runner.failure_tail(process.stdout)
  one = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, config, _strategy())
  with np.load(path) as eight:
    for index in STEPS:
      batch = one.batch(index)
      for kind in ('jit', 'pmap'):
        for key in ('image', 'label'):
          drawn = eight[f'{kind}_{key}_{index}']
          if kind == 'pmap':  # (8 devices, 8 rows each, ...)
            assert drawn.shape[:2] == (8, 8)
            drawn = drawn.reshape((64,) + drawn.shape[2:])
          np.testing.assert_array_equal(drawn, np.asarray(batch[key]),
                                        err_msg=f'{kind} {key} {index}')
