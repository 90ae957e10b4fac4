"""Input pipeline: TFDS (or scikit-learn digits) -> standardized, augmented batches.

Every random choice (shuffle order, crop offset, flip) is a pure function of
(seed, epoch, example index), so a run resumed at step s sees exactly the
batches an uninterrupted run would have seen from step s on.

Images are standardized per channel with the training split's mean and
standard deviation, then (training only) zero-padded, randomly cropped back to
size and randomly flipped. Evaluation batches cover the whole split: the last
batch is padded and a `mask` marks the real examples.
"""

import dataclasses
import itertools
import os
import socket
import urllib.parse
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import download_manager

from nin_jax import errors

Batch = dict[str, np.ndarray]

DIGITS = 'digits'
# Size of the held-out test split of the digits data (of 1,797 images).
DIGITS_TEST_SIZE = 360
# The digits split is fixed (it does not follow config.seed), so results of
# different runs are comparable.
DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset, whatever its source."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  mean: tuple[float, ...]  # Per-channel mean of the training split.
  std: tuple[float, ...]  # Per-channel standard deviation of the same.


# --- Sources -----------------------------------------------------------------


def _digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1) images in [0, 16].

  The split is stratified and fixed: 1,437 training and 360 test images.
  """
  from sklearn import datasets  # Imported here: only the digits demo needs it.
  from sklearn import model_selection
  digits = datasets.load_digits()
  images = digits.images.astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  if split == 'train':
    return train_x, train_y
  if split == 'test':
    return test_x, test_y
  raise errors.ConfigError(f"The digits dataset has splits 'train' and 'test', not "
                   f'{split!r}.')


def _host_reachable(url: str, timeout: float = 5.0) -> bool:
  """Whether a TCP connection to the URL's host can be opened quickly."""
  parts = urllib.parse.urlparse(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout):
      return True
  except OSError:
    return False


def _prepare_tfds(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns a prepared TFDS builder, or raises one clear error.

  TFDS retries a failed download for minutes; without network we fail in
  seconds instead and name the manual-download route.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.DatasetUnavailableError(
        f'Unknown dataset {name!r}: it is neither {DIGITS!r} nor a TFDS dataset '
        'name (see https://www.tensorflow.org/datasets/catalog). Fix '
        '--config.dataset.') from None
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  manual_dir = os.path.join(root, 'downloads', 'manual')
  url_infos = builder.url_infos or {}
  missing = {url: info for url, info in url_infos.items()
             if not os.path.exists(os.path.join(manual_dir, info.filename))}
  offline = [url for url in missing if not _host_reachable(url)]
  if offline:
    wanted = '\n'.join(f'  {url}\n    -> {os.path.join(manual_dir, missing[url].filename)}'
                       for url in offline)
    raise errors.DatasetUnavailableError(
        f'Cannot download TFDS dataset {name!r}: no network connection to '
        f'{urllib.parse.urlparse(offline[0]).hostname}.\n'
        f'To train offline, download these files elsewhere and place them '
        f'as shown (TFDS checks their checksums and prepares the dataset '
        f'from them):\n{wanted}\n'
        f'or pass --config.data_dir=DIR for a directory that already holds '
        f'the prepared dataset, or run the offline demo on bundled data:\n'
        f'  python -m nin_jax.main --workdir=/tmp/nin_digits '
        f'--config=nin_jax/configs/digits.py')
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(download_config=download_config)
  except download_manager.NonMatchingChecksumError as e:
    raise errors.DatasetUnavailableError(
        f'A downloaded file for {name!r} does not have the expected checksum '
        f'(truncated or wrong file?). Delete it from {manual_dir} and download '
        f'it again.\nTFDS said: {e}') from None
  return builder


def _tfds_split(builder: tfds.core.DatasetBuilder, split: str,
                process_index: int, process_count: int) -> tf.data.Dataset:
  if process_count > 1:
    split = tfds.even_splits(split, n=process_count,
                             drop_remainder=True)[process_index]
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda x: {'image': x['image'], 'label': x['label']})


