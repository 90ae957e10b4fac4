"""conv.conv: XLA's forward and input gradient, kernel gradient as matmuls;
Winograd for the wider 3x3 and 5x5 layers."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax.configs import test as test_config
from nin_jax.model import conv
from nin_jax.model import winograd
import model_gradients

winograd_conv = winograd.conv


def _reference(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape,window,padding', [
    ((2, 9, 9, 3), (5, 5), ((2, 2), (2, 2))),    # Few channels: one einsum.
    ((2, 6, 6, 20), (3, 3), ((1, 1), (1, 1))),   # Many: one matmul per offset.
    ((1, 7, 5, 17), (3, 1), ((0, 2), (1, 0))),   # Uneven kernel and padding.
])
def test_value_and_both_gradients_equal_xla(shape, window, padding):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, window + (shape[-1], 8))
  dims = lax.conv_dimension_numbers(x.shape, kernel.shape,
                                    ('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: conv.conv(x, k, (1, 1), padding, dimension_numbers=dims)
  out = ours(x, kernel)
  np.testing.assert_allclose(out, _reference(x, kernel, padding), rtol=1e-5,
                             atol=1e-5)
  cotangent = jax.random.normal(kg, out.shape)
  grads = jax.vjp(ours, x, kernel)[1](cotangent)
  expected = jax.vjp(lambda x, k: _reference(x, k, padding), x,
                     kernel)[1](cotangent)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_strided_convolution_falls_back_to_xla():
  x = jnp.ones((1, 8, 8, 2))
  y = nn.Conv(4, (3, 3), strides=(2, 2), conv_general_dilated=conv.conv)
  variables = y.init(jax.random.key(0), x)
  plain = nn.Conv(4, (3, 3), strides=(2, 2))
  np.testing.assert_allclose(y.apply(variables, x), plain.apply(variables, x))


@pytest.mark.parametrize('impl', ['matmul_kernel_grad', 'winograd'])
def test_model_gradients_are_the_same_with_each_implementation(impl,
                                                               monkeypatch):
  config = test_config.get_config()
  # Wide enough (16 channels into the 5x5 and 3x3 layers) for Winograd.
  config.model.block_features = ((16, 8, 16), (16, 16, 16), (16, 16))
  winograd_calls = []
  monkeypatch.setattr(winograd, 'conv', lambda *args: winograd_calls.append(
      args[1].shape) or winograd_conv(*args))
  fast_grads, plain_grads = model_gradients.gradients(
      config, 'conv_impl', (impl, 'xla'))
  # The first layer (1 input channel) stays on the matmul path.
  assert winograd_calls == ([(5, 5, 16, 16), (3, 3, 16, 16)]
                            if impl == 'winograd' else [])
  assert jax.tree.structure(fast_grads) == jax.tree.structure(plain_grads)
  # Winograd's transforms round a little more than a direct sum.
  atol = 1e-5 if impl == 'winograd' else 1e-6
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
