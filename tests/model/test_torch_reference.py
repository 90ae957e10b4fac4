"""The seed's own PyTorch network, when PyTorch is installed (it is optional).

The seed builds NiN as one `nn.Sequential`; given its weights, the Flax model
must produce the same logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax.configs import default
from nin_jax.model import nin
from nin_jax.model.torch_reference import torch_nin
import numpy_reference

torch = pytest.importorskip('torch', reason='PyTorch is an optional extra')
nn = torch.nn


def test_flax_nin_equals_the_seed_pytorch_network():
  torch.manual_seed(0)
  net = torch_nin().eval()
  with torch.no_grad():  # Positive biases so that no class map is all zero.
    for module in net:
      if isinstance(module, nn.Conv2d):
        module.bias.uniform_(0.0, 0.1)
  convs = [m for m in net if isinstance(m, nn.Conv2d)]
  assert sum(p.numel() for p in net.parameters()) == 966_986
  weights = [(c.weight.detach().numpy(), c.bias.detach().numpy())
             for c in convs]
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(
      np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  model = nin.create_model(default.get_config())
  params = jax.tree.map(jnp.asarray, numpy_reference.to_flax_params(weights))
  logits = np.asarray(model.apply({'params': params}, images, train=False))
  assert np.abs(expected).max() > 0.01
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