class Dataset:
  """One dataset's splits as tf.data sources of {'image': uint8, 'label'}."""

  def __init__(self, config: ml_collections.ConfigDict,
               process_index: int = 0, process_count: int = 1):
    self.name = config.dataset
    self._process_index = process_index
    self._process_count = process_count
    self._sources = {}
    if self.name == DIGITS:
      self._builder = None
      self.class_names = tuple(str(d) for d in range(10))
    else:
      self._builder = _prepare_tfds(self.name, config.data_dir)
      label = self._builder.info.features['label']
      self.class_names = tuple(label.names)

  def source(self, split: str) -> tf.data.Dataset:
    """This process's share of `split`, unshuffled, decoded, cached in memory."""
    if split not in self._sources:
      self._sources[split] = self._load(split).cache()
    return self._sources[split]

  def _load(self, split: str) -> tf.data.Dataset:
    if self._builder is None:
      images, labels = _digits_arrays(split)
      shard = slice(self._process_index, None, self._process_count)
      ds = tf.data.Dataset.from_tensor_slices(
          {'image': images[shard], 'label': labels[shard]})
    else:
      ds = _tfds_split(self._builder, split, self._process_index,
                       self._process_count)
    return ds


def _num_examples(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  if n < 0:  # Unknown cardinality: count once (the source is cached).
    n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
  return n


def _channel_stats(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of a source's images."""
  total = total_sq = None
  count = 0
  for batch in ds.batch(1024).as_numpy_iterator():
    pixels = batch['image'].astype(np.float64).reshape(-1, batch['image'].shape[-1])
    total = pixels.sum(0) if total is None else total + pixels.sum(0)
    total_sq = ((pixels ** 2).sum(0) if total_sq is None
                else total_sq + (pixels ** 2).sum(0))
    count += pixels.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
  return mean, np.maximum(std, 1e-6)


def get_info(dataset: Dataset, config: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes, shapes, class names and standardization statistics."""
  train = dataset.source(config.train_split)
  evaluation = dataset.source(config.eval_split)
  mean, std = _channel_stats(train)
  image_shape = tuple(int(d) for d in train.element_spec['image'].shape)
  return DatasetInfo(
      name=dataset.name,
      num_classes=len(dataset.class_names),
      class_names=dataset.class_names,
      image_shape=image_shape,
      num_train=_num_examples(train),
      num_eval=_num_examples(evaluation),
      mean=tuple(float(m) for m in mean),
      std=tuple(float(s) for s in std))


# --- Preprocessing -------------------------------------------------------------


def _standardize(image: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(info.mean, tf.float32)) / tf.constant(
      info.std, tf.float32)


def _augment(image: tf.Tensor, seed: tf.Tensor, pad: int,
             flip: bool) -> tf.Tensor:
  """Random translation by zero-pad + crop, and random horizontal flip.

  Runs after standardization, so the padding is the mean colour.
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  if pad > 0:
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def train_batches(dataset: Dataset, info: DatasetInfo,
                  config: ml_collections.ConfigDict, local_batch_size: int,
                  start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches of this process, starting at global step `start_step`.

  Each epoch is a fresh permutation seeded by (seed, epoch); incomplete last
  batches are dropped, so every epoch has exactly num_train // batch steps.
  """
  source = dataset.source(config.train_split).enumerate()
  num_local = _num_examples(source)
  steps_per_epoch = num_local // local_batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(
        f'The training split has {num_local} examples per process, fewer than '
        f'one batch of {local_batch_size}; lower config.batch_size.')
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)
  pad, flip = config.augment_pad, config.augment_flip

  def preprocess(epoch, index, example):
    seed = tf.stack([tf.cast(config.seed, tf.int64),
                     epoch * num_local + index])
    image = _augment(_standardize(example['image'], info), seed, pad, flip)
    return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

  for epoch in itertools.count(start_epoch):
    ds = source.shuffle(min(config.shuffle_buffer, num_local),
                        seed=config.seed * 1_000_003 + epoch,
                        reshuffle_each_iteration=False)
    if epoch == start_epoch and start_offset:
      ds = ds.skip(start_offset * local_batch_size)
    ds = ds.map(lambda i, x, e=epoch: preprocess(tf.constant(e, tf.int64), i, x),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True)
    yield from ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(dataset: Dataset, info: DatasetInfo,
                 config: ml_collections.ConfigDict,
                 local_batch_size: int) -> Iterator[Batch]:
  """Every example of the evaluation split once, in batches of one fixed shape.

  The last batch is padded with zeros; `mask` is 1 for real examples only.
  """
  ds = dataset.source(config.eval_split).map(
      lambda x: {'image': _standardize(x['image'], info),
                 'label': tf.cast(x['label'], tf.int32),
                 'mask': tf.constant(1.0, tf.float32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
  for batch in ds.as_numpy_iterator():
    short = local_batch_size - batch['label'].shape[0]
    if short:
      batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
