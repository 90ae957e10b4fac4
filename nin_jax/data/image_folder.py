"""Datasets from a folder of images: ROOT/<split>/<class>/<image>.

The layout torchvision's ImageFolder, Keras' image_dataset_from_directory
and TFDS's ImageFolder read. `--config.dataset=folder:ROOT` trains on it:

  * splits are ROOT's subfolders: `train` (required), the evaluation split
    (`test` by default) and an optional `validation`;
  * classes are the sorted names of each split's subfolders (every split
    must have the same ones); labels follow that order;
  * every file Pillow can read (JPEG, PNG, BMP, GIF, WebP, ...) is decoded
    once into uint8 arrays, converted to config.image_channels and resized
    to config.image_size when asked; files of other types are skipped and
    counted;
  * each split is shuffled once with a fixed seed, so that the validation
    tail of `train` and each streaming data shard hold every class (a folder
    lists its files class by class);
  * the decoded arrays are cached in <cache root>/nin_jax_folders/ (see
    workdir_files.cache_root; never in TFDS's data_dir), keyed by
    the file list (names, sizes, modification times) and the settings, so a
    second run starts in seconds.

Everything here needs numpy and Pillow only: no TensorFlow.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys

from absl import logging
import ml_collections
import numpy as np

from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files

PREFIX = 'folder:'
TRAIN_FOLDER = 'train'
VALIDATION_FOLDER = 'validation'
# The split order does not follow config.seed, so runs with different seeds
# hold out the same validation examples (as for the digits).
SHUFFLE_SEED = 0
# Bumped when the cache's content changes meaning.
_CACHE_FORMAT = 1
# Pillow modes that are grey by construction (config.image_channels = 0;
# other images count as grey when their R, G and B are equal).
_GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


def is_folder(dataset: str) -> bool:
  return dataset.startswith(PREFIX)


def root_of(dataset: str) -> str:
  """The absolute folder of a 'folder:ROOT' dataset name."""
  storage.check_local(
      dataset[len(PREFIX):], '--config.dataset=folder:',
      'its images are read with local file calls; copy a bucket\'s first, '
      'e.g. gcloud storage rsync -r gs://BUCKET/DIR DIR')
  return os.path.abspath(os.path.expanduser(dataset[len(PREFIX):]))


def dataset_name(root: str) -> str:
  """'folder:ROOT' with ROOT absolute, as a run records it."""
  return PREFIX + root_of(PREFIX + root)


def image_extensions() -> frozenset[str]:
  """The file name extensions (".png", ...) of the formats Pillow reads."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return frozenset(Image.registered_extensions())


@dataclasses.dataclass(frozen=True)
class Listing:
  """A split's image files in label order, and what was skipped."""
  class_names: tuple[str, ...]
  paths: tuple[str, ...]  # Relative to ROOT/<split>.
  labels: np.ndarray
  skipped: int


def list_split(root: str, split: str) -> Listing:
  """The image files of ROOT/<split>/<class>/, or one clear error."""
  directory = os.path.join(root, split)
  extensions = image_extensions()
  class_names = tuple(sorted(
      name for name in os.listdir(directory)
      if not name.startswith('.')
      and os.path.isdir(os.path.join(directory, name))))
  if not class_names:
    raise errors.DatasetUnavailableError(
        f'{directory} has no class folders: put each class\'s images in '
        f'{directory}/<class name>/.')
  paths, labels, skipped = [], [], 0
  for label, name in enumerate(class_names):
    count = 0
    for dirpath, dirnames, filenames in os.walk(os.path.join(directory, name)):
      dirnames.sort()
      for filename in sorted(filenames):
        if filename.startswith('.'):
          continue
        if os.path.splitext(filename)[1].lower() not in extensions:
          skipped += 1
          continue
        paths.append(os.path.relpath(os.path.join(dirpath, filename),
                                     directory))
        labels.append(label)
        count += 1
    if not count:
      raise errors.DatasetUnavailableError(
          f'Class folder {os.path.join(directory, name)} holds no images: '
          'add images or remove the folder.')
  return Listing(class_names, tuple(paths), np.asarray(labels, np.int32),
                 skipped)


