"""Preprocessing: GCN + ZCA against numpy, TF vs JAX, caching, recording."""

import re

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import workdir_files
from nin_jax.training import config_checks


def _images(n=300, shape=(4, 4, 3), seed=0):
  """Correlated uint8 images: a few smooth patterns plus noise."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(5,) + shape)
  mix = rng.normal(size=(n, 5))
  x = 128 + 30 * np.tensordot(mix, patterns, 1) + 5 * rng.normal(size=(n,) + shape)
  return np.clip(x, 0, 255).astype(np.uint8)


def _config(kind, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='toy', data_dir=None, preprocessing=kind, gcn_scale=55.0,
      zca_filter_bias=0.1))
  config.update(overrides)
  return config


def _direct_gcn_zca(train, test, scale, bias):
  """pylearn2's recipe written out: GCN per image, ZCA from the covariance."""
  def gcn(x):
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return scale * x / np.sqrt((x ** 2).sum(axis=1, keepdims=True))
  g = gcn(train)
  mean = g.mean(axis=0)
  covariance = np.cov(g, rowvar=False, bias=True)
  eigenvalues, vectors = np.linalg.eigh(covariance)
  whitening = vectors @ np.diag(1 / np.sqrt(eigenvalues + bias)) @ vectors.T
  return (gcn(test) - mean) @ whitening, covariance


def test_gcn_zca_matches_a_direct_numpy_computation():
  train, test = _images(), _images(n=20, seed=1)
  fitted = preprocessing.fit('gcn_zca', [train[:128], train[128:]], 3, 255,
                             gcn_scale=55.0, zca_filter_bias=0.1)
  expected, _ = _direct_gcn_zca(train, test, 55.0, 0.1)
  expected = expected.reshape(test.shape)
  np.testing.assert_allclose(fitted.apply_tf(tf.constant(test)).numpy(),
                             expected, atol=2e-3, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(fitted.apply_jax(test)), expected,
                             atol=2e-3, rtol=1e-3)


def test_whitened_training_data_has_identity_covariance_up_to_the_bias():
  train = _images(n=500)
  bias = 0.1
  fitted = preprocessing.fit('gcn_zca', [train], 3, 255, 55.0, bias)
  white = np.asarray(fitted.apply_jax(train), np.float64).reshape(len(train), -1)
  _, covariance = _direct_gcn_zca(train, train, 55.0, bias)
  eigenvalues, vectors = np.linalg.eigh(covariance)
  # ZCA maps covariance C = V E V^T to V E / (E + bias) V^T.
  expected = vectors @ np.diag(eigenvalues / (eigenvalues + bias)) @ vectors.T
  np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), expected,
                             atol=2e-3)
  # Directions with variance well above the bias come out with variance ~1.
  strong = eigenvalues > 100 * bias
  assert strong.sum() >= 5
  variances = np.diag(vectors.T @ np.cov(white, rowvar=False, bias=True)
                      @ vectors)
  np.testing.assert_allclose(variances[strong], 1.0, atol=0.011)
  np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-3)


@pytest.mark.parametrize('kind', preprocessing.KINDS)
def test_tensorflow_and_jax_apply_the_same_transform(kind):
  images = _images(n=64)
  fitted = preprocessing.fit(kind, [images], 3, 255)
  np.testing.assert_allclose(
      np.asarray(fitted.apply_jax(images[:7])),
      fitted.apply_tf(tf.constant(images[:7])).numpy(), atol=1e-4, rtol=1e-5)
  one = fitted.apply_tf(tf.constant(images[0])).numpy()  # (H, W, C) alone.
  np.testing.assert_allclose(one, np.asarray(fitted.apply_jax(images[:1]))[0],
                             atol=1e-4, rtol=1e-5)


def test_standardize_and_none():
  images = _images()
  fitted = preprocessing.fit('standardize', [images[:100], images[100:]], 3, 255)
  out = np.asarray(fitted.apply_jax(images)).reshape(-1, 3)
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(0), 1.0, atol=1e-4)
  plain = preprocessing.fit('none', [], 3, 255)
  out = np.asarray(plain.apply_jax(images))
  np.testing.assert_allclose(out, images / 255, rtol=1e-6)
  assert out.min() >= 0 and out.max() <= 1


def test_fit_is_cached_beside_the_data_and_reused(tmp_path):
  config = _config('gcn_zca', data_dir=str(tmp_path))
  images = _images()
  first = preprocessing.fit_cached(config, 'toy:1:train[0:300]', [images], 3, 255)

  def must_not_be_read():
    raise AssertionError('the cached fit should have been used')
    yield  # pylint: disable=unreachable

  again = preprocessing.fit_cached(config, 'toy:1:train[0:300]',
                                   must_not_be_read(), 3, 255)
  np.testing.assert_array_equal(again.zca, first.zca)
  cached = list((tmp_path / 'nin_jax_preprocessing').iterdir())
  assert len(cached) == 1 and cached[0].name.startswith('toy-gcn_zca-')
  # Other data (or other settings) gets its own fit.
  other = preprocessing.fit_cached(config, 'toy:1:train[0:299]',
                                   [images[:299]], 3, 255)
  assert not np.array_equal(other.zca, first.zca)
  config.zca_filter_bias = 0.01
  preprocessing.fit_cached(config, 'toy:1:train[0:300]', [images], 3, 255)
  assert len(list((tmp_path / 'nin_jax_preprocessing').iterdir())) == 3


def test_workdir_record_round_trips_and_guards_resumes(tmp_path):
  fitted = preprocessing.fit('gcn_zca', [_images()], 3, 255)
  workdir = workdir_files.Workdir(str(tmp_path))
  assert preprocessing.recorded(workdir) is None
  preprocessing.record(fitted, workdir)
  loaded = preprocessing.recorded(workdir)
  for name in ('shift', 'scale', 'zca'):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
  assert loaded.settings() == fitted.settings()
  preprocessing.check_matches(loaded, _config('gcn_zca'))
  with pytest.raises(errors.ConfigError, match='new --workdir'):
    preprocessing.check_matches(loaded, _config('standardize'))
  with pytest.raises(errors.ConfigError, match='new --workdir'):
    preprocessing.check_matches(loaded, _config('gcn_zca', gcn_scale=1.0))


@pytest.mark.parametrize('overrides,message', [
    (dict(preprocessing='whiten'), "config.preprocessing='whiten' is not one "
     "of ('standardize', 'gcn_zca', 'none')"),
    (dict(preprocessing='gcn_zca', zca_filter_bias=0.0),
     'config.zca_filter_bias=0.0 must be a positive number (the paper: 0.1)'),
    (dict(gcn_scale=-55.0), 'config.gcn_scale=-55.0 must be a positive'),
])
def test_bad_settings_are_one_line_from_validate(tiny_config, overrides,
                                                 message):
  tiny_config.update(overrides)
  with pytest.raises(errors.ConfigError, match=re.escape(message)) as raised:
    config_checks.validate(tiny_config)
  assert '\n' not in str(raised.value)
