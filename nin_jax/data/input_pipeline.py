"""Input pipeline: TFDS, a folder of images or scikit-learn's digits ->
preprocessed, augmented batches.

Training batches come from the streaming path here (tf.data on the host,
for any dataset size) or from the device-resident path (device_input.py).
Folder and digits data are held in memory as numpy arrays; with the device
path they need no TensorFlow at all (evaluation batches are built with
numpy). TensorFlow and TFDS are imported only for TFDS datasets and the
streaming path.

Every random choice (shuffle order, crop offset, flip) is a pure function of
(seed, epoch, example index), so a run resumed at step s sees exactly the
batches an uninterrupted run would have seen from step s on.

Images are preprocessed with a transform fitted on the training split
(preprocessing.py), then (training only) zero-padded, randomly cropped back to
size and randomly flipped. Evaluation batches cover the whole split: the last
batch is padded and a `mask` marks the real examples.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import itertools
import os
import re
import socket
import urllib.parse
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from nin_jax.data import image_folder
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files

Batch = dict[str, np.ndarray]


def tensorflow(needed_for: str):
  """TensorFlow, imported on first use and kept off the accelerators."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError(
        f'{needed_for} needs TensorFlow, which cannot be imported ({e}). '
        'Install it (pip install tensorflow-cpu), or train on a folder of '
        "images or the digits with --config.input_pipeline=device, which "
        'need no TensorFlow.') from None
  # TensorFlow only feeds data; keep it off the devices JAX uses. (Refused,
  # harmlessly, once TensorFlow has initialized its devices.)
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:
      pass
  return tf


def tensorflow_datasets(needed_for: str):
  """TFDS, imported on first use, with the error a user can act on."""
  tensorflow(needed_for)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError(
        f'{needed_for} needs tensorflow-datasets, which cannot be imported '
        f'({e}). Install it (pip install tensorflow-datasets), or use '
        "--config.dataset=folder:ROOT or 'digits'.") from None
  return tfds

DIGITS = 'digits'
# Size of the held-out test split of the digits data (of 1,797 images).
DIGITS_TEST_SIZE = 360
# The digits split is fixed (it does not follow config.seed), so results of
# different runs are comparable.
DIGITS_SPLIT_SEED = 0
# Largest pixel value of the digits images (TFDS images are uint8, 0-255).
DIGITS_PIXEL_MAX = 16
DIGITS_SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset, whatever its source."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  num_train: int  # Training examples (all processes), validation excluded.
  num_validation: int  # Held-out tail of the training split.
  num_eval: int  # Examples in the whole evaluation (test) split.


# --- Sources -----------------------------------------------------------------


@functools.cache
def _digits_arrays(split: str, cache_root: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1) images in [0, 16].

  The split (one of DIGITS_SPLITS) is stratified and fixed: 1,437 training
  and 360 test images. With `cache_root`, the split arrays are kept there
  after the first use: importing scikit-learn takes longer (1-2 s of CPU)
  than the demo's training steps.
  """
  if not cache_root:
    arrays = _split_digits()
  else:
    version = importlib.metadata.version('scikit-learn')  # No import.
    arrays = workdir_files.cached(
        os.path.join(cache_root, 'nin_jax_digits', f'digits-sklearn{version}-'
                     f'{DIGITS_TEST_SIZE}-{DIGITS_SPLIT_SEED}.npz'),
        'digits', _split_digits)
  return arrays[f'{split}_images'], arrays[f'{split}_labels']


def _split_digits() -> dict[str, np.ndarray]:
  from sklearn import datasets  # Imported here: only the digits demo needs it.
  from sklearn import model_selection
  digits = datasets.load_digits()
  images = digits.images.astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  return {'train_images': train_x, 'train_labels': train_y,
          'test_images': test_x, 'test_labels': test_y}


def _host_reachable(url: str, timeout: float = 5.0) -> bool:
  """Whether a TCP connection to the URL's host can be opened quickly."""
  parts = urllib.parse.urlparse(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout):
      return True
  except OSError:
    return False


