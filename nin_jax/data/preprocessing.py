"""Pixel preprocessing fitted on the training split.

Three choices (config.preprocessing):
  * 'standardize': per-channel mean and standard deviation (the default);
  * 'gcn_zca': the paper's global contrast normalization (each image's
    mean removed and its L2 norm set to config.gcn_scale, 55) followed by
    ZCA whitening with filter bias config.zca_filter_bias (0.1), as
    pylearn2 prepared CIFAR for maxout networks and NiN;
  * 'none': pixels divided by their maximum value, so they lie in [0, 1].

A fitted transform is a handful of arrays. The same arrays drive the
TensorFlow version (streaming input pipeline, evaluation) and the JAX version
(device-resident input pipeline), are cached (beside TFDS data, any other
data's in nin_jax's cache root) so a second run does not refit them, and are
recorded in the workdir so that a resumed run, evaluation and prediction
apply exactly what training applied.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Iterable
import zipfile

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files

# The choices of config.preprocessing, checked by config_checks.validate.
KINDS = ('standardize', 'gcn_zca', 'none')
# A per-image norm below this is left alone by GCN (a blank image).
GCN_MIN_NORM = 1e-8


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
  """y = (gcn(x) - shift) @ zca, or (x - shift) * scale without ZCA.

  shift and scale have one value per channel (standardize, none); with ZCA,
  shift is the (D,) mean of the GCN'd training images (D = H * W * C,
  flattened in HWC order) and zca the (D, D) whitening matrix.
  """
  kind: str
  shift: np.ndarray
  scale: np.ndarray
  zca: np.ndarray | None = None
  gcn_scale: float = 0.0
  zca_filter_bias: float = 0.0

  def settings(self) -> dict[str, object]:
    """What a config chose (compared on resume)."""
    return {'kind': self.kind, 'gcn_scale': self.gcn_scale,
            'zca_filter_bias': self.zca_filter_bias}

  def apply_tf(self, images):
    """Images (..., H, W, C) of any dtype -> float32, in TensorFlow (the
    streaming input pipeline and TFDS evaluation)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    x = tf.cast(images, tf.float32)
    if self.zca is None:
      return (x - self.shift) * self.scale
    shape = tf.shape(x)
    flat = tf.reshape(x, [-1, self.zca.shape[0]])
    flat = _gcn_tf(flat, self.gcn_scale)
    flat = tf.matmul(flat - self.shift, self.zca)
    return tf.reshape(flat, shape)

  def apply_np(self, images: np.ndarray) -> np.ndarray:
    """The same transform in numpy (evaluation of in-memory datasets)."""
    x = np.asarray(images).astype(np.float32)
    if self.zca is None:
      return (x - self.shift) * self.scale
    flat = x.reshape(-1, self.zca.shape[0])
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.sum(flat * flat, axis=1, keepdims=True))
    flat = flat * (np.float32(self.gcn_scale)
                   / np.where(norm < GCN_MIN_NORM, np.float32(1), norm))
    return ((flat - self.shift) @ self.zca).reshape(x.shape)

  def apply_jax(self, images: jax.Array) -> jax.Array:
    """The same transform in JAX, for compiled code."""
    x = images.astype(jnp.float32)
    if self.zca is None:
      return (x - self.shift) * self.scale
    flat = x.reshape(-1, self.zca.shape[0])
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
    flat = flat * (self.gcn_scale / jnp.where(norm < GCN_MIN_NORM, 1.0, norm))
    # Full float32 precision: TPUs and GPUs would otherwise use bfloat16/TF32.
    flat = jnp.matmul(flat - self.shift, self.zca,
                      precision=jax.lax.Precision.HIGHEST)
    return flat.reshape(x.shape)

  def save(self, path: str) -> None:
    """Writes the arrays atomically (a reader never sees half a file)."""
    arrays = {'shift': self.shift, 'scale': self.scale,
              'settings': np.array(json.dumps(self.settings()))}
    if self.zca is not None:
      arrays['zca'] = self.zca
    storage.write_npz_atomically(path, **arrays)

  @classmethod
  def load(cls, path: str) -> 'Preprocessing':
    """The transform `save` wrote to `path`.

    Anything else there (garbage, a truncated file, other arrays) is a
    WorkdirError (an OSError, as the cache's reader expects) saying so: numpy
    would call garbage 'pickled data' and a truncated file a BadZipFile.
    """
    try:
      source = (io.BytesIO(storage.read_bytes(path))
                if storage.is_remote(path) else path)
      with np.load(source, allow_pickle=False) as data:
        settings = json.loads(str(data['settings']))
        loaded = cls(shift=data['shift'], scale=data['scale'],
                     zca=data['zca'] if 'zca' in data else None, **settings)
      if (loaded.kind not in KINDS or loaded.shift.ndim != 1
          or loaded.scale.ndim != 1):
        raise ValueError(f'unexpected contents (kind {loaded.kind!r})')
      return loaded
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # zipfile, numpy and json raise many kinds for a damaged file.
      if isinstance(e, ValueError) and 'pickle' in str(e):
        reason = 'not a .npz archive'
      elif isinstance(e, zipfile.BadZipFile):
        reason = f'a damaged or truncated .npz archive: {e}'
      elif isinstance(e, KeyError):
        reason = f'no {e} array in it'
      else:
        reason = f'{type(e).__name__}: {" ".join(str(e).split())[:200]}'
      raise errors.WorkdirError(
          f'{path} is not a preprocessing file nin_jax wrote ({reason}).'
          ) from None


