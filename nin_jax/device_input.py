"""Device-resident training input: the training split lives on the devices.

The paper's datasets are small (CIFAR-10's training split is 150 MB as uint8),
so config.input_pipeline='device' loads it once, as uint8, split into one
contiguous shard per device, and draws, preprocesses and augments every batch
inside compiled code: after start-up the host only dispatches, and a step
never waits for it.

Each device draws its part of every global batch from its own shard, in an
order that is a permutation seeded by (seed, epoch, shard); crop offsets and
flips are seeded by (seed, epoch, example). So a batch is a pure function of
(seed, step) and resuming is exact, as on the streaming path. The two paths
draw from the same distribution (a test compares them) but not the same
stream: the shards here are the devices, not config.data_shards.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nin_jax import input_pipeline
from nin_jax import preprocessing

# Independent random streams derived from config.seed.
_ORDER_STREAM, _AUGMENT_STREAM = 1, 2


def augment(image: jax.Array, key: jax.Array, pad: int,
            flip: bool) -> jax.Array:
  """Zero-pad by `pad`, crop back at a uniform offset, flip with p = 0.5.

  The same distribution as input_pipeline._augment (TensorFlow).
  """
  crop_key, flip_key = jax.random.split(key)
  if pad > 0:
    height, width, channels = image.shape
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0),
                                  (height, width, channels))
  if flip:
    image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
  return image


class DeviceTrainBatches:
  """The training split on the devices; `batch(index)` draws a global batch.

  Works with either parallel strategy: over the Jit strategy's global mesh
  it returns (batch, ...) arrays sharded on the data axis; over the Pmap
  strategy's local mesh, (local devices, batch per device, ...) arrays laid
  out as pmap wants them. Build it with `from_dataset` (training) or
  `from_arrays` (data already in memory, e.g. a benchmark's).
  """

  def __init__(self, read_shard: Callable[[int, int], dict[str, np.ndarray]],
               shard_size: int, steps_per_epoch: int,
               prep: preprocessing.Preprocessing,
               config: ml_collections.ConfigDict, strategy: Any):
    """Puts each device's shard of the split on it.

    `read_shard(shard, num_shards)` returns that shard's `shard_size` raw
    examples: {'image': (shard_size, H, W, C) uint8, 'label': (shard_size,)}.
    """
    mesh = strategy.mesh
    axis = mesh.axis_names[0]
    num_shards = jax.device_count()
    shard_batch = config.batch_size // num_shards
    spec = jax.sharding.PartitionSpec(axis)
    sharding = jax.sharding.NamedSharding(mesh, spec)

    # This process's devices, each with its shard of the training split.
    pieces = {'image': [], 'label': []}
    for position, device in enumerate(mesh.devices.flat):
      if device.process_index != jax.process_index():
        continue
      examples = read_shard(strategy.first_shard + position, num_shards)
      pieces['image'].append(jax.device_put(examples['image'], device))
      pieces['label'].append(jax.device_put(
          np.asarray(examples['label']).astype(np.int32), device))
    mesh_shards = mesh.devices.size
    data = {
        key: jax.make_array_from_single_device_arrays(
            (mesh_shards * shard_size,) + arrays[0].shape[1:], sharding, arrays)
        for key, arrays in pieces.items()}

    stacked = strategy.stacked_batches
    first_shard = strategy.first_shard
    seed = config.seed
    pad, flip = config.augment_pad, config.augment_flip

    # The transform's arrays are arguments, not constants baked into the
    # program (a CIFAR ZCA matrix is 38 MB).
    prep_arrays = {
        'shift': prep.shift, 'scale': prep.scale,
        **({'zca': prep.zca} if prep.zca is not None else {})}

    def draw(data, prep_arrays, index):
      shard = first_shard + jax.lax.axis_index(axis)
      epoch, offset = jnp.divmod(index, steps_per_epoch)
      base = jax.random.key(seed)
      order_key = jax.random.fold_in(jax.random.fold_in(
          jax.random.fold_in(base, _ORDER_STREAM), epoch), shard)
      order = jax.random.permutation(order_key, shard_size)
      local = jax.lax.dynamic_slice_in_dim(order, offset * shard_batch,
                                           shard_batch)
      transform = dataclasses.replace(prep, **prep_arrays)
      images = transform.apply_jax(data['image'][local])
      example = shard * shard_size + local  # Index in the training split.
      augment_key = jax.random.fold_in(jax.random.fold_in(
          base, _AUGMENT_STREAM), epoch)
      keys = jax.vmap(functools.partial(jax.random.fold_in,
                                        augment_key))(example)
      images = jax.vmap(functools.partial(augment, pad=pad, flip=flip))(
          images, keys)
      batch = {'image': images, 'label': data['label'][local]}
      return jax.tree.map(lambda x: x[None], batch) if stacked else batch

    replicated = jax.sharding.PartitionSpec()
    # draw(*inputs, index) -> the global batch of step `index`; traceable, so
    # the trainer can draw inside its own compiled loop over steps.
    self.draw = jax.shard_map(
        draw, mesh=mesh, in_specs=(spec, replicated, replicated),
        out_specs=spec)
    self.inputs = (data, strategy.replicate(prep_arrays))
    self._draw_jit = jax.jit(self.draw)

  @classmethod
  def from_dataset(cls, dataset: 'input_pipeline.Dataset',
                   info: 'input_pipeline.DatasetInfo',
                   prep: preprocessing.Preprocessing,
                   config: ml_collections.ConfigDict,
                   strategy: Any) -> 'DeviceTrainBatches':
    """The dataset's training split (validation tail excluded)."""
    shard_size = info.num_train // jax.device_count()

    def read_shard(shard, num_shards):
      if dataset.in_memory:  # Digits or a folder: no TensorFlow involved.
        images, labels = dataset.arrays(input_pipeline.TRAIN, shard,
                                        num_shards, drop_remainder=True)
        return {'image': images, 'label': labels}
      return next(dataset.source(
          input_pipeline.TRAIN, shard, num_shards,
          drop_remainder=True).batch(shard_size).as_numpy_iterator())

    steps_per_epoch = input_pipeline.steps_per_epoch(info, config,
                                                     jax.process_count())
    return cls(read_shard, shard_size, steps_per_epoch, prep, config,
               strategy)

  @classmethod
  def from_arrays(cls, images: np.ndarray, labels: np.ndarray,
                  prep: preprocessing.Preprocessing,
                  config: ml_collections.ConfigDict,
                  strategy: Any) -> 'DeviceTrainBatches':
    """A training split held in memory, cut into one shard per device."""
    num_shards = jax.device_count()
    shard_size = len(images) // num_shards
    steps_per_epoch = input_pipeline.full_batches(len(images), num_shards,
                                                  config.batch_size)

    def read_shard(shard, num_shards):
      del num_shards
      rows = slice(shard * shard_size, (shard + 1) * shard_size)
      return {'image': images[rows], 'label': labels[rows]}

    return cls(read_shard, shard_size, steps_per_epoch, prep, config,
               strategy)

  def batch(self, index: int) -> dict[str, jax.Array]:
    """The global batch of step `index` (0-based), on the devices."""
    return self._draw_jit(*self.inputs, np.int32(index))
