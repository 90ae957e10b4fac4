"""winograd.conv: a stride-1 convolution by Winograd's minimal filtering."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax.model import winograd


def _exact(x, kernel, padding):
  return lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize('m,r', [(2, 3), (4, 3), (2, 5), (4, 5)])
def test_transforms_compute_a_correlation_exactly_in_float64(m, r):
  at, g, bt = winograd.matrices(m, r)
  rng = np.random.default_rng(0)
  d, kernel = rng.normal(size=m + r - 1), rng.normal(size=r)
  expected = [sum(d[i + k] * kernel[k] for k in range(r)) for i in range(m)]
  np.testing.assert_allclose(at @ ((g @ kernel) * (bt @ d)), expected,
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize('shape,size,out,padding,m', [
    ((2, 16, 16, 6), 5, 7, ((2, 2), (2, 2)), 4),  # The NiN's 5x5 layers.
    ((2, 8, 8, 5), 3, 4, ((1, 1), (1, 1)), 4),    # Its 3x3 layer.
    ((2, 9, 7, 3), 5, 2, ((2, 2), (2, 2)), 4),    # Maps not a tile multiple.
    ((1, 7, 5, 3), 3, 4, ((0, 2), (1, 0)), 2),    # Uneven padding.
])
def test_value_and_both_gradients_equal_a_direct_convolution(
    shape, size, out, padding, m):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape)
  kernel = jax.random.normal(keys[1], (size, size, shape[-1], out))
  expected, exact_vjp = jax.vjp(lambda x, k: _exact(x, k, padding), x, kernel)
  got, our_vjp = jax.vjp(
      jax.jit(lambda x, k: winograd.conv(x, k, padding, m)), x, kernel)
  grad = jax.random.normal(keys[2], expected.shape)
  for ours, theirs in zip((got,) + our_vjp(grad),
                          (expected,) + exact_vjp(grad)):
    assert ours.shape == theirs.shape
    # Rounding in the transforms: a few 1e-6 of the largest value.
    np.testing.assert_allclose(ours, theirs, rtol=0,
                               atol=2e-5 * float(jnp.abs(theirs).max()))
