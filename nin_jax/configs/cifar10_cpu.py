"""CIFAR-10 in under an hour on a 2-core CPU: a half-width NiN with BatchNorm.

Run (ROOT holds train/<class>/<image> and test/<class>/<image>):
  python -m nin_jax.main --workdir=/tmp/nin_cifar10_cpu \
      --config=nin_jax/configs/cifar10_cpu.py --config.dataset=folder:ROOT

This is NOT the paper's model: every layer is half as wide (246,900
parameters instead of 966,986) and BatchNorm follows every convolution,
chosen for what trains best in a CPU hour: at half width it trains about
2.5 times as fast as at full width, and on short schedules the extra epochs
are worth more than the width.

Measured on this project's 2-core x86-64 CPU (experiments/README.md,
"CIFAR-10 (JPEG) on a 2-core CPU", with the throughputs and wall times):
85.40% test accuracy on CIFAR-10 (JPEG) after 20 epochs, seed 0, in under
an hour (published as nin_jax/pretrained/cifar10). With dropout 0.3 and 22
epochs the same net reached 84.77%.

The recipe: SGD with Nesterov momentum 0.9 at peak lr 0.1 (BatchNorm keeps
the last ReLU alive, so neither the Caffe multipliers nor the class-map bias
of default.py are needed), 2 warm-up epochs then cosine decay to 0 over 20
epochs, weight decay 5e-4, dropout 0.1 (0.5 and 0.3 leave a short run
underfitting),
translation by 4 pixels and horizontal flips. Per-channel standardization.
"""

from nin_jax.configs import default


def get_config():
  """default.py at half width, with BatchNorm and a 20-epoch schedule."""
  config = default.get_config()
  config.model.block_features = ((96, 80, 48), (96, 96, 96), (96, 96))
  config.model.use_batchnorm = True
  config.model.dropout_rate = 0.1
  config.model.class_bias_init = 0.0

  config.learning_rate = 0.1
  config.lr_multipliers = ()
  config.warmup_epochs = 2.0
  config.num_epochs = 20
  return config
