"""Data parallelism: where state and batches live, and the compiled steps.

Two strategies run the same `train_step` and `eval_step`:
  * 'jit' (default): one program over a `jax.make_mesh` of every device of
    every process; the global batch is sharded on the `data` axis, the state
    replicated, and XLA inserts the gradient all-reduce.
  * 'pmap': `jax.pmap` over each process's local devices with the cross-device
    reductions written out (`axis_name='batch'`), for users who know that
    model. pmap is in maintenance mode in JAX; prefer 'jit'.
Both keep checkpoints in the same layout (one unreplicated copy of the state),
so a run can change strategy or device count when it resumes.
"""

import functools
from typing import Any, Callable

import jax
import numpy as np

from nin_jax import errors

# The choices of config.parallelism, checked by config_checks.validate.
STRATEGIES = ('jit', 'pmap')
PMAP_AXIS = 'batch'

Batch = dict[str, np.ndarray]


def check_batch_size(name: str, size: int) -> None:
  """Every device must get the same, non-empty share of a batch
  (config_checks.validate calls it once JAX knows every device)."""
  devices = jax.device_count()
  if size <= 0 or size % devices:
    raise errors.ConfigError(
        f'config.{name}={size} must be a positive multiple of the {devices} '
        f'devices; pass e.g. --config.{name}={max(1, size // devices) * devices}.')


class Jit:
  """One jitted program over a 1-D `data` mesh of all devices."""
  axis_name = None  # XLA derives the reductions from the shardings.
  # For the device-resident input: the mesh covers every device, so this
  # mesh's first position is global position 0, and batches are flat
  # (batch, ...).
  first_shard = 0
  stacked_batches = False

  def __init__(self, train_step: Callable[..., Any],
               eval_step: Callable[..., Any]):
    # Auto axes: XLA propagates the shardings (jax.make_mesh defaults to
    # Explicit axes, which would put shardings into every array's type).
    self.mesh = jax.make_mesh((jax.device_count(),), ('data',),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self._batch = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec('data'))
    self._replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())
    self.train_step = jax.jit(
        train_step,
        in_shardings=(self._replicated, self._batch, self._replicated),
        out_shardings=(self._replicated, self._replicated), donate_argnums=0)
    self.eval_step = jax.jit(eval_step,
                             in_shardings=(self._replicated, self._batch),
                             out_shardings=self._replicated)

  def compile_steps(self, steps_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Jits `train.train_steps`-like functions: several steps per dispatch.

    (state, inputs, key, first_index, num_steps) -> (state, summed metrics);
    the inputs keep the shardings they were placed with.
    """
    return jax.jit(steps_fn, donate_argnums=0,
                   out_shardings=(self._replicated, self._replicated))

  def _replicate(self, x: Any) -> jax.Array:
    """The same value on every device of every process."""
    if getattr(x, 'sharding', None) == self._replicated:
      return x  # Already placed (e.g. restored into this sharding).
    # Each process holds the whole value; device_put cannot address the
    # devices of other processes, this can.
    return jax.make_array_from_process_local_data(self._replicated,
                                                  np.asarray(x))

  def put_state(self, state: Any) -> Any:
    return jax.tree.map(self._replicate, state)

  replicate = put_state

  def put_key(self, key: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(
        self._replicate(jax.random.key_data(key)),
        impl=jax.random.key_impl(key))

  def put_batch(self, local_batch: Batch) -> Any:
    """Assembles each process's local rows into one global, sharded array."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._batch, x),
        local_batch)

  def host_state(self, state: Any) -> Any:
    """The state as checkpoints store it."""
    return state

  def metrics(self, metrics: Any) -> Any:
    return metrics


class Pmap:
  """`jax.pmap` over local devices; reductions over the 'batch' axis."""
  axis_name = PMAP_AXIS

  stacked_batches = True  # Batches are (local devices, per device, ...).
  compile_steps = None  # One step per dispatch.

  def __init__(self, train_step: Callable[..., Any],
               eval_step: Callable[..., Any]):
    self._devices = jax.local_devices()
    self.mesh = jax.sharding.Mesh(np.array(self._devices), (PMAP_AXIS,))
    # Mesh positions are numbered over all devices of all processes: the
    # device at position i draws rows i * B/devices onwards of each batch.
    self.first_shard = jax.process_index() * len(self._devices)
    self.train_step = jax.pmap(
        functools.partial(train_step, axis_name=PMAP_AXIS),
        axis_name=PMAP_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
    self.eval_step = jax.pmap(
        functools.partial(eval_step, axis_name=PMAP_AXIS),
        axis_name=PMAP_AXIS)

  def put_state(self, state: Any) -> Any:
    """One copy per local device, stacked on a new leading axis."""
    n = len(self._devices)

    # The sharding pmap gives its outputs: so the first step, which gets this
    # state, and later ones, which get pmap's output, share one compilation.
    sharding = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(PMAP_AXIS))

    def replicate(x):
      stacked = np.broadcast_to(np.asarray(x), (n,) + np.shape(x))
      return jax.device_put(stacked, sharding)

    return jax.tree.map(replicate, state)

  def replicate(self, tree: Any) -> Any:
    """The same value on every local device (not stacked)."""
    return jax.device_put(tree, jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec()))

  def put_key(self, key: jax.Array) -> jax.Array:
    return key

  def put_batch(self, local_batch: Batch) -> Any:
    n = len(self._devices)
    return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]),
                        local_batch)

  def host_state(self, state: Any) -> Any:
    return jax.tree.map(_first_copy, state)

  def metrics(self, metrics: Any) -> Any:
    return jax.tree.map(_first_copy, metrics)  # Already summed over devices.


def _first_copy(x: jax.Array) -> jax.Array:
  """The first local device's copy of a stacked pmap value.

  Read from that device alone: `x[0]` would compile a program over every
  local device with collectives in it, one per leaf, and on XLA:CPU several
  such independent programs in flight can deadlock (see
  `waits_for_each_program`).
  """
  return x.addressable_data(0).reshape(x.shape[1:])


def waits_for_each_program() -> bool:
  """Whether multi-device programs must run one at a time on this host.

  XLA:CPU runs each device's part of a program on one pool that has a thread
  per device. Two independent programs with collectives in flight at once
  (e.g. two evaluation batches) can each hold some of those threads while
  they wait in a collective for the rest: a deadlock, which XLA ends with
  an abort after 40 s. Programs that take each other's outputs (the train
  steps) are safe. GPUs and TPUs have no such pool.
  """
  devices = jax.local_devices()
  return len(devices) > 1 and devices[0].platform == 'cpu'


def create(strategy: str, train_step: Callable[..., Any],
           eval_step: Callable[..., Any]) -> Jit | Pmap:
  """The strategy named by a validated config.parallelism."""
  return {'jit': Jit, 'pmap': Pmap}[strategy](train_step, eval_step)
