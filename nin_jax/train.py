"""Training and evaluation: pure compiled steps and the loop around them.

`train_step` and `eval_step` are pure functions of (state, batch[, key]);
`train_and_evaluate` wires them to the input pipeline, a device mesh, the
checkpointer and the metric writers. Nothing here reads flags.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

from absl import logging
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nin_jax import checkpointing
from nin_jax import config_checks
from nin_jax import device_input
from nin_jax import errors
from nin_jax import files
from nin_jax import image_folder
from nin_jax import input_pipeline
from nin_jax import metric_writers
from nin_jax import models
from nin_jax import optimizer
from nin_jax import parallel
from nin_jax import preprocessing
from nin_jax import trained_run

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


def initialized_from(init_from: str, state: TrainState) -> TrainState:
  """`state` with the parameters (and BatchNorm statistics) of config.init_from;
  the optimizer state fits them as it is (it depends on shapes only)."""
  variables = trained_run.initial_variables(init_from,
                                        _variables(state, state.params))
  return state.replace(params=variables['params'],
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


def accumulate(total: Metrics | None, metrics: Metrics) -> Metrics:
  """total + metrics, field by field; None is the empty total."""
  return metrics if total is None else jax.tree.map(jnp.add, total, metrics)


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
               dropout_key: jax.Array,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One SGD step; the dropout key is folded with the step.

  Under jit the batch is the global batch and XLA derives the cross-device
  reductions. Under pmap (`axis_name` set) each device sees its shard, and
  gradients are averaged and metrics summed over `axis_name` here.
  """
  key = jax.random.fold_in(dropout_key, state.step)
  if axis_name is not None:  # Different masks on different devices.
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
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
  metrics = compute_metrics(logits, batch['label'])
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.psum(metrics, axis_name)
  state = state.apply_gradients(
      grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  return state, metrics


def train_steps(state: TrainState, inputs: Any, dropout_key: jax.Array,
                first_index: jax.Array, num_steps: jax.Array, *,
                draw: Callable[..., dict[str, jax.Array]],
                step_fn: Callable[..., tuple[TrainState, Metrics]] = train_step
                ) -> tuple[TrainState, Metrics]:
  """`num_steps` training steps in one compiled loop; their summed metrics.

  Batch `first_index + i` is `draw(*inputs, first_index + i)`, drawn on the
  devices, so the host dispatches once for all the steps. `num_steps` is a
  traced value: every count shares one compilation.
  """
  def step(state, index):
    return step_fn(state, draw(*inputs, index), dropout_key)

  def body(i, carry):
    state, sums = carry
    state, metrics = step(state, first_index + i)
    return state, accumulate(sums, metrics)

  # Zeros shaped like one step's metrics (traced only, never run).
  shapes = jax.eval_shape(step, state, first_index)[1]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.lax.fori_loop(0, num_steps, body, (state, zeros))


def eval_step(state: TrainState, batch: dict[str, jax.Array],
              axis_name: str | None = None) -> Metrics:
  logits = state.apply_fn(_variables(state, state.params), batch['image'],
                          train=False)
  metrics = compute_metrics(logits, batch['label'], batch['mask'])
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


# --- The loop ------------------------------------------------------------------


class _Window:
  """Summed metrics and training wall time since the last log line."""

  def __init__(self):
    self.sums = None
    self._steps = 0  # Steps whose time is on the clock.
    self._seconds = 0.0
    self._since = time.perf_counter()

  def add(self, sums: Metrics, steps: int) -> None:
    """Adds the summed metrics of `steps` more steps."""
    self.sums = accumulate(self.sums, sums)
    self._steps += steps

  def seconds(self) -> float:
    running = 0.0 if self._since is None else time.perf_counter() - self._since
    return self._seconds + running

  def stop_clock(self) -> None:
    # Steps run asynchronously: wait for the dispatched ones, or their time
    # would fall into the pause (an evaluation) and inflate img/s.
    jax.block_until_ready(self.sums)
    self._seconds = self.seconds()
    self._since = None

  def start_clock(self) -> None:
    self._since = time.perf_counter()

  def restart_clock(self) -> None:
    """Forgets the time so far (e.g. compilation) but keeps the metrics."""
    self._steps, self._seconds = 0, 0.0
    self.start_clock()

  def progress(self) -> dict[str, Any]:
    """The sums so far, exactly, for a checkpoint (float32 is exact in JSON)."""
    if self.sums is None:
      return {}
    return {k: float(v) for k, v in jax.device_get(self.sums).items()}

  def restore(self, sums: dict[str, float]) -> None:
    if sums:
      self.sums = {k: np.float32(v) for k, v in sums.items()}

  def steps_per_second(self) -> float:
    # Blocks until the window's steps have run, so the clock is honest.
    jax.block_until_ready(self.sums)
    seconds = self.seconds()
    return self._steps / seconds if self._steps and seconds > 0 else 0.0


def evaluate(strategy: parallel.Jit | parallel.Pmap, state: TrainState,
             batches) -> dict[str, float]:
  """Mean metrics over every batch, and the number of examples seen."""
  total = None
  wait = parallel.waits_for_each_program()
  for batch in batches:
    total = accumulate(total, strategy.eval_step(state,
                                                 strategy.put_batch(batch)))
    if wait:  # The batches' programs are independent of each other.
      jax.block_until_ready(total)
  total = strategy.metrics(total)
  summary = summarize(total)
  summary['num_examples'] = float(jax.device_get(total['count']))
  return summary


# What steps_per_dispatch = 0 means (configs/default.py says why).
DEFAULT_STEPS_PER_DISPATCH = 10


def resolve_steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """config.steps_per_dispatch, with 0 ("auto") made concrete."""
  return config.steps_per_dispatch or DEFAULT_STEPS_PER_DISPATCH


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
  files.write_atomically(path, text)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Step counts derived from the config and the dataset size."""
  steps_per_epoch: int
  num_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def make(cls, config: ml_collections.ConfigDict,
           info: input_pipeline.DatasetInfo, process_count: int) -> '_Plan':
    steps_per_epoch = input_pipeline.steps_per_epoch(info, config,
                                                     process_count)
    num_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * steps_per_epoch))
    return cls(
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        log_every=config.log_every_steps,
        eval_every=(config.eval_every_steps if config.eval_every_steps > 0
                    else steps_per_epoch),
        checkpoint_every=(config.checkpoint_every_steps
                          if config.checkpoint_every_steps > 0
                          else steps_per_epoch))

  def next_event(self, step: int) -> int:
    """The first step after `step` that logs, evaluates, saves or ends."""
    return min([self.num_steps] + [
        (step // every + 1) * every
        for every in (self.log_every, self.eval_every, self.checkpoint_every)])

  def dispatch_end(self, step: int, steps_per_dispatch: int) -> int:
    """Where the dispatch that starts at `step` ends: at the next event or
    the next multiple of steps_per_dispatch, whichever comes first.

    A function of the step alone, so a resumed run (which starts where a
    dispatch of the interrupted one ended) groups its steps, and therefore
    sums its float32 metrics, exactly as the uninterrupted run did.
    """
    return min(self.next_event(step),
               (step // steps_per_dispatch + 1) * steps_per_dispatch)


class _DeadReluMonitor:
  """Warns once the class maps have been all zero for `patience` steps."""

  def __init__(self, patience: int, num_classes: int, dead_steps: int = 0):
    self._patience = patience
    self._num_classes = num_classes
    self.dead_steps = dead_steps  # Consecutive steps, kept in checkpoints.

  def update(self, dead_fraction: float, steps: int) -> None:
    before = self.dead_steps
    self.dead_steps = self.dead_steps + steps if dead_fraction == 1.0 else 0
    if before < self._patience <= self.dead_steps:
      logging.warning(
          'Every logit of every example has been exactly 0 for %d steps '
          '(loss stuck at ln(%d) = %.4f): the ReLU after the last 1x1 layer has '
          'died and training cannot recover. Restart in a new workdir with a '
          'lower --config.learning_rate, a longer --config.warmup_epochs, or '
          '--config.model.use_batchnorm=True.', self.dead_steps,
          self._num_classes, math.log(self._num_classes))


def _diverged(what: str, step: int,
              checkpointer: checkpointing.Checkpointer) -> errors.TrainingDiverged:
  last = checkpointer.latest_step()
  saved = (f'The last good checkpoint is step {last} in '
           f'{checkpointer.directory}' if last is not None
           else 'No checkpoint had been saved yet')
  return errors.TrainingDiverged(
      f'{what} by step {step}; nothing from this point was saved. {saved}. '
      'Try a lower --config.learning_rate, a longer --config.warmup_epochs '
      'or --config.grad_clip_norm=1 in a new --workdir.')


def _check_finite(loss: float, step: int,
                  checkpointer: checkpointing.Checkpointer) -> None:
  if not math.isfinite(loss):
    raise _diverged(f'Training loss became {loss}', step, checkpointer)


class _StopSignals:
  """Turns SIGTERM and SIGINT into "save a checkpoint and exit".

  One process: Python handlers note the signal and the loop stops after the
  current step. Several processes: JAX's preemption service (which Orbax's
  `reached_preemption` asks) hears SIGTERM on any process and makes all of
  them agree on the step to stop at; SIGINT is forwarded to it as SIGTERM.
  A second SIGINT interrupts at once.
  """

  def __init__(self, checkpointer: checkpointing.Checkpointer):
    self._checkpointer = checkpointer
    self._distributed = jax.process_count() > 1
    self.received = None
    self._previous = {}

  def __enter__(self) -> '_StopSignals':
    if threading.current_thread() is not threading.main_thread():
      return self  # Handlers can only be set from the main thread.
    wanted = [signal.SIGINT] + ([] if self._distributed else [signal.SIGTERM])
    for signum in wanted:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    logging.warning('%s received: stopping after this step to save a '
                    'checkpoint (send SIGINT again to stop at once).', name)
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if self._distributed:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service.
    self.received = name

  def should_stop(self, first_step: int, last_step: int) -> bool:
    """Whether to stop after `last_step`, having just run from `first_step`."""
    if self._distributed:
      # JAX's service agrees on one step number to stop at and answers "yes"
      # for that number only, so every step that ran is asked.
      if any(self._checkpointer.reached_preemption(step)
             for step in range(first_step, last_step + 1)):
        self.received = self.received or 'SIGTERM'
        return True
      return False
    return self.received is not None


def _check_same_config_everywhere(config: ml_collections.ConfigDict) -> None:
  """Stops every process if any was launched with a different config."""
  if jax.process_count() == 1:
    return
  text = config.to_json_best_effort(sort_keys=True).encode()
  digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
  digests = multihost_utils.process_allgather(digest)
  differ = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
  if differ:
    raise errors.ConfigError(
        f'Processes {differ} were started with a config that differs from '
        'process 0\'s; launch every process with the same --config and '
        '--config.* flags.')


def _check_workdir_writable(workdir: str) -> None:
  """Fails early, with the reason, if the workdir cannot be written.

  Creates nothing: a run that fails later (e.g. no dataset) leaves no
  empty workdir behind.
  """
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  reason = None
  if not os.path.isdir(existing):
    reason = f'{existing} is not a directory'
  elif not os.access(existing, os.W_OK | os.X_OK):
    reason = f'{existing} is not writable'
  elif existing == workdir:  # Also catches a read-only or full disk.
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    try:
      with open(probe, 'w', encoding='utf-8') as f:
        f.write('ok')
      os.remove(probe)
    except OSError as e:
      reason = e.strerror or str(e)
  if reason:
    raise errors.WorkdirError(
        f'Cannot write to the workdir {workdir}: {reason}. Pick a writable '
        '--workdir (or free some disk space).')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains (or resumes) to the configured length; returns final eval metrics.

  Raises errors.UserError (bad config, data or workdir; nothing changed),
  errors.TrainingDiverged (non-finite loss; nothing bad saved) or
  errors.Preempted (SIGTERM/SIGINT; a checkpoint of the current step saved).
  """
  workdir = os.path.abspath(workdir)
  # Everything a user can get wrong is checked before data is read.
  config_checks.validate(config)
  if image_folder.is_folder(config.dataset):
    # Recorded with an absolute root, so evaluate/predict work from anywhere.
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset = image_folder.dataset_name(image_folder.root_of(
        config.dataset))
  parallel.check_batch_size('batch_size', config.batch_size)
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size)
  _check_same_config_everywhere(config)
  changed = config_checks.check_resumable(config, workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_writer = process_index == 0
  if is_writer:
    _check_workdir_writable(workdir)

  # Data first: a missing dataset must fail before anything is compiled.
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  if info.num_classes != config.num_classes:
    raise errors.ConfigError(
        f'Dataset {info.name!r} has {info.num_classes} classes but '
        f'config.num_classes={config.num_classes}; pass '
        f'--config.num_classes={info.num_classes}.')
  # A resumed run keeps the transform it trained with.
  prep = preprocessing.recorded(workdir)
  prep_is_recorded = prep is not None
  if prep_is_recorded:
    preprocessing.check_matches(prep, config)
  else:
    prep = input_pipeline.fit_preprocessing(dataset, info, config)
  plan = _Plan.make(config, info, process_count)
  strategy = parallel.create(config.parallelism, train_step, eval_step)
  model = models.create_model(config, axis_name=strategy.axis_name)
  learning_rate_fn = optimizer.create_learning_rate_fn(
      config, plan.steps_per_epoch, plan.num_steps)
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(config, model, info.image_shape, init_key,
                             learning_rate_fn)
  # A fresh run's starting point is read here, before the workdir is touched;
  # a resumed run continues from its checkpoint instead.
  started_from = (bool(config.init_from)
                  and not checkpointing.has_checkpoint(workdir))
  if started_from:
    state = initialized_from(config.init_from, state)
  state = strategy.put_state(state)

  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  with contextlib.ExitStack() as cleanup:
    # Checkpointer and metric files are closed even if training fails.
    cleanup.callback(checkpointer.close)
    progress = {}
    restored = checkpointer.restore_latest(strategy.host_state(state),
                                           dropout_key)
    start_step = 0
    if restored:  # Any device count or strategy: state is resharded.
      start_step, host_state, dropout_key, progress = restored
      state = strategy.put_state(host_state)
      logging.info('Resumed from checkpoint at step %d in %s', start_step,
                   checkpointer.directory)
      if changed:
        logging.info('Config fields changed since the last run: %s',
                     ', '.join(changed))
      if config.init_from:
        logging.info('config.init_from is ignored: the run resumed.')
    elif config.init_from and not started_from:  # No checkpoint was readable.
      state = strategy.put_state(initialized_from(config.init_from,
                                                  strategy.host_state(state)))
    dropout_key = strategy.put_key(dropout_key)
    if is_writer:
      os.makedirs(workdir, exist_ok=True)
      _save_config(config, workdir, start_step)
      files.write_atomically(os.path.join(workdir, 'dataset.json'),
                        json.dumps(dataclasses.asdict(info), indent=2))
      if not prep_is_recorded:
        preprocessing.record(prep, workdir)

    eval_local_batch = config.eval_batch_size // process_count
    # Model selection looks at the validation split when there is one; the
    # test split is evaluated at the end only, then.
    periodic_split = (input_pipeline.VALIDATION if info.num_validation
                      else input_pipeline.TEST)
    # At the end: validation (if any), then test, whose result is returned.
    final_splits = ([input_pipeline.TEST] if periodic_split == input_pipeline.TEST
                    else [periodic_split, input_pipeline.TEST])

    def run_eval(split: str, step: int) -> dict[str, float]:
      result = evaluate(strategy, state, input_pipeline.eval_batches(
          dataset, info, prep, eval_local_batch, process_index,
          process_count, split))
      logging.info('%s at step %d: accuracy %.2f%%, loss %.4f (%d examples)',
                   split, step, 100 * result['accuracy'], result['loss'],
                   result['num_examples'])
      return result

    writer = metric_writers.MetricWriter(workdir, enabled=is_writer,
                                         resumed_step=start_step)
    cleanup.callback(writer.close)
    if start_step >= plan.num_steps:
      logging.info('Training already finished at step %d (of %d); nothing '
                   'to do. Final evaluation:', start_step, plan.num_steps)
      result = {}
      for split in final_splits:  # Logged unless a previous run did.
        result = run_eval(split, start_step)
        if not writer.logged(start_step, split):
          writer.write(start_step, split, result)
      return result
    if start_step and start_step % plan.eval_every == 0 and not writer.logged(
        start_step, periodic_split):
      # Killed between the checkpoint and the evaluation of that step.
      writer.write(start_step, periodic_split,
                   run_eval(periodic_split, start_step))

    progress_log = metric_writers.ProgressLogger(plan.num_steps,
                                                 plan.steps_per_epoch)
    logging.info('Training %d steps (%d per epoch, global batch %d) on %d '
                 'devices; %d training and %d evaluation examples.',
                 plan.num_steps, plan.steps_per_epoch, config.batch_size,
                 jax.device_count(), info.num_train, info.num_eval)

    if config.input_pipeline == 'device':
      batches = device_input.DeviceTrainBatches.from_dataset(
          dataset, info, prep, config, strategy)
      next_batch = batches.batch
    else:
      stream = input_pipeline.train_batches(
          dataset, info, prep, config, start_step, process_index,
          process_count)
      next_batch = lambda index: strategy.put_batch(next(stream))
    steps_per_dispatch = resolve_steps_per_dispatch(config)
    if (steps_per_dispatch > 1 and config.input_pipeline == 'device'
        and strategy.compile_steps):
      # Several steps per dispatch: the host is out of the loop.
      fused = strategy.compile_steps(functools.partial(
          train_steps, draw=batches.draw, step_fn=train_step))

      def run_steps(state, first, count):
        return fused(state, batches.inputs, dropout_key, np.int32(first),
                     np.int32(count))
    else:
      def run_steps(state, first, count):
        sums = None
        for index in range(first, first + count):
          state, metrics = strategy.train_step(state, next_batch(index),
                                               dropout_key)
          sums = accumulate(sums, strategy.metrics(metrics))
        return state, sums
    window = _Window()
    window.restore(progress.get('window', {}))
    dead_relu = _DeadReluMonitor(config.dead_relu_patience, config.num_classes,
                                 progress.get('dead_relu_steps', 0))
    stop = cleanup.enter_context(_StopSignals(checkpointer))

    def save(step: int) -> None:
      """Checkpoints `step` unless it holds non-finite values."""
      if window.sums is not None:
        _check_finite(summarize(window.sums)['loss'], step, checkpointer)
      host_state = strategy.host_state(state)
      if not checkpointing.state_is_finite(host_state.params):
        raise _diverged('Parameters became non-finite', step, checkpointer)
      checkpointer.save(step, host_state, dropout_key, {
          'step': step,
          # Where the input resumes: batch `step` of the stream.
          'epoch': step // plan.steps_per_epoch,
          'batch_in_epoch': step % plan.steps_per_epoch,
          'input_pipeline': config.input_pipeline,
          'window': window.progress(),
          'dead_relu_steps': dead_relu.dead_steps,
      })

    result = {}
    step = start_step
    while step < plan.num_steps:
      count = plan.dispatch_end(step, steps_per_dispatch) - step
      state, sums = run_steps(state, step, count)
      window.add(sums, count)
      previous, step = step, step + count
      if previous == start_step:  # Its time is mostly compilation.
        jax.block_until_ready(sums)
        logging.info('First dispatch (%d steps, compilation included) took '
                     '%.1f s.', count, window.seconds())
        window.restart_clock()

      last_step = step == plan.num_steps
      if step % plan.log_every == 0 or last_step:
        summary = summarize(window.sums)
        _check_finite(summary['loss'], step, checkpointer)
        steps_per_second = window.steps_per_second()
        summary['learning_rate'] = float(learning_rate_fn(step - 1))
        if steps_per_second > 0:  # Unknown while only compilation was timed.
          summary['images_per_sec'] = steps_per_second * config.batch_size
        writer.write(step, 'train', summary)
        progress_log.log(step, summary, steps_per_second)
        dead_relu.update(summary['dead_fraction'],
                         int(jax.device_get(window.sums['count']))
                         // config.batch_size)
        window = _Window()

      stopping = stop.should_stop(previous + 1, step)
      periodic_save = step % plan.checkpoint_every == 0 or last_step
      run_evaluation = (step % plan.eval_every == 0 or last_step) and not stopping
      if periodic_save or stopping or run_evaluation:
        window.stop_clock()  # Saving and evaluating is not training time.
      if periodic_save or stopping:
        save(step)
      if stopping:
        logging.warning('Saved a checkpoint at step %d in %s after %s; rerun '
                        'the same command to resume.', step,
                        checkpointer.directory, stop.received)
        raise errors.Preempted(step, stop.received)
      if run_evaluation:
        for split in final_splits if last_step else [periodic_split]:
          result = run_eval(split, step)
          writer.write(step, split, result)
      if periodic_save or run_evaluation:
        window.start_clock()

    return result