def splits_of(root: str) -> list[str]:
  """ROOT's split folders, checking that `train` is one of them."""
  if not os.path.isdir(root):
    raise errors.DatasetUnavailableError(
        f'No folder {root} for --config.dataset={PREFIX}{root}: pass the '
        f'folder that holds {TRAIN_FOLDER}/<class>/<image> (and test/...).')
  splits = sorted(name for name in os.listdir(root)
                  if os.path.isdir(os.path.join(root, name))
                  and not name.startswith('.'))
  if TRAIN_FOLDER not in splits:
    raise errors.DatasetUnavailableError(
        f'{root} has no {TRAIN_FOLDER}/ folder (it has: '
        f'{", ".join(splits) or "no folders"}). Lay the images out as '
        f'{root}/{TRAIN_FOLDER}/<class>/<image> and {root}/test/<class>/<image>.')
  return splits


def _decode(path: str, channels: int, size: int) -> np.ndarray:
  """One image file as uint8 (H, W, C); C is 1 or 3 (0: as stored)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()
      wanted = channels or (1 if image.mode in _GREY_MODES else 3)
      image = image.convert('L' if wanted == 1 else 'RGB')
      if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.DatasetUnavailableError(
        f'Cannot read image {path}: {e}. Replace or delete the file.') from None
  array = np.asarray(image, np.uint8)
  if array.ndim == 2:
    return array[..., None]
  if not channels and np.array_equal(array[..., 0], array[..., 1]) and (
      np.array_equal(array[..., 0], array[..., 2])):
    # A grey image stored in colour (a palette GIF, say): as Pillow's 'L'.
    return array[..., :1]
  return array


def _as_colour(images: np.ndarray) -> np.ndarray:
  """Grey images (..., 1) as RGB, each grey level copied to R, G and B."""
  return np.repeat(images, 3, -1) if images.shape[-1] == 1 else images


class _Progress:
  """A progress bar on stderr (tqdm), or nothing when it is unavailable."""

  def __init__(self, total: int, description: str):
    try:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, desc=description, unit='img',
                            file=sys.stderr, mininterval=1.0)
    except ImportError:
      self._bar = None

  def update(self, count: int) -> None:
    if self._bar is not None:
      self._bar.update(count)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def decode_all(directory: str, paths: tuple[str, ...], channels: int,
               size: int) -> np.ndarray:
  """Decodes every file (threads: Pillow decodes without the GIL).

  Images of different sizes without `size` are an error naming one of each.
  """
  full = [os.path.join(directory, p) for p in paths]
  progress = _Progress(len(full), f'Decoding {directory}')
  images = []
  try:
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for image in pool.map(lambda p: _decode(p, channels, size), full,
                            chunksize=64):
        images.append(image)
        progress.update(1)
  finally:
    progress.close()
  if channels == 0 and len({im.shape[-1] for im in images}) > 1:
    # Grey and colour files mixed: colour wins (grey copied to R, G, B;
    # --config.image_channels=1 makes them all grey instead).
    images = [_as_colour(im) for im in images]
  first_of_shape = {}
  for path, image in zip(full, images):
    first_of_shape.setdefault(image.shape[:2], path)
  if len(first_of_shape) > 1:
    examples = '; '.join(f'{path} is {w}x{h}' for (h, w), path in
                         list(first_of_shape.items())[:4])
    raise errors.DatasetUnavailableError(
        f'The images in {directory} have {len(first_of_shape)} different '
        f'sizes ({examples}). Pass --config.image_size=N to resize them all '
        'to NxN.')
  return np.stack(images)


def _cache_key(directory: str, listing: Listing, channels: int,
               size: int) -> str:
  """Names a split's decoded arrays by its files and the decoding settings."""
  digest = hashlib.sha256(json.dumps(
      [_CACHE_FORMAT, SHUFFLE_SEED, channels, size, listing.class_names]
  ).encode())
  for path, label in zip(listing.paths, listing.labels):
    stat = os.stat(os.path.join(directory, path))
    digest.update(f'{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n'
                  .encode())
  return digest.hexdigest()[:16]