def _gcn_tf(flat, scale: float):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  flat = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
  norm = tf.sqrt(tf.reduce_sum(flat * flat, axis=1, keepdims=True))
  return flat * (scale / tf.where(norm < GCN_MIN_NORM, 1.0, norm))


def global_contrast_normalize(flat: np.ndarray, scale: float) -> np.ndarray:
  """Each row minus its mean, rescaled to L2 norm `scale` (float64)."""
  flat = flat.astype(np.float64)
  flat -= flat.mean(axis=1, keepdims=True)
  norm = np.sqrt(np.sum(flat * flat, axis=1, keepdims=True))
  return flat * (scale / np.where(norm < GCN_MIN_NORM, 1.0, norm))


def _fit_standardize(batches: Iterable[np.ndarray]) -> Preprocessing:
  total = total_sq = 0.0
  count = 0
  for images in batches:
    pixels = images.astype(np.float64).reshape(-1, images.shape[-1])
    total = total + pixels.sum(0)
    total_sq = total_sq + (pixels ** 2).sum(0)
    count += pixels.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
  return Preprocessing('standardize', mean.astype(np.float32),
                       (1.0 / np.maximum(std, 1e-6)).astype(np.float32))


def _fit_gcn_zca(batches: Iterable[np.ndarray], gcn_scale: float,
                 filter_bias: float) -> Preprocessing:
  """ZCA of the GCN'd images: P = V diag(1 / sqrt(eig + bias)) V^T.

  The covariance is accumulated in float64 a batch at a time, so a dataset
  never needs to be held in memory as floats.
  """
  total = gram = 0.0
  count = 0
  for images in batches:
    flat = global_contrast_normalize(images.reshape(len(images), -1),
                                     gcn_scale)
    total = total + flat.sum(0)
    gram = gram + flat.T @ flat
    count += len(flat)
  mean = total / count
  covariance = gram / count - np.outer(mean, mean)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  eigenvalues = np.maximum(eigenvalues, 0.0)  # Round-off can go below 0.
  zca = (eigenvectors / np.sqrt(eigenvalues + filter_bias)) @ eigenvectors.T
  channels = images.shape[-1]
  return Preprocessing('gcn_zca', mean.astype(np.float32),
                       np.ones(channels, np.float32), zca.astype(np.float32),
                       gcn_scale=float(gcn_scale),
                       zca_filter_bias=float(filter_bias))


