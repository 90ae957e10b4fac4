"""Offline demo: a NiN on scikit-learn's bundled handwritten digits.

Run (no download needed; the 1,797 8x8 images ship inside scikit-learn):
  python -m nin_jax.main --workdir=/tmp/nin_digits --config=nin_jax/configs/digits.py

Split: fixed and stratified, 1,437 training and 360 test images
(`input_pipeline.DIGITS_TEST_SIZE`, seed 0); the split does not follow
config.seed.

The architecture is the CIFAR-10 NiN (three mlpconv blocks, max pool then
average pool, dropout 0.5, global average pooling of 10 class maps) at about a
third of its widths, so that it trains in well under a minute on 2 CPU
cores. On 8x8 inputs the maps go 8 -> 4 -> 2. AdamW is used instead of SGD:
on this tiny dataset it trains reliably, where SGD without BatchNorm often
stalls or lets the last ReLU die (see experiments/README.md).

Expect about 98% test accuracy in well under a minute on 2 CPU cores,
compilation included. The exact figure depends on the CPU in its last
digits (per-seed results, and the machines: experiments/README.md).
"""

from nin_jax.configs import default


def get_config():
  """The CIFAR-10 NiN, narrowed and adapted to tiny grey 8x8 digits."""
  config = default.get_config()
  config.dataset = 'digits'
  config.num_classes = 10
  config.augment_flip = False  # A mirrored digit is a different symbol.
  config.augment_pad = 1  # Translate by up to 1 of 8 pixels.
  config.shuffle_buffer = 2_000

  config.model.block_features = ((64, 48, 32), (64, 64, 64), (64, 64))

  config.optimizer = 'adamw'
  config.learning_rate = 2e-3
  config.weight_decay = 0.05  # Decoupled (AdamW), kernels only.
  config.lr_multipliers = ()
  config.model.class_bias_init = 0.0
  config.warmup_epochs = 2.0
  config.batch_size = 64
  config.eval_batch_size = 120
  config.num_epochs = 30

  config.log_every_steps = 22  # About once per epoch (22 steps).
  # Small steps gain from a compiled loop even on a CPU (measured:
  # experiments/README.md).
  config.steps_per_dispatch = 11
  return config
