"""Trains and evaluates a Network in Network.

  python -m nin_jax.main --workdir=/tmp/nin [--config=nin_jax/configs/NAME.py]
      [--config.FIELD=VALUE ...]

Running the same command again on the same workdir resumes from its latest
checkpoint. Everything below this file reads the config, never flags.
"""

import logging as std_logging
import os
import sys

# Before TensorFlow is imported anywhere: hide its C++ start-up banners.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from nin_jax import errors

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and the config.',
    required=True)
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Training configuration file.',
    lock_config=True)


class _QuietLibraries:
  """Drops the INFO chatter of Orbax and TensorFlow; their warnings still show."""

  def filter(self, record) -> bool:
    noisy = any(part in record.pathname for part in ('/orbax/', '/tensorflow'))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_logger().addFilter(_QuietLibraries())
  # Imported after flag parsing so that --help stays fast.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nin_jax import train  # pylint: disable=g-import-not-at-top

  # TensorFlow only feeds data; keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  logging.info('JAX %s on %s: process %d of %d, %d local / %d global devices.',
               jax.__version__, jax.default_backend(), jax.process_index(),
               jax.process_count(), jax.local_device_count(),
               jax.device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)  # The message is the whole story.
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
