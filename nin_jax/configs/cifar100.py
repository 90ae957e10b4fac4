"""CIFAR-100 NiN: the CIFAR-10 recipe with 100 class maps.

Run:
  python -m nin_jax.main --workdir=/tmp/nin_cifar100 --config=nin_jax/configs/cifar100.py

984,356 parameters. The paper reports 35.68% test error (64.32% accuracy)
without augmentation and with GCN + ZCA whitening; this config keeps the
CIFAR-10 default's translation + flip augmentation and per-channel
standardization, so treat the paper's number as a reference point, not as this
config's measured result (not yet run by this project). Runtime is that of
CIFAR-10: the same images, sizes and step count.
"""

from nin_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar100'
  config.num_classes = 100
  return config