def fit(kind: str, batches: Iterable[np.ndarray], num_channels: int,
        pixel_max: float, gcn_scale: float = 55.0,
        zca_filter_bias: float = 0.1) -> Preprocessing:
  """Fits a transform (`kind`, one of KINDS) to training images given as
  uint8 (B, H, W, C) batches."""
  if kind == 'standardize':
    return _fit_standardize(batches)
  if kind == 'gcn_zca':
    return _fit_gcn_zca(batches, gcn_scale, zca_filter_bias)
  return Preprocessing('none', np.zeros(num_channels, np.float32),
                       np.full(num_channels, 1.0 / pixel_max, np.float32))


def fits_directory(config: ml_collections.ConfigDict, tfds_data: bool) -> str:
  """Where fitted transforms are cached: a TFDS dataset's beside its data
  (they go when it goes), any other's in nin_jax's cache root, as TFDS's
  folder is no place for data that is not TFDS's."""
  data_root = workdir_files.data_root(config)
  # TFDS reads a gs:// data_dir itself; the fit, written with local file
  # calls, then goes to the cache root.
  root = (data_root if tfds_data and not storage.is_remote(data_root)
          else workdir_files.cache_root(config))
  return os.path.join(root, 'nin_jax_preprocessing')


def config_settings(config: ml_collections.ConfigDict) -> dict[str, object]:
  """What `config` asks for, in the form of Preprocessing.settings()."""
  gcn_zca = config.preprocessing == 'gcn_zca'
  return {'kind': config.preprocessing,
          'gcn_scale': float(config.gcn_scale) if gcn_zca else 0.0,
          'zca_filter_bias': float(config.zca_filter_bias) if gcn_zca else 0.0}


def cache_key(fingerprint: str, config: ml_collections.ConfigDict) -> str:
  """Names the cached fit by the training data and the settings."""
  text = json.dumps([fingerprint, config_settings(config)], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_cached(config: ml_collections.ConfigDict, fingerprint: str,
               batches: Iterable[np.ndarray], num_channels: int,
               pixel_max: float, tfds_data: bool = True) -> Preprocessing:
  """The fitted transform from the cache, or fitted now and cached.

  `fingerprint` identifies the training examples (dataset, version, range and
  a digest of some of their bytes), so mock or changed data never reuses a
  stale fit. `tfds_data`: whether the data is TFDS's (see fits_directory). An
  unwritable cache only costs a refit next time; every process of a run
  fits and writes the same file atomically. Trusts `config`:
  config_checks.validate has checked it.
  """
  if config.preprocessing == 'none':
    return fit('none', (), num_channels, pixel_max)
  # A file name from the dataset's name ('folder:/data/x' -> 'folder_data_x').
  dataset = re.sub(r'[^A-Za-z0-9_.-]+', '_', config.dataset)
  name = f'{dataset}-{config.preprocessing}-{cache_key(fingerprint, config)}.npz'
  path = os.path.join(fits_directory(config, tfds_data), name)

  def fit_now() -> Preprocessing:
    logging.info('Fitting %s preprocessing on the training split ...',
                 config.preprocessing)
    return fit(config.preprocessing, batches, num_channels, pixel_max,
               config.gcn_scale, config.zca_filter_bias)

  return workdir_files.cached(
      path, f'{config.preprocessing} statistics', fit_now,
      read=Preprocessing.load, write=lambda file, fitted: fitted.save(file),
      # TFDS data's fits go where the data is, not to the cache root.
      hint='' if tfds_data else workdir_files.RELOCATE_CACHE)


def record(preprocessing: Preprocessing,
           workdir: workdir_files.Workdir) -> None:
  preprocessing.save(workdir.path(workdir_files.PREPROCESSING))


def recorded(workdir: workdir_files.Workdir) -> Preprocessing | None:
  """The transform a run in `workdir` trained with, if there was one."""
  path = workdir.path(workdir_files.PREPROCESSING)
  return Preprocessing.load(path) if storage.exists(path) else None


def check_matches(preprocessing: Preprocessing,
                  config: ml_collections.ConfigDict) -> None:
  """A resumed run must keep its preprocessing: the weights depend on it."""
  wanted = config_settings(config)
  if preprocessing.settings() != wanted:
    raise errors.ConfigError(
        f'This workdir was trained with preprocessing {preprocessing.settings()}'
        f' but the config asks for {wanted}. Keep the original preprocessing '
        'settings, or start a new --workdir.')
