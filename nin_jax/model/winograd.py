"""Winograd convolution: a stride-1 kxk convolution with fewer multiplies.

Winograd's minimal filtering F(m x m, r x r) (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016) computes each m x m tile of a
convolution's output from an (m+r-1)^2 input tile: both the input tile and
the kernel are taken to a transformed domain by small constant matrices
(B^T d B and G g G^T), multiplied elementwise there, which across channels is
one matrix product per transformed position, and taken back (A^T . A). For
the NiN's 5x5 convolutions with m = 4 that is 64 products per 16 outputs
instead of 400, so XLA's CPU backend runs them as large matmuls plus cheap
elementwise transforms: for the 16x16x96->192 layer, in about half the time
of XLA's convolution (experiments/README.md).

The gradients are Winograd convolutions too: the input gradient is the
convolution of the output gradient with the flipped, transposed kernel, and
the kernel gradient is a product, per transformed position, of the saved
input tiles and the output gradient's tiles, taken back by G^T . G.

Float32 results differ from a direct convolution by rounding only: the
transforms use the interpolation points 0, +-1, +-2, +-1/2, whose relative
error stays near 1e-5 of the output's largest value for m = 4, r = 5.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Padding = tuple[tuple[int, int], tuple[int, int]]
# Interpolation points (the point at infinity is added last); small and
# symmetric ones keep the transforms' rounding error low.
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A^T (m x a), G (a x r), B^T (a x a), a = m + r - 1, for F(m, r).

  A^T and G are Toom-Cook evaluation matrices; B^T is then the unique matrix
  that makes A^T [(G g) * (B^T d)] the correlation of d with g, solved for
  exactly in float64 and checked.
  """
  a = m + r - 1
  if a - 1 > len(_POINTS):
    raise ValueError(f'F({m}, {r}) needs {a - 1} points; have {len(_POINTS)}.')
  points = _POINTS[:a - 1]
  at = np.zeros((m, a))
  g = np.zeros((a, r))
  for j, p in enumerate(points):
    at[:, j] = [p ** i for i in range(m)]
    g[j, :] = [p ** k for k in range(r)]
  at[m - 1, a - 1] = 1.0
  g[a - 1, r - 1] = 1.0
  # sum_j at[i, j] g[j, k] bt[j, l] = [l == i + k] for all i, k, l.
  system = np.zeros((m * r * a, a * a))
  target = np.zeros(m * r * a)
  for i in range(m):
    for k in range(r):
      for l in range(a):
        row = (i * r + k) * a + l
        for j in range(a):
          system[row, j * a + l] = at[i, j] * g[j, k]
        target[row] = float(l == i + k)
  bt = np.linalg.lstsq(system, target, rcond=None)[0].reshape(a, a)
  if np.abs(system @ bt.ravel() - target).max() > 1e-9:
    raise ValueError(f'No exact Winograd transform F({m}, {r}).')
  return at, g, bt


def _combine(coefficients, parts):
  """sum_i c_i parts[i], skipping zeros and multiplying only where needed."""
  total = None
  for c, part in zip(coefficients, parts):
    c = float(c)
    if abs(c) < 1e-12:
      continue
    term = part if c == 1.0 else (-part if c == -1.0 else part * c)
    total = term if total is None else total + term
  return total