def cache_dir(config: ml_collections.ConfigDict) -> str:
  """Where decoded splits are cached: in nin_jax's cache root, as a folder
  of images is no TFDS data."""
  return os.path.join(workdir_files.cache_root(config), 'nin_jax_folders')


def load_split(root: str, split: str, listing: Listing,
               config: ml_collections.ConfigDict
               ) -> tuple[np.ndarray, np.ndarray]:
  """A split's (images, labels), shuffled once; from the cache if it can."""
  directory = os.path.join(root, split)
  channels, size = config.image_channels, config.image_size
  key = _cache_key(directory, listing, channels, size)
  name = f'{os.path.basename(root) or "root"}-{split}-{key}.npz'
  path = os.path.join(cache_dir(config), name)

  def decode() -> dict[str, np.ndarray]:
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(listing.paths))
    paths = tuple(listing.paths[i] for i in order)
    logging.info('Decoding the %d images of %s (cached afterwards in %s) ...',
                 len(paths), directory, os.path.dirname(path))
    return {'images': decode_all(directory, paths, channels, size),
            'labels': listing.labels[order], 'paths': np.asarray(paths)}

  # The file also keeps each image's path, which loading does not need.
  arrays = workdir_files.cached(
      path, 'decoded images', decode,
      read=lambda file: workdir_files.read_npz(file, ('images', 'labels')))
  return arrays['images'], arrays['labels']


@dataclasses.dataclass(frozen=True)
class FolderData:
  """Every split of a folder dataset, decoded: {split: (images, labels)}."""
  root: str
  class_names: tuple[str, ...]
  arrays: dict[str, tuple[np.ndarray, np.ndarray]]


def load(config: ml_collections.ConfigDict,
         wanted: set[str]) -> FolderData:
  """Reads the wanted splits (plus `validation` if there is one)."""
  root = root_of(config.dataset)
  present = splits_of(root)
  missing = sorted(set(wanted) - set(present))
  if missing:
    raise errors.ConfigError(
        f'{root} has no {"/, ".join(missing)}/ folder (it has '
        f'{", ".join(present)}). Add it, or pick another split with '
        '--config.eval_split=NAME.')
  names = sorted(set(wanted) | ({VALIDATION_FOLDER} & set(present)))
  listings = {split: list_split(root, split) for split in names}
  train_classes = listings[TRAIN_FOLDER].class_names
  if len(train_classes) < 2:
    raise errors.DatasetUnavailableError(
        f'{os.path.join(root, TRAIN_FOLDER)} has a single class '
        f'({train_classes[0]}): a classifier needs at least two class '
        'folders.')
  for split, listing in listings.items():
    if listing.class_names != train_classes:
      only_train = sorted(set(train_classes) - set(listing.class_names))
      only_here = sorted(set(listing.class_names) - set(train_classes))
      raise errors.DatasetUnavailableError(
          f'The class folders of {os.path.join(root, split)} differ from '
          f'those of {os.path.join(root, TRAIN_FOLDER)}: only in '
          f'{TRAIN_FOLDER}: {only_train or "none"}; only in {split}: '
          f'{only_here or "none"}. Every split needs the same class folders.')
  skipped = sum(listing.skipped for listing in listings.values())
  if skipped:
    logging.info('Skipped %d files under %s that are not images Pillow '
                 'reads (by their extension).', skipped, root)
  arrays = {split: load_split(root, split, listings[split], config)
            for split in names}
  if len({images.shape[-1] for images, _ in arrays.values()}) > 1:
    # A grey split beside a colour one: colour wins, as within a split.
    arrays = {split: (_as_colour(images), labels)
              for split, (images, labels) in arrays.items()}
  shapes = {split: images.shape[1:] for split, (images, _) in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise errors.DatasetUnavailableError(
        f'The splits of {root} hold images of different shapes '
        f'({", ".join(f"{s}: {shape}" for s, shape in shapes.items())}). '
        'Pass --config.image_size=N (and --config.image_channels=1 or 3).')
  return FolderData(root, train_classes, arrays)
