"""SVHN (cropped 32x32 digits) NiN, as in the paper's third table.

Run:
  python -m nin_jax.main --workdir=/tmp/nin_svhn --config=nin_jax/configs/svhn.py
Add the 531,131 'extra' images as the paper did:
  ... --config.train_split=train+extra

The paper reports 2.35% test error (train + extra, no augmentation, local
contrast normalization); not yet run by this project. 73,257 training
images: 572 steps per epoch at batch 128, so 50 epochs are 28.6k steps.
Horizontal flips are off: a mirrored digit is a different symbol.
"""

from nin_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'svhn_cropped'
  config.num_classes = 10
  config.augment_flip = False
  config.augment_pad = 2
  config.shuffle_buffer = 80_000
  config.num_epochs = 50
  config.warmup_epochs = 2.0
  return config
