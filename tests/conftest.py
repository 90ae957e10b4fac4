"""Shared fixtures: tiny configs so every compile stays small."""

import os

# Hide TensorFlow's C++ banners; must be set before TensorFlow is imported.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

from nin_jax.configs import test as test_config  # pylint: disable=g-import-not-at-top


@pytest.fixture
def tiny_config():
  """The smoke-test config: digits, test-only widths, 4 steps."""
  return test_config.get_config()