def _builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` (a tfds.core.DatasetBuilder)."""
  tfds = tensorflow_datasets(f'TFDS dataset {name!r}')
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.DatasetUnavailableError(
        f'Unknown dataset {name!r}: it is neither {DIGITS!r}, nor '
        f"'{image_folder.PREFIX}ROOT' (a folder of images), nor a TFDS dataset "
        'name (see https://www.tensorflow.org/datasets/catalog). Fix '
        '--config.dataset.') from None


def _manual_checksum_mismatches(builder, manual_dir: str) -> list[tuple]:
  """(url, path, expected, actual) UrlInfos of each file in `manual_dir`
  whose size or sha256 differs from what TFDS recorded: TFDS refuses those."""
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  mismatches = []
  for url, expected in (builder.url_infos or {}).items():
    path = os.path.join(manual_dir, expected.filename or '')
    if expected.filename and os.path.isfile(path):
      actual = checksums.compute_url_info(path)
      if actual != expected:  # Compares size and sha256.
        mismatches.append((url, path, expected, actual))
  return mismatches


def _describe_url_info(info) -> str:
  return f'{int(info.size)} bytes, sha256 {info.checksum}'


def _prepare_tfds(name: str, data_dir: str | None):
  """Returns a prepared TFDS builder, or raises one clear error.

  TFDS retries a failed download for minutes; without network we fail in
  seconds instead and name the manual-download route. A manual file with the
  right content but other bytes (re-gzipped by a Linux distribution) fails
  TFDS's checksum, and TFDS has no public way to accept it (its
  DownloadConfig.register_checksums would rewrite the checksums in the
  installed package): the error names the original file and the public
  route for repackaged data, a folder of images.
  """
  tfds = tensorflow_datasets(f'TFDS dataset {name!r}')
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top
  builder = _builder(name, data_dir)
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
        f'the prepared dataset, or train on a folder of images laid out as '
        f'ROOT/train/<class>/<image> with --config.dataset={image_folder.PREFIX}ROOT, '
        f'or run the offline demo on bundled data:\n'
        f'  python -m nin_jax.main --workdir=/tmp/nin_digits '
        f'--config=nin_jax/configs/digits.py')
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(download_config=download_config)
  except download_manager.NonMatchingChecksumError as e:
    mismatches = _manual_checksum_mismatches(builder, manual_dir)
    if not mismatches:  # A file TFDS downloaded itself (in its cache).
      raise errors.DatasetUnavailableError(
          f'A downloaded file for {name!r} does not have the expected '
          f'checksum (truncated, or changed on the server?). Delete the file '
          f'TFDS names below and run again.\nTFDS said: {e}') from None
    files = '\n'.join(
        f'  {path} ({_describe_url_info(actual)})\n'
        f'    expected for {url}: {_describe_url_info(expected)}'
        for url, path, expected, actual in mismatches)
    raise errors.DatasetUnavailableError(
        f'Checksum mismatch: the manually downloaded file(s) for TFDS dataset '
        f'{name!r} differ from the ones TFDS recorded:\n{files}\n'
        f'The content may still be right: a repackaged copy (Linux '
        f'distributions re-gzip the archives they ship) has other bytes and '
        f'another sha256; it may also be a truncated or wrong file. TFDS '
        f'takes only the original: place the original file from the URL '
        f'above; or, to use this copy, extract its images into a folder laid '
        f'out as ROOT/train/<class>/<image> and ROOT/test/<class>/<image> '
        f'and train on it with '
        f'--config.dataset={image_folder.PREFIX}ROOT.') from None
  return builder


def even_shard(num_examples: int, index: int, count: int,
               drop_remainder: bool) -> tuple[int, int]:
  """[start, stop) of contiguous shard `index` of `count`, as tfds.even_splits.

  Without drop_remainder the first num_examples % count shards get one more.
  """
  size, extra = divmod(num_examples, count)
  if drop_remainder:
    return index * size, (index + 1) * size
  start = index * size + min(index, extra)
  return start, start + size + (index < extra)


# config.input_pipeline: host tf.data, or the whole split on the devices
# (checked by config_checks.validate).
INPUT_PIPELINES = ('streaming', 'device')

# Logical splits: training (less any held-out validation tail), validation
# (the last config.validation_size training examples) and test.
TRAIN, VALIDATION, TEST = 'train', 'validation', 'test'


def pixel_max(dataset_name: str) -> int:
  """The largest raw pixel value: 16 for the digits, 255 for other images."""
  return DIGITS_PIXEL_MAX if dataset_name == DIGITS else 255


# The paper's datasets (and the digits), whose shapes are known without
# asking TFDS (a test checks them against TFDS).
KNOWN_IMAGE_SHAPES = {DIGITS: (8, 8, 1), 'cifar10': (32, 32, 3),
                      'cifar100': (32, 32, 3), 'svhn_cropped': (32, 32, 3),
                      'mnist': (28, 28, 1)}


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(height, width, channels) of config.dataset, reading as little as it can."""
  if config.dataset in KNOWN_IMAGE_SHAPES:
    return KNOWN_IMAGE_SHAPES[config.dataset]
  if image_folder.is_folder(config.dataset):
    return get_info(Dataset(config)).image_shape
  builder = _builder(config.dataset, config.data_dir)
  return tuple(int(d) for d in builder.info.features['image'].shape)


Arrays = tuple[np.ndarray, np.ndarray]  # (uint8 images, int labels)


class Dataset:
  """One dataset's logical splits: training, validation and test.

  Every logical split is a contiguous, deterministic range of examples of a
  stored split, so a process reads only the examples it trains or evaluates
  on, and the validation examples are never trained on. Digits and folder
  datasets are held in memory as numpy arrays (`in_memory`) and read with
  `arrays`; TFDS datasets are read with tf.data through `source`, which also
  serves in-memory data to the streaming path.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.name = config.dataset
    self._sources = {}
    self._builder = None
    self._arrays: dict[str, Arrays] | None = None
    stored = {config.train_split, config.eval_split}
    validation_folder = False
    if self.name == DIGITS:
      cache_root = workdir_files.cache_root(config)
      self._arrays = {split: _digits_arrays(split, cache_root)
                      for split in _split_parts(stored)}
      self.class_names = tuple(str(d) for d in range(10))
      self.version = 'sklearn'
    elif image_folder.is_folder(self.name):
      folder = image_folder.load(config, _split_parts(stored))
      self._arrays = folder.arrays
      self.class_names = folder.class_names
      self.version = 'folder'
      validation_folder = image_folder.VALIDATION_FOLDER in folder.arrays
      if validation_folder and config.validation_size:
        raise errors.ConfigError(
            f'{folder.root} has a {image_folder.VALIDATION_FOLDER}/ folder, '
            f'which is the validation split; config.validation_size='
            f'{config.validation_size} would hold out another one from '
            f'{config.train_split!r}. Pass --config.validation_size=0, or '
            f'remove the {image_folder.VALIDATION_FOLDER}/ folder.')
      if validation_folder:
        stored.add(image_folder.VALIDATION_FOLDER)
    else:
      self._builder = _prepare_tfds(self.name, config.data_dir)
      label = self._builder.info.features['label']
      self.class_names = tuple(label.names)
      self.version = str(self._builder.version)
    self.pixel_max = pixel_max(self.name)
    # Each split name ('train+extra' too) as (component, size) pairs.
    self._parts = {name: [(part, self._size(part)) for part in name.split('+')]
                   for name in stored}
    num_train = sum(size for _, size in self._parts[config.train_split])
    held_out = config.validation_size
    if not 0 <= held_out < num_train:
      raise errors.ConfigError(
          f'config.validation_size={held_out} must be at least 0 and less than '
          f'the {num_train} examples of {config.train_split!r}.')
    num_test = sum(size for _, size in self._parts[config.eval_split])
    self._ranges = {
        TRAIN: (config.train_split, 0, num_train - held_out),
        VALIDATION: (config.train_split, num_train - held_out, num_train),
        TEST: (config.eval_split, 0, num_test),
    }
    if validation_folder:
      size = self._size(image_folder.VALIDATION_FOLDER)
      self._ranges[VALIDATION] = (image_folder.VALIDATION_FOLDER, 0, size)

  @property
  def in_memory(self) -> bool:
    """Whether the examples are numpy arrays (no TensorFlow needed)."""
    return self._arrays is not None

  def _size(self, part: str) -> int:
    if self._arrays is not None:
      return len(self._arrays[part][1])
    n = int(self._builder.as_dataset(split=part).cardinality())
    if n < 0:
      raise errors.DatasetUnavailableError(
          f'TFDS cannot tell the size of split {part!r} of {self.name!r}.')
    return n

  def stored_split(self, split: str) -> str:
    """The stored split (e.g. 'train+extra') that logical `split` is in."""
    return self._ranges[split][0]

  def numpy(self, ds, split: str) -> Iterator[Any]:
    """ds.as_numpy_iterator() of data read from stored split `split`; a
    damaged file of a TFDS dataset is one DatasetUnavailableError."""
    if self.in_memory:
      yield from ds.as_numpy_iterator()
      return
    try:
      yield from ds.as_numpy_iterator()
    except Exception as e:  # pylint: disable=broad-except
      # TensorFlow's error for a file garbled, cut short (TFDS then counts
      # fewer examples than it recorded), gone or unreadable.
      if storage.failure(e) != storage.UNREADABLE:
        raise
      raise self._damaged(split, e) from None

  def _damaged(self, split: str, error: Exception
               ) -> errors.DatasetUnavailableError:
    """TensorFlow's error for an unreadable TFDS file as one line: which
    prepared dataset, and how to prepare it again."""
    where = os.fspath(self._builder.data_dir)
    root = os.fspath(self._builder.data_dir_root)
    # TensorFlow wraps the reason in the names of its function and op.
    reason = ' '.join(re.sub(r'\{\{.*?\}\}|\[Op:.*', '',
                             getattr(error, 'message', str(error))).split())
    return errors.DatasetUnavailableError(
        f'TFDS dataset {self.name!r} in {where} is damaged: its {split!r} '
        f'split cannot be read ({type(error).__name__}: {reason}). Delete '
        f'{where} and run the same command again: TFDS then prepares the '
        'dataset anew (downloading it, or from the files in '
        f'{os.path.join(root, "downloads", "manual")}).')

  def num_examples(self, split: str) -> int:
    """Size of a logical split (known without reading it)."""
    _, start, stop = self._ranges[split]
    return stop - start

  def fingerprint(self, split: str) -> str:
    """Identifies a logical split's examples: name, range and some bytes."""
    name, start, stop = self._ranges[split]
    digest = hashlib.sha256()
    ends = ((start, min(start + 8, stop)), (max(stop - 8, start), stop))
    for lo, hi in ends:
      if self.in_memory:
        images, labels = self._read_arrays(name, lo, hi)
        examples = [{'image': i, 'label': l} for i, l in zip(images, labels)]
      else:
        examples = self.numpy(self._read(name, lo, hi), name)
      for example in examples:
        digest.update(example['image'].tobytes())
        digest.update(np.int64(example['label']).tobytes())
    return (f'{self.name}:{self.version}:{name}[{start}:{stop}]:'
            f'{digest.hexdigest()[:16]}')

  def arrays(self, split: str, shard: int = 0, num_shards: int = 1,
             drop_remainder: bool = False) -> Arrays:
    """Shard `shard` of `num_shards` of a logical split of in-memory data."""
    return self._read_arrays(*self._shard(split, shard, num_shards,
                                          drop_remainder))

  def _shard(self, split: str, shard: int, num_shards: int,
             drop_remainder: bool) -> tuple[str, int, int]:
    """(stored split name, start, stop) of a shard of a logical split."""
    name, first, last = self._ranges[split]
    start, stop = even_shard(last - first, shard, num_shards, drop_remainder)
    return name, first + start, first + stop

  def _read_arrays(self, name: str, start: int, stop: int) -> Arrays:
    """Examples [start, stop) of a split name such as 'train+extra'."""
    images, labels, offset = [], [], 0
    for part, size in self._parts[name]:
      lo, hi = max(start - offset, 0), min(stop - offset, size)
      part_images, part_labels = self._arrays[part]
      images.append(part_images[lo:max(lo, hi)])
      labels.append(part_labels[lo:max(lo, hi)])
      offset += size
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)

  def source(self, split: str, shard: int = 0, num_shards: int = 1,
             drop_remainder: bool = False):
    """Shard `shard` of `num_shards` of a logical split as a tf.data.Dataset,
    cached in memory."""
    key = (split, shard, num_shards, drop_remainder)
    if key not in self._sources:
      self._sources[key] = self._load(*key).cache()
    return self._sources[key]

  def head(self, split: str, count: int) -> dict[str, np.ndarray]:
    """The first `count` raw examples of a split, read without the cache."""
    if self.in_memory:
      images, labels = self.arrays(split)
      batch = {'image': images[:count], 'label': labels[:count]}
      empty = not len(labels)
    else:
      ds = self._load(split, 0, 1, False).take(count).batch(count)
      batch = next(self.numpy(ds, self.stored_split(split)), None)
      empty = batch is None
    if empty:
      raise errors.ConfigError(f'The {split} split of {self.name} is empty.')
    return batch

  def _load(self, split: str, shard: int, num_shards: int,
            drop_remainder: bool):
    return self._read(*self._shard(split, shard, num_shards, drop_remainder))

  def _read(self, name: str, start: int, stop: int):
    """Examples [start, stop) of a split name such as 'train+extra'."""
    if self.in_memory:
      tf = tensorflow('The streaming input pipeline')
      images, labels = self._read_arrays(name, start, stop)
      return tf.data.Dataset.from_tensor_slices(
          {'image': images, 'label': labels})
    tfds = tensorflow_datasets(f'TFDS dataset {self.name!r}')
    # [start, stop) of the concatenated parts, as a TFDS slicing string.
    pieces, offset = [], 0
    for part, size in self._parts[name]:
      lo, hi = max(start - offset, 0), min(stop - offset, size)
      if lo < hi:
        pieces.append(f'{part}[{lo}:{hi}]')
      offset += size
    # Cycle length 1: files are read one after the other, so the examples
    # come in stored order (TFDS interleaves 16 files by default, even
    # without shuffle_files).
    ds = self._builder.as_dataset(
        split='+'.join(pieces), shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return ds.map(lambda x: {'image': x['image'], 'label': x['label']})


def _split_parts(names: set[str]) -> set[str]:
  """The stored splits behind split names such as 'train+extra'."""
  return {part for name in names for part in name.split('+')}


def get_info(dataset: Dataset) -> DatasetInfo:
  """Sizes, shapes and class names (the same on every process)."""
  if dataset.in_memory:
    image_shape = tuple(int(d) for d in dataset.head(TRAIN, 1)['image'].shape[1:])
  else:
    train = dataset.source(TRAIN)
    image_shape = tuple(int(d) for d in train.element_spec['image'].shape)
  return DatasetInfo(
      name=dataset.name,
      num_classes=len(dataset.class_names),
      class_names=dataset.class_names,
      image_shape=image_shape,
      num_train=dataset.num_examples(TRAIN),
      num_validation=dataset.num_examples(VALIDATION),
      num_eval=dataset.num_examples(TEST))


def fit_preprocessing(dataset: Dataset, info: DatasetInfo,
                      config: ml_collections.ConfigDict
                      ) -> preprocessing.Preprocessing:
  """config.preprocessing fitted on the whole training split (or its cache).

  Every process fits on the same examples, so all get the same transform
  whatever the topology.
  """
  if dataset.in_memory:
    images = dataset.arrays(TRAIN)[0]
    batches = (images[i:i + 1024] for i in range(0, len(images), 1024))
  else:
    batches = (b['image'] for b in dataset.numpy(
        dataset.source(TRAIN).batch(1024), dataset.stored_split(TRAIN)))
  # Only TFDS data is streamed, so in-memory data (digits, folders) is not
  # TFDS's: its fit goes to nin_jax's cache root, not TFDS's data_dir.
  return preprocessing.fit_cached(config, dataset.fingerprint(TRAIN), batches,
                                  info.image_shape[-1], dataset.pixel_max,
                                  tfds_data=not dataset.in_memory)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError for data settings that are wrong before any data
  is read (config_checks.validate calls it; jax.distributed is set up)."""
  if not config.dataset:
    raise errors.ConfigError('config.dataset is empty; name a TFDS dataset, '
                             "'digits' or 'folder:ROOT'.")
  if config.dataset == DIGITS:
    for name in (config.train_split, config.eval_split):
      unknown = _split_parts({name}) - set(DIGITS_SPLITS)
      if unknown:
        raise errors.ConfigError(
            f'The digits dataset has splits {DIGITS_SPLITS}, not '
            f'{sorted(unknown)[0]!r} (in {name!r}); pass '
            "--config.train_split=train and --config.eval_split=test.")
  if config.input_pipeline == 'streaming':
    num_data_shards(config, jax.process_count())  # Raises if they don't fit.


def num_data_shards(config: ml_collections.ConfigDict,
                    process_count: int) -> int:
  """How many shards the training split is cut into (config.data_shards).

  The order of training examples depends on this number, not on the number
  of processes, so runs on different topologies with the same data_shards
  see the same global batches. The device-resident path (device_input.py)
  draws from the whole split: one shard.
  """
  if config.input_pipeline == 'device':
    return 1
  shards = config.data_shards if config.data_shards > 0 else process_count
  if shards % process_count or config.batch_size % shards:
    raise errors.ConfigError(
        f'config.data_shards={shards} must be a multiple of the '
        f'{process_count} processes and divide config.batch_size='
        f'{config.batch_size}; pass e.g. --config.data_shards={process_count}.')
  return shards


def steps_per_epoch(info: DatasetInfo, config: ml_collections.ConfigDict,
                    process_count: int) -> int:
  """Global steps per epoch: every data shard yields that many full batches."""
  return full_batches(info.num_train, num_data_shards(config, process_count),
                      config.batch_size)


def full_batches(num_examples: int, shards: int, batch_size: int) -> int:
  """Global batches of `batch_size` when each of `shards` equal, contiguous
  shards of the examples gives batch_size / shards of each batch."""
  steps = (num_examples // shards) // (batch_size // shards)
  if steps == 0:
    raise errors.ConfigError(
        f'config.batch_size={batch_size} is larger than the '
        f'{num_examples} training examples allow; lower it.')
  return steps


# --- Preprocessing -------------------------------------------------------------


def _augment(image, seed, pad: int, flip: bool):
  """Random translation by zero-pad + crop, and random horizontal flip.

  Runs after preprocessing, so after standardization the padding is the mean
  colour (as in the paper, which translated whitened images).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
                  prep: preprocessing.Preprocessing,
                  config: ml_collections.ConfigDict, start_step: int = 0,
                  process_index: int = 0,
                  process_count: int = 1) -> Iterator[Batch]:
  """Endless training batches of this process, from global step `start_step`.

  The split is cut into `num_data_shards` contiguous shards; a global batch is
  the concatenation of one sub-batch per shard, and each process reads and
  yields only its own consecutive shards' sub-batches. Each shard's epoch is
  a permutation seeded by (seed, epoch, shard); incomplete last batches are
  dropped.
  """
  tf = tensorflow('The streaming input pipeline')
  shards = num_data_shards(config, process_count)
  per_process = shards // process_count
  shard_batch = config.batch_size // shards
  shard_size = info.num_train // shards
  epoch_steps = steps_per_epoch(info, config, process_count)
  start_epoch, start_offset = divmod(start_step, epoch_steps)
  pad, flip = config.augment_pad, config.augment_flip
  own = range(process_index * per_process, (process_index + 1) * per_process)
  sources = {j: dataset.source(TRAIN, j, shards,
                               drop_remainder=True).enumerate() for j in own}

  def shard_epoch(j: int, epoch: int):
    first = tf.constant(epoch * info.num_train + j * shard_size, tf.int64)

    def preprocess(index, example):
      seed = tf.stack([tf.constant(config.seed, tf.int64), first + index])
      image = _augment(prep.apply_tf(example['image']), seed, pad, flip)
      return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

    ds = sources[j].shuffle(
        min(config.shuffle_buffer, shard_size),
        seed=(config.seed * 1_000_003 + epoch) * 4099 + j,
        reshuffle_each_iteration=False)
    if epoch == start_epoch and start_offset:
      ds = ds.skip(start_offset * shard_batch)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(shard_batch, drop_remainder=True).take(epoch_steps)

  for epoch in itertools.count(start_epoch):
    ds = tf.data.Dataset.zip(tuple(shard_epoch(j, epoch) for j in own))
    ds = ds.map(lambda *parts: {k: tf.concat([p[k] for p in parts], 0)
                                for k in parts[0]})
    yield from dataset.numpy(ds.prefetch(tf.data.AUTOTUNE),
                             dataset.stored_split(TRAIN))


def _raw_eval_batches(dataset: Dataset, split: str, local_batch_size: int,
                      process_index: int, process_count: int,
                      prep: preprocessing.Preprocessing) -> Iterator[Batch]:
  """This process's examples of `split`, preprocessed, in batches (the last
  one may be short)."""
  if dataset.in_memory:
    images, labels = dataset.arrays(split, process_index, process_count)
    for i in range(0, len(labels), local_batch_size):
      rows = slice(i, i + local_batch_size)
      yield {'image': prep.apply_np(images[rows]),
             'label': labels[rows].astype(np.int32),
             'mask': np.ones(len(labels[rows]), np.float32)}
    return
  tf = tensorflow(f'TFDS dataset {dataset.name!r}')
  ds = dataset.source(split, process_index, process_count)
  ds = ds.batch(local_batch_size).map(
      lambda x: {'image': prep.apply_tf(x['image']),
                 'label': tf.cast(x['label'], tf.int32),
                 'mask': tf.ones_like(x['label'], tf.float32)},
      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  yield from dataset.numpy(ds, dataset.stored_split(split))


def eval_batches(dataset: Dataset, info: DatasetInfo,
                 prep: preprocessing.Preprocessing, local_batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 split: str = TEST) -> Iterator[Batch]:
  """This process's share of every example of `split`, exactly once.

  Batches have one fixed shape and every process yields the same number of
  them (collectives need that): short or missing batches are zero-padded,
  and `mask` is 1 for real examples only.
  """
  batches = _raw_eval_batches(dataset, split, local_batch_size, process_index,
                              process_count, prep)
  largest_shard = -(-dataset.num_examples(split) // process_count)
  count = -(-largest_shard // local_batch_size)  # The same on every process.
  shapes = {'image': (local_batch_size,) + info.image_shape,
            'label': (local_batch_size,), 'mask': (local_batch_size,)}
  dtypes = {'image': np.float32, 'label': np.int32, 'mask': np.float32}
  for _ in range(count):
    batch = next(batches, None)
    if batch is None:
      batch = {k: np.zeros((0,) + shapes[k][1:], dtypes[k]) for k in shapes}
    short = local_batch_size - batch['label'].shape[0]
    if short:
      batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
