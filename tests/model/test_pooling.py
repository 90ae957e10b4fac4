"""pooling.max_pool: flax's max pool, with a gradient routed by saved argmax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax.configs import test as test_config
from nin_jax.model import pooling
import model_gradients


def _flax(window, strides, padding):
  return lambda x: nn.max_pool(x, window, strides, padding=padding)


def _ours(window, strides, padding):
  return lambda x: pooling.max_pool(x, window, strides, padding)


@pytest.mark.parametrize('shape,window,strides,padding', [
    ((2, 7, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # The NiN's pools.
    ((2, 8, 8, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),  # Non-overlapping.
    ((2, 9, 6, 2), (3, 2), (1, 2), ((1, 1), (0, 1))),  # Uneven everything.
    ((1, 10, 10, 2), (5, 5), (3, 3), ((2, 2), (2, 2))),
    ((1, 13, 13, 1), (12, 12), (1, 1), ((0, 0), (0, 0))),  # 144 offsets.
])
@pytest.mark.parametrize('ties', [False, True])
def test_value_and_gradient_equal_flax(shape, window, strides, padding, ties):
  x = jax.random.normal(jax.random.key(0), shape)
  if ties:  # Post-ReLU values on a coarse grid: many windows tie, at 0 too.
    x = jnp.round(jnp.maximum(x, 0) * 2) / 2
  expected, flax_vjp = jax.vjp(_flax(window, strides, padding), x)
  got, our_vjp = jax.vjp(jax.jit(_ours(window, strides, padding)), x)
  np.testing.assert_array_equal(got, expected)
  grad = jax.random.normal(jax.random.key(1), expected.shape)
  # The same element of each window gets the gradient (a tie routed the
  # other way would differ by O(1)); sums differ only in rounding.
  np.testing.assert_allclose(our_vjp(grad)[0], flax_vjp(grad)[0],
                             rtol=0, atol=1e-6)


def test_bfloat16_gradient_keeps_the_dtype():
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4), jnp.bfloat16)
  pool = _ours((3, 3), (2, 2), ((1, 1), (1, 1)))
  y, vjp = jax.vjp(pool, x)
  (x_grad,) = vjp(jnp.ones_like(y))
  assert x_grad.dtype == jnp.bfloat16
  assert float(x_grad.astype(jnp.float32).sum()) == y.size


def test_model_gradients_are_the_same_with_either_implementation():
  config = test_config.get_config()
  ours, plain = model_gradients.gradients(config, 'pool_impl',
                                          ('saved_argmax', 'xla'))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
