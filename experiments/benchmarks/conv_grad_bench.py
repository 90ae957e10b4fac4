"""Where a NiN train step's convolution time goes on this machine.

  python experiments/benchmarks/conv_grad_bench.py [--batch_size=128] [--repeats=5]

For each kxk convolution of the CIFAR-10 NiN (float32, NHWC/HWIO) it times,
as medians after a warm-up: the forward pass, the input gradient and the
kernel gradient as XLA computes them, and the kernel gradient as
`nin_jax.model.conv.kernel_gradient` computes it (one matmul per window offset),
with the largest relative difference between the two kernel gradients.
A second table times `nin_jax.model.winograd.conv` against that: the forward pass,
and both gradients together (the conv.py path: XLA's input gradient and the
matmul kernel gradient), with Winograd's largest difference from a
float32 direct convolution at full precision, relative to its largest value.
"""

import os
import functools
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nin_jax.model import conv  # pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax.model import winograd  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (median).')

# (map size, kernel size, input channels, output channels) of mlpconv1-3.
LAYERS = ((32, 5, 3, 192), (16, 5, 96, 192), (8, 3, 192, 192))


def _ms(f, *args):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def _layer_inputs(size, k, cin, cout):
  """Random input, kernel and output gradient, and 'same' padding."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (_BATCH.value, size, size, cin))
  kernel = 0.05 * jax.random.normal(keys[1], (k, k, cin, cout))
  grad = jax.random.normal(keys[2], (_BATCH.value, size, size, cout))
  return x, kernel, grad, ((k // 2, k // 2), (k // 2, k // 2))


def main(argv):
  del argv
  print(f'{jax.devices()[0].device_kind}, batch {_BATCH.value}, float32; '
        'milliseconds\n')
  print('| layer | GFLOP | forward | input grad | kernel grad (XLA) | '
        'kernel grad (matmuls) | speed-up | max rel. diff |')
  print('|---|---|---|---|---|---|---|---|')
  for size, k, cin, cout in LAYERS:
    x, kernel, grad, padding = _layer_inputs(size, k, cin, cout)

    def forward(x, kernel):
      return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    input_grad = jax.jit(lambda x, w, g: jax.vjp(
        lambda x: forward(x, w), x)[1](g)[0])
    xla_kernel_grad = jax.jit(lambda x, w, g: jax.vjp(
        lambda w: forward(x, w), w)[1](g)[0])
    matmul_kernel_grad = jax.jit(
        lambda x, g: conv.kernel_gradient(x, g, kernel.shape, padding))
    want, got = xla_kernel_grad(x, kernel, grad), matmul_kernel_grad(x, grad)
    diff = float(abs(got - want).max() / abs(want).max())
    xla_ms = _ms(xla_kernel_grad, x, kernel, grad)
    ours_ms = _ms(matmul_kernel_grad, x, grad)
    gflop = 2 * _BATCH.value * size * size * k * k * cin * cout / 1e9
    print(f'| {size}x{size} {k}x{k} {cin}->{cout} | {gflop:.1f} | '
          f'{_ms(jax.jit(forward), x, kernel):.0f} | '
          f'{_ms(input_grad, x, kernel, grad):.0f} | {xla_ms:.0f} | '
          f'{ours_ms:.0f} | {xla_ms / ours_ms:.1f}x | {diff:.0e} |')
  print('\n| layer | forward (XLA) | forward (Winograd) | both gradients '
        '(conv.py) | both gradients (Winograd) | max rel. diff |')
  print('|---|---|---|---|---|---|')
  dimensions = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1),
                                          ('NHWC', 'HWIO', 'NHWC'))
  for size, k, cin, cout in LAYERS:
    x, kernel, grad, padding = _layer_inputs(size, k, cin, cout)
    plain = functools.partial(conv.conv, window_strides=(1, 1),
                              padding=padding, dimension_numbers=dimensions)
    fast = functools.partial(winograd.conv, padding=padding, m=4)
    exact = lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                     dimension_numbers=dimensions,
                                     precision=lax.Precision.HIGHEST)
    diff = float(abs(jax.jit(fast)(x, kernel) - exact).max()
                 / abs(exact).max())
    row = []
    for f in (plain, fast):
      gradients = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
      row.append((_ms(jax.jit(f), x, kernel), _ms(gradients, x, kernel, grad)))
    print(f'| {size}x{size} {k}x{k} {cin}->{cout} | {row[0][0]:.0f} | '
          f'{row[1][0]:.0f} | {row[0][1]:.0f} | {row[1][1]:.0f} | {diff:.0e} |')


if __name__ == '__main__':
  app.run(main)
