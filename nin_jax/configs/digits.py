"""Offline demo: a NiN on scikit-learn's bundled handwritten digits.

Run (no download needed; the 1,797 8x8 images ship inside scikit-learn):
  python -m nin_jax.main --workdir=/tmp/nin_digits --config=nin_jax/configs/digits.py

Split: fixed and stratified, 1,437 training and 360 test images
(`input_pipeline.DIGITS_TEST_SIZE`, seed 0).
"""

from nin_jax.configs import default


def get_config():
  """The CIFAR-10 recipe, adapted to tiny grey 8x8 digit images."""
  config = default.get_config()
  config.dataset = 'digits'
  config.num_classes = 10
  config.augment_flip = False  # A flipped digit is a different symbol.
  config.augment_pad = 1
  config.shuffle_buffer = 2_000
  config.batch_size = 64
  config.eval_batch_size = 120
  config.num_epochs = 30
  config.warmup_epochs = 2.0
  config.log_every_steps = 22
  return config
