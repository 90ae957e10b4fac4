"""A max pool whose gradient XLA's CPU backend computes fast.

JAX differentiates a max pool through a reduce-window that tracks the
argmax with index arrays, and XLA's CPU backend materializes those indices
(four int32 arrays the size of the padded input) on every step: the NiN's
first pool (3x3, stride 2) took several times as long, forward and
backward, as it does this way, enough to slow the whole training step
(experiments/README.md). Here the forward pass also records which offset
of each window held the maximum, as int8 (int32 for windows over 11x11; the
first maximum in row-major order wins, as in XLA), and the backward pass
routes each output's gradient to that offset. Every input element is
reached by at most ceil(window / stride) windows per axis, so the gradient
is built one stride phase at a time from a few shifted, masked copies of
the output's gradient and interleaved back: elementwise work that XLA
fuses, with one write of the input-sized result. Values and the choice
among tied maxima are those of `flax.linen.max_pool` and its JAX gradient.
"""

import functools
import math

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: Pair, strides: Pair,
             padding: Padding) -> jax.Array:
  """`nn.max_pool(x, window, strides, padding)` of NHWC `x`."""
  return nn.max_pool(x, window, strides, padding=padding)


def _pool_with_argmax(x, window, strides, padding):
  """The pooled maxima and the offset of each window's maximum."""
  (top, bottom), (left, right) = padding
  lowest = jnp.array(-jnp.inf, x.dtype)
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                   constant_values=lowest)
  out_h = (padded.shape[1] - window[0]) // strides[0] + 1
  out_w = (padded.shape[2] - window[1]) // strides[1] + 1
  # int8 holds the offsets of windows up to 11x11; larger ones need more.
  index_dtype = jnp.int8 if window[0] * window[1] <= 127 else jnp.int32
  best = index = None
  for i in range(window[0]):
    for j in range(window[1]):
      at_offset = lax.slice(
          padded, (0, i, j, 0),
          (padded.shape[0], i + (out_h - 1) * strides[0] + 1,
           j + (out_w - 1) * strides[1] + 1, padded.shape[3]),
          (1, strides[0], strides[1], 1))
      offset = jnp.asarray(i * window[1] + j, index_dtype)
      if best is None:
        best, index = at_offset, jnp.zeros(at_offset.shape, index_dtype)
        continue
      better = at_offset > best  # Strictly: an earlier maximum keeps its win.
      best = jnp.where(better, at_offset, best)
      index = jnp.where(better, offset, index)
  return best, index


def _forward(x, window, strides, padding):
  y, index = _pool_with_argmax(x, window, strides, padding)
  # x only lends its shape and dtype, so XLA need not keep its values.
  return y, (index, x)


def _phase_sources(phase: int, window: int, stride: int) -> list[Pair]:
  """(window shift, offset in window) pairs that reach a stride phase.

  The padded input position stride * k + phase is offset phase + stride * t
  of window k - t, for every t that keeps the offset inside the window.
  """
  return [(t, phase + stride * t)
          for t in range(math.ceil(window / stride))
          if phase + stride * t < window]


def _backward(window, strides, padding, residuals, grad):
  index, x = residuals
  batch, height, width, channels = x.shape
  (top, bottom), (left, right) = padding
  padded_h, padded_w = height + top + bottom, width + left + right
  # Phase-major blocks: position stride * k + phase for k < blocks.
  blocks_h = math.ceil(padded_h / strides[0])
  blocks_w = math.ceil(padded_w / strides[1])
  reach_h = math.ceil(window[0] / strides[0]) - 1
  reach_w = math.ceil(window[1] / strides[1]) - 1
  out_h, out_w = grad.shape[1:3]
  # Zero rows (and index -1, no offset) before and after, so that window
  # k - t exists for every k < blocks and t <= reach.
  edges = ((0, 0), (reach_h, max(0, blocks_h - out_h)),
           (reach_w, max(0, blocks_w - out_w)), (0, 0))
  accumulate = jnp.promote_types(grad.dtype, jnp.float32)
  grad = jnp.pad(grad.astype(accumulate), edges)
  index = jnp.pad(index, edges, constant_values=-1)
  zero = jnp.zeros((), accumulate)

  def shifted(a, t_h, t_w):
    return a[:, reach_h - t_h:reach_h - t_h + blocks_h,
             reach_w - t_w:reach_w - t_w + blocks_w]

  phases = []
  for p in range(strides[0]):
    row = []
    for q in range(strides[1]):
      total = jnp.zeros((batch, blocks_h, blocks_w, channels), accumulate)
      for t_h, u in _phase_sources(p, window[0], strides[0]):
        for t_w, v in _phase_sources(q, window[1], strides[1]):
          hit = shifted(index, t_h, t_w) == u * window[1] + v
          total = total + jnp.where(hit, shifted(grad, t_h, t_w), zero)
      row.append(total)
    phases.append(jnp.stack(row, axis=3))  # [batch, blocks_h, blocks_w, q, c]
  interleaved = jnp.stack(phases, axis=2).reshape(
      batch, blocks_h * strides[0], blocks_w * strides[1], channels)
  x_grad = interleaved[:, top:top + height, left:left + width]
  return (x_grad.astype(x.dtype),)


max_pool.defvjp(_forward, _backward)


# config.model.pool_impl: 'auto' picks 'saved_argmax' on CPU only (GPUs and
# TPUs run XLA's own gradient well).
POOL_IMPLS = ('auto', 'xla', 'saved_argmax')


def resolve(name: str):
  """The max pool function for the NiN, or None for Flax's `max_pool`."""
  if name == 'auto':
    name = 'saved_argmax' if jax.default_backend() == 'cpu' else 'xla'
  return max_pool if name == 'saved_argmax' else None
