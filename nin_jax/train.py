"""Training and evaluation: pure compiled steps and the loop around them.

`train_step` and `eval_step` are pure functions of (state, batch[, key]);
`train_and_evaluate` wires them to the input pipeline, a device mesh, the
checkpointer and the metric writers. Nothing here reads flags.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nin_jax import checkpointing
from nin_jax import errors
from nin_jax import input_pipeline
from nin_jax import metric_writers
from nin_jax import models
from nin_jax import optimizer

Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step; BatchNorm statistics if any."""
  batch_stats: Any = None


def create_train_state(config: ml_collections.ConfigDict, model: models.NiN,
                       image_shape: tuple[int, ...], key: jax.Array,
                       learning_rate_fn: optax.Schedule) -> TrainState:
  """Initializes parameters and optimizer state (on the default device)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': key}, dummy)
  params = variables['params']
  tx = optimizer.create_optimizer(config, learning_rate_fn, params)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def compute_metrics(logits: jax.Array, labels: jax.Array,
                    mask: jax.Array | None = None) -> Metrics:
  """Sums over the batch (so windows and shards add up exactly).

  `dead` counts examples whose logits are all exactly zero: the signature of
  the dead-ReLU failure.
  """
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  dead = jnp.all(logits == 0, axis=-1).astype(jnp.float32)
  return {
      'loss': jnp.sum(losses * mask),
      'correct': jnp.sum(correct * mask),
      'dead': jnp.sum(dead * mask),
      'count': jnp.sum(mask),
  }


def summarize(sums: dict[str, Any]) -> dict[str, float]:
  """Turns summed metrics into means: loss, accuracy, dead_fraction."""
  sums = jax.device_get(sums)
  count = max(float(sums['count']), 1.0)
  return {
      'loss': float(sums['loss']) / count,
      'accuracy': float(sums['correct']) / count,
      'dead_fraction': float(sums['dead']) / count,
  }


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: dict[str, jax.Array],
               dropout_key: jax.Array) -> tuple[TrainState, Metrics]:
  """One SGD step on a global batch; the dropout key is folded with the step."""
  key = jax.random.fold_in(dropout_key, state.step)
  mutable = ['batch_stats'] if state.batch_stats else False

  def loss_fn(params):
    out = state.apply_fn(_variables(state, params), batch['image'], train=True,
                         rngs={'dropout': key}, mutable=mutable)
    logits, updates = out if mutable else (out, {})
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']))
    return loss, (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (logits, updates)), grads = grad_fn(state.params)
  state = state.apply_gradients(
      grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  return state, compute_metrics(logits, batch['label'])


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
  logits = state.apply_fn(_variables(state, state.params), batch['image'],
                          train=False)
  return compute_metrics(logits, batch['label'], batch['mask'])


# --- Devices -------------------------------------------------------------------


class Mesh:
  """A 1-D `data` mesh over every device: batches sharded, state replicated."""

  def __init__(self):
    # Auto axes: XLA propagates the shardings (jax.make_mesh defaults to
    # Explicit axes, which would put shardings into every array's type).
    self.mesh = jax.make_mesh((jax.device_count(),), ('data',),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.batch = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec('data'))
    self.replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each process's local rows into one global, sharded array."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, x),
        local_batch)


def _check_batch_sizes(config: ml_collections.ConfigDict) -> None:
  for name in ('batch_size', 'eval_batch_size'):
    size = config[name]
    if size <= 0 or size % jax.device_count():
      raise errors.ConfigError(
          f'config.{name}={size} must be a positive multiple of the '
          f'{jax.device_count()} devices; pass e.g. '
          f'--config.{name}={max(1, size // jax.device_count()) * jax.device_count()}.')


# --- The loop ------------------------------------------------------------------


class _Window:
  """Summed metrics and training wall time since the last log line."""

  def __init__(self):
    self.sums = None
    self._steps = 0  # Steps whose time is on the clock.
    self._seconds = 0.0
    self._since = time.perf_counter()

  def add(self, metrics: Metrics) -> None:
    self.sums = (metrics if self.sums is None
                 else jax.tree.map(jnp.add, self.sums, metrics))
    self._steps += 1

  def seconds(self) -> float:
    running = 0.0 if self._since is None else time.perf_counter() - self._since
    return self._seconds + running

  def stop_clock(self) -> None:
    self._seconds = self.seconds()
    self._since = None

  def start_clock(self) -> None:
    self._since = time.perf_counter()

  def restart_clock(self) -> None:
    """Forgets the time so far (e.g. compilation) but keeps the metrics."""
    self._steps, self._seconds = 0, 0.0
    self.start_clock()

  def steps_per_second(self) -> float:
    # Blocks until the window's steps have run, so the clock is honest.
    jax.block_until_ready(self.sums)
    seconds = self.seconds()
    return self._steps / seconds if self._steps and seconds > 0 else 0.0


def evaluate(eval_fn: Callable[..., Metrics], state: TrainState,
             batches, mesh: Mesh) -> dict[str, float]:
  """Runs `eval_fn` over every batch and returns mean metrics and the count."""
  total = None
  for batch in batches:
    metrics = eval_fn(state, mesh.global_batch(batch))
    total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
  summary = summarize(total)
  summary['num_examples'] = float(jax.device_get(total['count']))
  return summary


def _save_config(config: ml_collections.ConfigDict, workdir: str,
                 resumed_step: int) -> None:
  """Writes config.json; a different earlier config is kept, not overwritten."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      previous = f.read()
    if previous == text:
      return
    os.replace(path, os.path.join(workdir, f'config.before_step{resumed_step}.json'))
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Step counts derived from the config and the dataset size."""
  local_batch: int  # This process's share of the global batch.
  steps_per_epoch: int
  num_steps: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def make(cls, config: ml_collections.ConfigDict, num_local_train: int,
           process_count: int) -> '_Plan':
    local_batch = config.batch_size // process_count
    steps_per_epoch = num_local_train // local_batch
    if steps_per_epoch == 0:
      raise errors.ConfigError(
          f'config.batch_size={config.batch_size} is larger than the '
          f'{num_local_train * process_count} training examples; lower it.')
    num_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * steps_per_epoch))
    return cls(
        local_batch=local_batch,
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        eval_every=(config.eval_every_steps if config.eval_every_steps > 0
                    else steps_per_epoch),
        checkpoint_every=(config.checkpoint_every_steps
                          if config.checkpoint_every_steps > 0
                          else steps_per_epoch))


class _DeadReluMonitor:
  """Warns once the class maps have been all zero for `patience` windows."""

  def __init__(self, patience: int, num_classes: int):
    self._patience = patience
    self._num_classes = num_classes
    self._dead_windows = 0

  def update(self, dead_fraction: float) -> None:
    self._dead_windows = self._dead_windows + 1 if dead_fraction == 1.0 else 0
    if self._dead_windows == self._patience:
      logging.warning(
          'Every logit of every example has been exactly 0 for %d log windows '
          '(loss stuck at ln(%d) = %.4f): the ReLU after the last 1x1 layer has '
          'died and training cannot recover. Restart in a new workdir with a '
          'lower --config.learning_rate, a longer --config.warmup_epochs, or '
          '--config.model.kernel_init=he_normal.', self._dead_windows,
          self._num_classes, math.log(self._num_classes))


def _check_finite(loss: float, step: int,
                  checkpointer: checkpointing.Checkpointer) -> None:
  if not math.isfinite(loss):
    raise FloatingPointError(
        f'Training loss became {loss} by step {step}. The last checkpoint is '
        f'step {checkpointer.latest_step()} in {checkpointer.directory}; try a '
        'lower --config.learning_rate or --config.grad_clip_norm=1.')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains (or resumes) to the configured length; returns final eval metrics."""
  workdir = os.path.abspath(workdir)
  _check_batch_sizes(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_writer = process_index == 0

  # Data first: a missing dataset must fail before anything is compiled.
  dataset = input_pipeline.Dataset(config, process_index, process_count)
  info = input_pipeline.get_info(dataset, config)
  if info.num_classes != config.num_classes:
    raise errors.ConfigError(
        f'Dataset {info.name!r} has {info.num_classes} classes but '
        f'config.num_classes={config.num_classes}; pass '
        f'--config.num_classes={info.num_classes}.')
  plan = _Plan.make(config, info.num_train, process_count)
  model = models.create_model(config)
  learning_rate_fn = optimizer.create_learning_rate_fn(
      config, plan.steps_per_epoch, plan.num_steps)
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  mesh = Mesh()
  state = create_train_state(config, model, info.image_shape, init_key,
                             learning_rate_fn)
  state = jax.device_put(state, mesh.replicated)
  dropout_key = jax.device_put(dropout_key, mesh.replicated)

  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  with contextlib.ExitStack() as cleanup:
    # Pending checkpoint writes finish even when training stops with an error.
    cleanup.callback(checkpointer.close)
    start_step = checkpointer.latest_step() or 0
    if start_step:
      state = checkpointer.restore(state, start_step)
      logging.info('Resumed from checkpoint at step %d in %s', start_step,
                   checkpointer.directory)
    if is_writer:
      os.makedirs(workdir, exist_ok=True)
      _save_config(config, workdir, start_step)
      with open(os.path.join(workdir, 'dataset.json'), 'w', encoding='utf-8') as f:
        json.dump(dataclasses.asdict(info), f, indent=2)

    p_train_step = jax.jit(
        train_step, in_shardings=(mesh.replicated, mesh.batch, mesh.replicated),
        out_shardings=(mesh.replicated, mesh.replicated), donate_argnums=0)
    p_eval_step = jax.jit(eval_step,
                          in_shardings=(mesh.replicated, mesh.batch),
                          out_shardings=mesh.replicated)
    eval_local_batch = config.eval_batch_size // process_count

    def run_eval() -> dict[str, float]:
      return evaluate(p_eval_step, state,
                      input_pipeline.eval_batches(dataset, info, config,
                                                  eval_local_batch), mesh)

    if start_step >= plan.num_steps:
      result = run_eval()
      logging.info('Training already finished at step %d (of %d); %s accuracy '
                   '%.2f%%, loss %.4f over %d examples. Nothing to do.',
                   start_step, plan.num_steps, config.eval_split,
                   100 * result['accuracy'], result['loss'],
                   result['num_examples'])
      return result

    writer = metric_writers.MetricWriter(workdir, enabled=is_writer)
    cleanup.callback(writer.close)
    progress = metric_writers.ProgressLogger(plan.num_steps,
                                             plan.steps_per_epoch)
    logging.info('Training %d steps (%d per epoch, global batch %d) on %d '
                 'devices; %d training and %d evaluation examples.',
                 plan.num_steps, plan.steps_per_epoch, config.batch_size,
                 jax.device_count(), info.num_train * process_count,
                 info.num_eval * process_count)

    batches = input_pipeline.train_batches(dataset, info, config,
                                           plan.local_batch, start_step)
    window = _Window()
    dead_relu = _DeadReluMonitor(config.dead_relu_patience, config.num_classes)
    result = {}
    for step in range(start_step + 1, plan.num_steps + 1):
      batch = mesh.global_batch(next(batches))
      state, metrics = p_train_step(state, batch, dropout_key)
      window.add(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info('First step (compilation included) took %.1f s.',
                     window.seconds())
        window.restart_clock()

      last_step = step == plan.num_steps
      if step % config.log_every_steps == 0 or last_step:
        summary = summarize(window.sums)
        _check_finite(summary['loss'], step, checkpointer)
        steps_per_second = window.steps_per_second()
        summary['learning_rate'] = float(learning_rate_fn(step - 1))
        summary['images_per_sec'] = steps_per_second * config.batch_size
        writer.write(step, 'train', summary)
        progress.log(step, summary, 1 / max(steps_per_second, 1e-9))
        dead_relu.update(summary['dead_fraction'])
        window = _Window()

      if step % plan.checkpoint_every == 0 or last_step:
        if window.sums is not None:  # Never save parameters gone bad.
          _check_finite(summarize(window.sums)['loss'], step, checkpointer)
        checkpointer.save(step, state)
      if step % plan.eval_every == 0 or last_step:
        window.stop_clock()  # Evaluation time is not training time.
        result = run_eval()
        writer.write(step, config.eval_split,
                     {k: v for k, v in result.items() if k != 'num_examples'})
        logging.info('%s at step %d: accuracy %.2f%%, loss %.4f (%d examples)',
                     config.eval_split, step, 100 * result['accuracy'],
                     result['loss'], result['num_examples'])
        window.start_clock()

    return result
