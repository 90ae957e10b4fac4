"""Network in Network (Lin, Chen & Yan, ICLR 2014) as Flax linen modules.

An mlpconv block is one spatial convolution followed by a small MLP that is
shared across positions (the 1x1 convolutions). The NiN stacks mlpconv blocks
with pooling and dropout between them, makes the last 1x1 layer emit one map
per class and averages each map into a logit (global average pooling), so no
fully connected layer is needed and each class map can be looked at.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nin_jax import errors
from nin_jax.model import conv
from nin_jax.model import pooling

Initializer = Callable[..., jax.Array]

# The choices of config.model's fields, checked by config_checks.validate.
POOLS = ('max', 'avg')
# 'gap': global average pooling of the class maps (the paper's model).
# 'fc': the class maps flattened into one fully connected layer, and
# 'fc_dropout': the same with dropout before it (the paper's GAP-vs-FC
# ablation, section 4.6: 10.41% vs 11.59% vs 10.88% CIFAR-10 test error).
HEADS = ('gap', 'fc', 'fc_dropout')
KERNEL_INITS = ('he_normal', 'he_uniform', 'lecun_normal', 'glorot_uniform',
                'normal')
DTYPES = ('float32', 'bfloat16')


def kernel_initializer(name: str, std: float = 0.05) -> Initializer:
  """Maps a config name (one of KERNEL_INITS) to a kernel initializer.

  'normal' is the Caffe reference's N(0, std); it is the init that lets the
  last ReLU die at lr 0.1, so it is not the default.
  """
  return {
      'he_normal': nn.initializers.he_normal(),
      'he_uniform': nn.initializers.he_uniform(),
      'lecun_normal': nn.initializers.lecun_normal(),
      'glorot_uniform': nn.initializers.glorot_uniform(),
      'normal': nn.initializers.normal(stddev=std),
  }[name]


class MlpConv(nn.Module):
  """One kxk convolution, then 1x1 layers; every layer is followed by ReLU.

  The 1x1 layers are `nn.Dense` over the channel axis: the same function as a
  1x1 convolution, but XLA runs it as a plain matmul, which is much faster on
  CPU. Their kernels have shape (in, out).
  """
  features: Sequence[int]  # features[0]: the kxk conv; the rest: 1x1 layers.
  kernel_size: int = 3
  use_batchnorm: bool = False
  # Axis to average BatchNorm statistics over under pmap (None under jit,
  # where the batch is global anyway).
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.he_normal()
  bias_init: Initializer = nn.initializers.zeros
  # Bias init of the block's last layer, if different (the class maps).
  last_bias_init: Initializer | None = None
  # The kxk convolution's implementation (conv.py); None: Flax's default.
  conv_fn: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = self.kernel_size // 2
    for i, width in enumerate(self.features):
      bias_init = self.bias_init
      if i == len(self.features) - 1 and self.last_bias_init is not None:
        bias_init = self.last_bias_init
      if i == 0:
        x = nn.Conv(width, (self.kernel_size, self.kernel_size),
                    padding=((pad, pad), (pad, pad)),
                    use_bias=not self.use_batchnorm, dtype=self.dtype,
                    kernel_init=self.kernel_init, bias_init=bias_init,
                    conv_general_dilated=self.conv_fn, name='conv')(x)
      else:
        x = nn.Dense(width, use_bias=not self.use_batchnorm, dtype=self.dtype,
                     kernel_init=self.kernel_init, bias_init=bias_init,
                     name=f'mlp{i}')(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         axis_name=self.bn_axis_name, dtype=self.dtype,
                         name=f'bn{i}')(x)
      x = nn.relu(x)
    return x


class NiN(nn.Module):
  """mlpconv blocks with pool + dropout between them and a GAP head.

  The last block gets one more 1x1 layer with `num_classes` outputs (followed
  by ReLU, as in the reference model); its output maps are the class maps,
  recorded with `sow` under 'intermediates'/'class_maps'. With the default
  head each logit is the mean of its class map; the 'fc' heads instead feed
  all the maps, flattened, to a fully connected layer.
  """
  num_classes: int
  block_features: Sequence[Sequence[int]] = ((192, 160, 96), (192, 192, 192),
                                             (192, 192))
  kernel_sizes: Sequence[int] = (5, 5, 3)
  pools: Sequence[str] = ('max', 'avg')
  pool_window: int = 3
  pool_stride: int = 2
  dropout_rate: float = 0.5
  use_batchnorm: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.he_normal()
  bias_init: Initializer = nn.initializers.zeros
  class_bias_init: Initializer = nn.initializers.zeros
  conv_fn: Callable[..., jax.Array] | None = None
  # The max pool's implementation, (x, window, strides, padding) -> pooled
  # x (pooling.py); None: Flax's max_pool.
  max_pool_fn: Callable[..., jax.Array] | None = None
  head: str = 'gap'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(self.dtype)
    num_blocks = len(self.block_features)
    pad = self.pool_window // 2
    padding = ((pad, pad), (pad, pad))
    window = (self.pool_window, self.pool_window)
    strides = (self.pool_stride, self.pool_stride)
    for b in range(num_blocks):
      features = tuple(self.block_features[b])
      last = b == num_blocks - 1
      if last:
        features += (self.num_classes,)
      x = MlpConv(features, self.kernel_sizes[b],
                  use_batchnorm=self.use_batchnorm,
                  bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                  kernel_init=self.kernel_init, bias_init=self.bias_init,
                  last_bias_init=self.class_bias_init if last else None,
                  conv_fn=self.conv_fn, name=f'mlpconv{b + 1}')(x, train)
      if last:
        break
      if self.pools[b] == 'max':
        if self.max_pool_fn is None:
          x = nn.max_pool(x, window, strides, padding=padding)
        else:
          x = self.max_pool_fn(x, window, strides, padding)
      else:  # Padding counts in the average, as PyTorch's and Flax's default.
        x = nn.avg_pool(x, window, strides, padding=padding,
                        count_include_pad=True)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    self.sow('intermediates', 'class_maps', x)
    if self.head == 'gap':
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = x.reshape((x.shape[0], -1))
    if self.head == 'fc_dropout':
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=self.kernel_init, name='fc')(x)
    return x.astype(jnp.float32)


def _is_count(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(config: ml_collections.ConfigDict,
                 image_side: int | None = None) -> None:
  """Raises a ConfigError for a layout `create_model` cannot build.

  config_checks.validate calls it after checking each field's type, range
  and choice: this checks how the fields fit together (blocks of positive
  widths, one kernel size per block, one pool between blocks). Where
  `image_side` is known before any data is read, kernels and pools larger
  than the images are refused too: they see mostly padding, at a cost that
  grows with their area.
  """
  m = config.model
  blocks = m.block_features
  if not blocks or not all(
      isinstance(block, (tuple, list)) and block and all(map(_is_count, block))
      for block in blocks):
    raise errors.ConfigError(
        f'config.model.block_features={blocks!r} must be a tuple of blocks, '
        'each a tuple of positive widths (its kxk conv, then its 1x1 layers), '
        'e.g. ((192, 160, 96), (192, 192, 192), (192, 192)).')
  num_blocks = len(blocks)
  if len(m.kernel_sizes) != num_blocks:
    raise errors.ConfigError(
        f'config.model.kernel_sizes has {len(m.kernel_sizes)} entries but '
        f'config.model.block_features has {num_blocks} blocks; give one '
        'kernel size per block.')
  if not all(map(_is_count, m.kernel_sizes)):
    raise errors.ConfigError(
        f'config.model.kernel_sizes={m.kernel_sizes!r} must be positive '
        'integers (the paper: (5, 5, 3)).')
  if len(m.pools) != num_blocks - 1:
    raise errors.ConfigError(
        f'config.model.pools needs {num_blocks - 1} entries (one between each '
        f'pair of blocks), got {len(m.pools)}.')
  for pool in m.pools:
    if pool not in POOLS:
      raise errors.ConfigError(f'Unknown pool {pool!r} in config.model.pools; '
                               f'use one of {POOLS}.')
  if image_side is None:
    return
  images = f'the {image_side}x{image_side} images of {config.dataset}'
  if max(m.kernel_sizes) > image_side:
    raise errors.ConfigError(
        f'config.model.kernel_sizes={m.kernel_sizes!r} has a kernel larger '
        f'than {images}; use sizes of at most {image_side}.')
  if num_blocks == 1:
    return  # No pools: their window and stride are unused.
  for name, paper in (('pool_window', 3), ('pool_stride', 2)):
    if m[name] > image_side:
      raise errors.ConfigError(
          f'config.model.{name}={m[name]} is larger than {images}; use at '
          f'most {image_side} (the paper: {paper}).')


def create_model(config: ml_collections.ConfigDict,
                 axis_name: str | None = None) -> NiN:
  """Builds the NiN that `config.model` and `config.num_classes` describe.

  Trusts `config`: config_checks.validate has checked it.
  `axis_name`: the pmap axis over which BatchNorm averages its statistics.
  """
  m = config.model
  keep = None if m.num_mlp_layers == -1 else 1 + m.num_mlp_layers
  return NiN(
      num_classes=config.num_classes,
      block_features=tuple(tuple(f)[:keep] for f in m.block_features),
      kernel_sizes=tuple(m.kernel_sizes),
      pools=tuple(m.pools),
      pool_window=m.pool_window,
      pool_stride=m.pool_stride,
      dropout_rate=m.dropout_rate,
      use_batchnorm=m.use_batchnorm,
      bn_axis_name=axis_name,
      dtype=jnp.dtype(m.dtype),
      kernel_init=kernel_initializer(m.kernel_init, m.init_std),
      bias_init=nn.initializers.constant(m.bias_init),
      class_bias_init=nn.initializers.constant(m.class_bias_init),
      conv_fn=conv.resolve(m.conv_impl),
      max_pool_fn=pooling.resolve(m.pool_impl),
      head=m.head,
  )
