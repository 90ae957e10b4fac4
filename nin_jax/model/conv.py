"""Convolutions that XLA's CPU backend trains fast.

On CPU, XLA's gradient of a convolution with respect to its kernel is slow:
for the NiN's 5x5 convolutions it costs several forward passes. A stride-1
convolution's kernel gradient is also a sum over the kernel's window offsets
of one matrix product each (the shifted inputs, transposed, times the output
gradient), which the CPU runs at matmul speed, several times faster for those
layers (per-layer timings: experiments/README.md, from
experiments/benchmarks/conv_grad_bench.py). `conv` computes the forward pass and the
input gradient with XLA and the kernel gradient that way; anything other
than a plain stride-1, undilated NHWC/HWIO convolution goes to
`lax.conv_general_dilated` unchanged. Parameters, their layout and the
numbers are those of `flax.linen.Conv` (up to float rounding).

With `use_winograd`, the float32 3x3 and 5x5 convolutions with at least
`_WINOGRAD_MIN_CHANNELS` input channels go to `winograd.conv` instead, which
takes about half the time of the way above for all three passes of the
NiN's 16x16x96->192 layer (the first layer, 3 input channels, stays on that
way).
"""

import functools
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from nin_jax.model import winograd

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')
# Below this many input channels the window offsets are stacked into one
# einsum (one big product); above it, one product per offset is faster.
_STACK_BELOW_CHANNELS = 16
# Winograd's per-position products are matmuls over the input channels: with
# the first layer's 3 they are too thin to pay for the transforms (its
# forward pass was about 3x slower than XLA's: experiments/README.md).
_WINOGRAD_MIN_CHANNELS = 16
# Output tile side: F(4x4, 3x3) and F(4x4, 5x5).
_WINOGRAD_TILE = 4


def _xla_conv(x: jax.Array, kernel: jax.Array,
              padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=_LAYOUT)


def kernel_gradient(x: jax.Array, grad: jax.Array,
                    kernel_shape: Sequence[int],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """d(loss)/d(kernel) of a stride-1 NHWC/HWIO convolution, as matmuls.

  kernel[i, j] multiplies the input shifted by (i, j), so its gradient is
  shifted_input(i, j)^T @ grad, summed over batch and positions.
  """
  kh, kw, cin, cout = kernel_shape
  (top, bottom), (left, right) = padding
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  _, height, width, _ = grad.shape
  flat_grad = grad.reshape(-1, cout)
  windows = [padded[:, i:i + height, j:j + width, :]
             for i in range(kh) for j in range(kw)]
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  if cin < _STACK_BELOW_CHANNELS:
    out = jnp.einsum('sbhwc,bhwo->sco', jnp.stack(windows), grad,
                     preferred_element_type=accumulate)
  else:
    out = jnp.stack([
        jnp.matmul(w.reshape(-1, cin).T, flat_grad,
                   preferred_element_type=accumulate) for w in windows])
  return out.reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array,
          padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return _xla_conv(x, kernel, padding)


def _conv_forward(x, kernel, padding):
  return _xla_conv(x, kernel, padding), (x, kernel)


def _conv_backward(padding, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda inputs: _xla_conv(inputs, kernel, padding), x)
  (x_grad,) = input_vjp(grad)
  kernel_grad = kernel_gradient(x, grad, kernel.shape, padding)
  return x_grad, kernel_grad.astype(kernel.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def _is_plain(window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, lhs, rhs) -> bool:
  ones = (None, (1, 1), [1, 1])
  if tuple(window_strides) != (1, 1) or lhs_dilation not in ones:
    return False
  if rhs_dilation not in ones or feature_group_count != 1:
    return False
  if isinstance(padding, str) or lhs.ndim != 4:
    return False
  return dimension_numbers == lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, _LAYOUT)


def _suits_winograd(lhs, rhs, padding) -> bool:
  kh, kw, cin, _ = rhs.shape
  return (kh == kw and kh in (3, 5) and cin >= _WINOGRAD_MIN_CHANNELS
          and lhs.dtype == rhs.dtype == jnp.float32
          and all(0 <= p < kh for pair in padding for p in pair))


def conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
         padding: Any, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count: int = 1,
         precision=None, *, use_winograd: bool = False,
         **kwargs) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` (as `nn.Conv` calls it)."""
  if kwargs or precision is not None or not _is_plain(
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, lhs, rhs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        **kwargs)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if use_winograd and _suits_winograd(lhs, rhs, padding):
    return winograd.conv(lhs, rhs, padding, _WINOGRAD_TILE)
  return _conv(lhs, rhs, padding)


# config.model.conv_impl: 'auto' picks 'winograd' on CPU only (on GPUs and
# TPUs the vendor convolutions are fast).
CONV_IMPLS = ('auto', 'xla', 'matmul_kernel_grad', 'winograd')


def resolve(name: str):
  """The conv function for nn.Conv, or None for Flax's default."""
  if name == 'auto':
    name = 'winograd' if jax.default_backend() == 'cpu' else 'xla'
  if name == 'winograd':
    return functools.partial(conv, use_winograd=True)
  return conv if name == 'matmul_kernel_grad' else None
