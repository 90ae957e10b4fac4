"""Device-resident training input: the training split lives on the devices.

The paper's datasets are small (CIFAR-10's training split is 150 MB as uint8,
SVHN's train+extra 1.9 GB), so config.input_pipeline='device' puts the whole
training split, as uint8, on every device, and draws, preprocesses and
augments every batch inside compiled code: after start-up the host only
dispatches, and a step never waits for it.

A global batch is a pure function of (seed, step), whatever the number of
devices and processes. Epoch e = step // steps_per_epoch visits the split in
an order seeded by (seed, e) (`epoch_order`, a permutation); step takes its
positions [b * B, (b + 1) * B), with b = step % steps_per_epoch and B the
global batch size, so each epoch leaves out the num_train % B examples at its
last positions (different ones each epoch), as the streaming path drops its
incomplete batches. Crop offsets and flips are seeded by (seed, epoch,
example). Each device computes only its own rows of the batch (`draw_rows`)
and gathers them from its own copy of the split: drawing needs no
communication, and 1 or 8 devices, one process or several, or a run resumed
on another topology see the same examples, offsets and flips (the same bits,
unless a ZCA matmul rounds differently for fewer rows), so their losses
differ by float rounding only.

The price is memory and start-up: every process reads the whole split and
copies it to each of its devices, not 1/devices of it (experiments/README.md
records the measured start-up times).

The streaming path draws from the same distribution (a test compares them)
but not the same stream.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing

# Independent random streams derived from config.seed.
_ORDER_STREAM, _AUGMENT_STREAM = 1, 2
# Feistel rounds of `epoch_order`.
_FEISTEL_ROUNDS = 8


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


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective integer hash of uint32 values (murmur3's finalizer)."""
  x ^= x >> 16
  x *= jnp.uint32(0x85EBCA6B)
  x ^= x >> 13
  x *= jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def epoch_order(key: jax.Array, positions: jax.Array,
                num_examples: int) -> jax.Array:
  """The examples at `positions` of a random permutation of num_examples.

  A Feistel network keyed by `key` on the smallest [0, 4^k) that holds the
  examples, walked until it lands inside [0, num_examples): a bijection
  computed one position at a time, so a step costs O(batch), where sorting
  the split (jax.random.permutation) would cost O(split) on every device at
  every step. Integer hashes, not threefry, in the rounds: threefry added
  seconds of compilation.
  """
  half = max(1, (int(num_examples - 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

  def permute(x):
    left, right = x >> half, x & mask
    for r in range(_FEISTEL_ROUNDS):
      left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
    return (left << half) | right

  def outside(x):
    return x >= num_examples

  # Cycle walking: [0, num_examples) is over a quarter of the domain, so a
  # few steps on average; every walk ends, since permute is a bijection.
  examples = jax.lax.while_loop(
      lambda x: jnp.any(outside(x)),
      lambda x: jnp.where(outside(x), permute(x), x),
      permute(positions.astype(jnp.uint32)))
  return examples.astype(jnp.int32)


def draw_rows(data: dict[str, jax.Array], prep: preprocessing.Preprocessing,
              index: jax.Array, first_row: jax.Array, num_rows: int, *,
              seed: int, steps_per_epoch: int, batch_size: int, pad: int,
              flip: bool) -> dict[str, jax.Array]:
  """Rows [first_row, first_row + num_rows) of the global batch of step
  `index`, from the whole split in `data`.

  Nothing here depends on the device layout, so any split of a batch into
  rows draws the same batch.
  """
  epoch, offset = jnp.divmod(index, steps_per_epoch)
  base = jax.random.key(seed)
  order_key = jax.random.fold_in(
      jax.random.fold_in(base, _ORDER_STREAM), epoch)
  positions = offset * batch_size + first_row + jnp.arange(num_rows)
  num_examples = data['label'].shape[0]
  examples = epoch_order(order_key, positions, num_examples)
  images = prep.apply_jax(data['image'][examples])
  augment_key = jax.random.fold_in(
      jax.random.fold_in(base, _AUGMENT_STREAM), epoch)
  keys = jax.vmap(functools.partial(jax.random.fold_in,
                                    augment_key))(examples)
  images = jax.vmap(functools.partial(augment, pad=pad, flip=flip))(
      images, keys)
  return {'image': images, 'label': data['label'][examples]}


class DeviceTrainBatches:
  """The training split on the devices; `batch(index)` draws a global batch.

  Works with either parallel strategy: over the Jit strategy's global mesh
  it returns (batch, ...) arrays sharded on the data axis; over the Pmap
  strategy's local mesh, (local devices, batch per device, ...) arrays laid
  out as pmap wants them. Build it with `from_dataset` (training) or
  `from_arrays` (data already in memory, e.g. a benchmark's).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               steps_per_epoch: int, prep: preprocessing.Preprocessing,
               config: ml_collections.ConfigDict, strategy: Any):
    """Puts the whole split (uint8 images, labels) on every device."""
    mesh = strategy.mesh
    axis = mesh.axis_names[0]
    # Rows per device; devices of other processes draw the other rows.
    device_rows = config.batch_size // jax.device_count()
    data = strategy.replicate({
        'image': np.asarray(images),
        'label': np.asarray(labels).astype(np.int32)})
    # The transform's arrays are arguments, not constants baked into the
    # program (a CIFAR ZCA matrix is 38 MB).
    prep_arrays = {
        'shift': prep.shift, 'scale': prep.scale,
        **({'zca': prep.zca} if prep.zca is not None else {})}

    stacked = strategy.stacked_batches
    first_shard = strategy.first_shard  # This mesh's first global position.
    rows = functools.partial(
        draw_rows, num_rows=device_rows, seed=config.seed,
        steps_per_epoch=steps_per_epoch, batch_size=config.batch_size,
        pad=config.augment_pad, flip=config.augment_flip)

    def draw(data, prep_arrays, index):
      # No collective: on XLA:CPU a draw may run beside a train step (see
      # parallel.waits_for_each_program).
      position = first_shard + jax.lax.axis_index(axis)
      batch = rows(data, dataclasses.replace(prep, **prep_arrays), index,
                   position * device_rows)
      return jax.tree.map(lambda x: x[None], batch) if stacked else batch

    replicated = jax.sharding.PartitionSpec()
    split = jax.sharding.PartitionSpec(axis)
    # draw(*inputs, index) -> the global batch of step `index`; traceable, so
    # the trainer can draw inside its own compiled loop over steps.
    self.draw = jax.shard_map(
        draw, mesh=mesh, in_specs=(replicated, replicated, replicated),
        out_specs=split)
    self.inputs = (data, strategy.replicate(prep_arrays))
    # Explicit: from replicated inputs XLA would call a 1-device batch
    # replicated, and the train step would see another sharding.
    self._draw_jit = jax.jit(
        self.draw, out_shardings=jax.sharding.NamedSharding(mesh, split))

  @classmethod
  def from_dataset(cls, dataset: 'input_pipeline.Dataset',
                   info: 'input_pipeline.DatasetInfo',
                   prep: preprocessing.Preprocessing,
                   config: ml_collections.ConfigDict,
                   strategy: Any) -> 'DeviceTrainBatches':
    """The dataset's training split (validation tail excluded)."""
    # Digits and folders are in memory; TFDS splits are read once, uncached.
    examples = dataset.head(input_pipeline.TRAIN, info.num_train)
    # num_train // batch_size: input_pipeline.steps_per_epoch's value too,
    # which cuts the split into device-count shards of batch / devices each.
    steps_per_epoch = input_pipeline.full_batches(info.num_train, 1,
                                                  config.batch_size)
    return cls(examples['image'], examples['label'], steps_per_epoch, prep,
               config, strategy)

  @classmethod
  def from_arrays(cls, images: np.ndarray, labels: np.ndarray,
                  prep: preprocessing.Preprocessing,
                  config: ml_collections.ConfigDict,
                  strategy: Any) -> 'DeviceTrainBatches':
    """A training split held in memory."""
    steps_per_epoch = input_pipeline.full_batches(len(images), 1,
                                                  config.batch_size)
    return cls(images, labels, steps_per_epoch, prep, config, strategy)

  def batch(self, index: int) -> dict[str, jax.Array]:
    """The global batch of step `index` (0-based), on the devices."""
    return self._draw_jit(*self.inputs, np.int32(index))
