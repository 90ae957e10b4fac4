"""Shared fixtures: tiny configs so every compile stays small."""

import os
import tempfile

# Hide TensorFlow's C++ banners; must be set before TensorFlow is imported.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Fits of TFDS data are cached beside it, those of other data (digits,
# folders) and decoded folders in nin_jax's cache root: keep the tests'
# caches (some of mock data) out of the user's ~/tensorflow_datasets and
# ~/.cache/nin_jax. Test processes inherit both.
os.environ['TFDS_DATA_DIR'] = tempfile.mkdtemp(prefix='nin_jax_tests_tfds_')
os.environ['NIN_JAX_CACHE_DIR'] = tempfile.mkdtemp(
    prefix='nin_jax_tests_cache_')
# Many tests start `python -m nin_jax.main` processes that compile the same
# tiny programs: a persistent compilation cache shared by all of them (and
# this process) halves their run time. Cached programs compute the same bits.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='nin_jax_tests_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# And most of them run those programs for a few steps: XLA's backend
# optimizations (LLVM's) cost more time than they save, about half of a test
# run's CPU. Programs compute the same results; speed is measured elsewhere
# (experiments/benchmarks), with XLA's defaults.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_backend_optimization_level=0').strip()

import pytest  # pylint: disable=g-import-not-at-top

from nin_jax.configs import test as test_config  # pylint: disable=g-import-not-at-top


@pytest.fixture(autouse=True)
def _absl_level_unset():
  """Each test starts with absl's logger at the level it has on import
  (unset: the root logger's, which caplog sets). Commands run in-process,
  in tests or in module-scoped fixtures, set absl's verbosity (to WARNING
  unless --verbosity is given), and a later test reading INFO logs in the
  same process would otherwise see nothing."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_logger().setLevel(0)  # logging.NOTSET
  yield


@pytest.fixture
def tiny_config():
  """The smoke-test config: digits, test-only widths, 4 steps."""
  return test_config.get_config()


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """A finished tiny digits run (4 steps), shared by the inference tests."""
  from nin_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(test_config.get_config(), workdir)
  return workdir


# The files that take longest, in the order xdist should start them: with
# `--dist loadfile`, files go to the workers in collection order, and a long
# file collected last would run on one worker while the others sit idle.
SLOWEST_FILES = ('training/test_parallel.py', 'training/test_resume.py',
                 'files/test_remote_workdir.py', 'commands/test_console.py',
                 'training/test_train.py', 'test_slurm.py',
                 'commands/test_export.py', 'commands/test_pretrained.py',
                 'test_without_tensorflow.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.nodeid.split('::')[0].removeprefix('tests/')
    return (SLOWEST_FILES.index(path) if path in SLOWEST_FILES
            else len(SLOWEST_FILES))
  items.sort(key=rank)  # Stable: each file's tests keep their order.
