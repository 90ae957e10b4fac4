"""A tiny NiN for smoke tests: seconds on a CPU, meaningless accuracy.

  python -m nin_jax.main --workdir=/tmp/nin_test --config=nin_jax/configs/test.py
"""

from nin_jax.configs import default


def get_config():
  """Same structure as the default, with test-only widths and a few steps."""
  config = default.get_config()
  config.dataset = 'digits'
  config.model.block_features = ((8, 6, 4), (8, 8, 8), (8, 8))
  config.augment_flip = False
  config.augment_pad = 1
  config.batch_size = 16
  config.eval_batch_size = 80
  config.num_epochs = 1
  config.num_train_steps = 4
  config.warmup_epochs = 0.0
  config.log_every_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  return config
