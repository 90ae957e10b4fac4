"""An independent NumPy implementation of the seed's PyTorch NiN, for tests.

It follows the seed's `nn.Sequential` layer by layer in PyTorch's NCHW layout
with PyTorch-shaped weights ((out, in, kh, kw) kernels), sharing no code with
`nin_jax`, so agreement with the Flax model checks the architecture itself.
"""

import numpy as np

# (kernel size, padding, in, out) of each conv of the seed, in order.
SEED_CONVS = (
    (5, 2, 3, 192), (1, 0, 192, 160), (1, 0, 160, 96),
    (5, 2, 96, 192), (1, 0, 192, 192), (1, 0, 192, 192),
    (3, 1, 192, 192), (1, 0, 192, 192), (1, 0, 192, 10),
)


def random_torch_weights(rng: np.random.Generator, convs=SEED_CONVS):
  """A list of (weight (out, in, k, k), bias (out,)) with He-like scale."""
  weights = []
  for k, _, cin, cout in convs:
    w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
    b = rng.normal(0, 0.1, (cout,))
    weights.append((w.astype(np.float32), b.astype(np.float32)))
  return weights


def conv2d(x, w, b, pad):
  """x: (N, C, H, W); w: (O, C, k, k); stride 1, zero padding `pad`."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  k = w.shape[-1]
  h, wd = x.shape[2] - k + 1, x.shape[3] - k + 1
  out = np.zeros((x.shape[0], w.shape[0], h, wd), np.float64)
  for i in range(k):
    for j in range(k):
      out += np.einsum('nchw,oc->nohw', x[:, :, i:i + h, j:j + wd], w[:, :, i, j])
  return out + b[None, :, None, None]


def _pool(x, reduce, pad_value, k=3, s=2, p=1):
  x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value)
  h = (x.shape[2] - k) // s + 1
  w = (x.shape[3] - k) // s + 1
  windows = np.stack([x[:, :, i:i + s * h:s, j:j + s * w:s]
                      for i in range(k) for j in range(k)])
  return reduce(windows)


def max_pool(x):  # nn.MaxPool2d(3, stride=2, padding=1)
  return _pool(x, lambda w: w.max(0), -np.inf)


def avg_pool(x):  # nn.AvgPool2d(3, stride=2, padding=1), count_include_pad
  return _pool(x, lambda w: w.sum(0) / 9.0, 0.0)


def seed_logits(images_nhwc, weights, convs=SEED_CONVS):
  """Eval-mode forward pass (dropout is the identity)."""
  x = np.transpose(images_nhwc.astype(np.float64), (0, 3, 1, 2))
  for i, ((w, b), (_, pad, _, _)) in enumerate(zip(weights, convs)):
    x = np.maximum(conv2d(x, w.astype(np.float64), b.astype(np.float64), pad), 0)
    if i == 2:
      x = max_pool(x)
    elif i == 5:
      x = avg_pool(x)
  return x.mean(axis=(2, 3))  # nn.AvgPool2d(8) on the 8x8 maps + flatten.


def to_flax_params(weights):
  """PyTorch-layout weights -> the parameter tree of `nin_jax.model.nin.NiN`."""
  params = {}
  for i, (w, b) in enumerate(weights):
    block, layer = divmod(i, 3)
    if layer == 0:
      entry = {'conv': {'kernel': np.transpose(w, (2, 3, 1, 0)), 'bias': b}}
    else:  # 1x1 conv -> Dense over channels: kernel (in, out).
      entry = {f'mlp{layer}': {'kernel': w[:, :, 0, 0].T, 'bias': b}}
    params.setdefault(f'mlpconv{block + 1}', {}).update(entry)
  return params
