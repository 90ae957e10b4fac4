"""The usual PyTorch CIFAR-10 NiN (widths 192-160-96): nin_jax's reference.

Used by the equivalence test and the benchmark; PyTorch is an optional
dependency (`pip install torch`), imported only when this is called.
"""


def torch_nin(num_classes: int = 10):
  """The CIFAR-10 NiN as one `torch.nn.Sequential`, layer for layer."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  return nn.Sequential(
      nn.Conv2d(3, 192, kernel_size=5, padding=2), nn.ReLU(),
      nn.Conv2d(192, 160, kernel_size=1), nn.ReLU(),
      nn.Conv2d(160, 96, kernel_size=1), nn.ReLU(),
      nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
      nn.Dropout(0.5),
      nn.Conv2d(96, 192, kernel_size=5, padding=2), nn.ReLU(),
      nn.Conv2d(192, 192, kernel_size=1), nn.ReLU(),
      nn.Conv2d(192, 192, kernel_size=1), nn.ReLU(),
      nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
      nn.Dropout(0.5),
      nn.Conv2d(192, 192, kernel_size=3, padding=1), nn.ReLU(),
      nn.Conv2d(192, 192, kernel_size=1), nn.ReLU(),
      nn.Conv2d(192, num_classes, kernel_size=1), nn.ReLU(),
      nn.AvgPool2d(kernel_size=8, stride=1),
      nn.Flatten(),
  )
