"""MNIST NiN: 28x28 grey digits, as in the paper's fourth table.

Run:
  python -m nin_jax.main --workdir=/tmp/nin_mnist --config=nin_jax/configs/mnist.py

The model adapts to the input: maps go 28 -> 14 -> 7 and the first
convolution takes 1 channel (957,386 parameters). The paper reports 0.47%
test error without augmentation; not yet run by this project. 60,000
training images: 468 steps per epoch at batch 128, 50 epochs are 23.4k
steps. Flips are off (a mirrored digit is a different symbol); translation
is 2 pixels.
"""

from nin_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'mnist'
  config.num_classes = 10
  config.augment_flip = False
  config.augment_pad = 2
  config.shuffle_buffer = 60_000
  config.num_epochs = 50
  config.warmup_epochs = 2.0
  return config