def _tile_counts(height, width, m):
  return -(-height // m), -(-width // m)


def _output_size(x, r, padding):
  (top, bottom), (left, right) = padding
  return x.shape[1] + top + bottom - r + 1, x.shape[2] + left + right - r + 1


def _input_tiles(x, m, r, padding):
  """B^T d B of every overlapping input tile: [a * a, tiles, channels]."""
  a = m + r - 1
  batch, height, width, channels = x.shape
  (top, _), (left, _) = padding
  tiles_h, tiles_w = _tile_counts(*_output_size(x, r, padding), m)
  # Extra zeros at the bottom and right complete the last tiles.
  padded = jnp.pad(x, ((0, 0), (top, tiles_h * m + r - 1 - height - top),
                       (left, tiles_w * m + r - 1 - width - left), (0, 0)))
  _, _, bt = matrices(m, r)
  rows = [lax.slice_in_dim(padded, i, i + m * (tiles_h - 1) + 1, m, axis=1)
          for i in range(a)]
  by_rows = jnp.stack([_combine(bt[alpha], rows) for alpha in range(a)])
  cols = [lax.slice_in_dim(by_rows, j, j + m * (tiles_w - 1) + 1, m, axis=3)
          for j in range(a)]
  tiles = jnp.stack([_combine(bt[beta], cols) for beta in range(a)], axis=1)
  return tiles.reshape(a * a, batch * tiles_h * tiles_w, channels)


def _kernel_tiles(kernel, m):
  """G g G^T of an HWIO kernel: [a * a, in, out]."""
  r = kernel.shape[0]
  _, g, _ = matrices(m, r)
  g = jnp.asarray(g, kernel.dtype)
  u = jnp.einsum('ak,bl,klio->abio', g, g, kernel)
  return u.reshape(-1, kernel.shape[2], kernel.shape[3])


def _output_from_tiles(products, m, r, batch, out_h, out_w):
  """A^T M A of every tile, assembled into [batch, out_h, out_w, out]."""
  a = m + r - 1
  tiles_h, tiles_w = _tile_counts(out_h, out_w, m)
  channels = products.shape[-1]
  at, _, _ = matrices(m, r)
  products = products.reshape(a, a, batch, tiles_h, tiles_w, channels)
  by_cols = jnp.stack([_combine(at[b], [products[:, beta] for beta in range(a)])
                       for b in range(m)], axis=1)
  out = jnp.stack([_combine(at[i], [by_cols[alpha] for alpha in range(a)])
                   for i in range(m)])  # [m, m, batch, tiles_h, tiles_w, c]
  out = out.transpose(2, 3, 0, 4, 1, 5).reshape(
      batch, tiles_h * m, tiles_w * m, channels)
  return out[:, :out_h, :out_w]


def _gradient_tiles(grad, m, r):
  """A dY A^T of every output tile: the products' gradient, [a*a, tiles, c]."""
  a = m + r - 1
  batch, out_h, out_w, channels = grad.shape
  tiles_h, tiles_w = _tile_counts(out_h, out_w, m)
  grad = jnp.pad(grad, ((0, 0), (0, tiles_h * m - out_h),
                        (0, tiles_w * m - out_w), (0, 0)))
  tiles = grad.reshape(batch, tiles_h, m, tiles_w, m, channels)
  at, _, _ = matrices(m, r)
  by_rows = [_combine(at[:, alpha], [tiles[:, :, i] for i in range(m)])
             for alpha in range(a)]  # each [batch, tiles_h, tiles_w, m, c]
  out = jnp.stack([
      jnp.stack([_combine(at[:, beta], [row[:, :, :, j] for j in range(m)])
                 for beta in range(a)]) for row in by_rows])
  return out.reshape(a * a, batch * tiles_h * tiles_w, channels)


def _products(tiles, kernel_tiles):
  accumulate = jnp.promote_types(tiles.dtype, jnp.float32)
  return jnp.einsum('stc,sco->sto', tiles, kernel_tiles,
                    preferred_element_type=accumulate).astype(tiles.dtype)


def _forward_conv(x, kernel, padding, m):
  r = kernel.shape[0]
  tiles = _input_tiles(x, m, r, padding)
  products = _products(tiles, _kernel_tiles(kernel, m))
  return _output_from_tiles(products, m, r, x.shape[0],
                            *_output_size(x, r, padding)), tiles


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, padding: Padding,
         m: int = 4) -> jax.Array:
  """A stride-1 NHWC/HWIO convolution with a square kernel, by F(m, r)."""
  return _forward_conv(x, kernel, padding, m)[0]


def _conv_forward(x, kernel, padding, m):
  y, tiles = _forward_conv(x, kernel, padding, m)
  return y, (x, kernel, tiles)


def _conv_backward(padding, m, residuals, grad):
  x, kernel, tiles = residuals
  r = kernel.shape[0]
  (top, bottom), (left, right) = padding
  # The input gradient: the flipped kernel, in and out swapped, over the
  # output gradient padded by r - 1 - padding (which gives x's size).
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  x_grad = _forward_conv(grad, flipped, ((r - 1 - top, r - 1 - bottom),
                                         (r - 1 - left, r - 1 - right)), m)[0]
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  tile_grad = jnp.einsum('stc,sto->sco', tiles, _gradient_tiles(grad, m, r),
                         preferred_element_type=accumulate)
  _, g, _ = matrices(m, r)
  g = jnp.asarray(g, accumulate)
  a = m + r - 1
  tile_grad = tile_grad.reshape(a, a, *tile_grad.shape[1:])
  kernel_grad = jnp.einsum('ak,bl,abio->klio', g, g, tile_grad)
  return x_grad.astype(x.dtype), kernel_grad.astype(kernel.dtype)


conv.defvjp(_conv_forward, _conv_backward)
