"""A training run, from a config and a workdir to the final evaluation.

`train_and_evaluate` reads as the run's phases, each a function below:
  1. `_preflight`: every check a user can fail, before anything is written;
  2. `_load_data`: the dataset, its facts and the input transform;
  3. `_start`: a fresh state (or config.init_from), or the newest checkpoint;
  4. `_record`: config.json, dataset.json, preprocessing.npz;
  5. `_train`: the loop (steps, logs, checkpoints, evaluations, signals);
  6. the final evaluation (also when a finished run is started again).
The compiled steps are in steps.py, the workdir's files in workdir_files.py.
Nothing here reads flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import shutil
import tempfile
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from nin_jax.data import device_input
from nin_jax.data import image_folder
from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.training import checkpointing
from nin_jax.training import config_checks
from nin_jax.training import init_from
from nin_jax.training import metric_writers
from nin_jax.training import parallel
from nin_jax.training import steps
from nin_jax.training import stop_signals


@dataclasses.dataclass(frozen=True)
class _Data:
  """The dataset, its facts and the fitted (or recorded) input transform."""
  dataset: input_pipeline.Dataset
  info: input_pipeline.DatasetInfo
  prep: preprocessing.Preprocessing
  prep_is_recorded: bool  # Read from the workdir (a resumed run).


@dataclasses.dataclass(frozen=True)
class _Run:
  """What stays fixed while a run trains."""
  config: ml_collections.ConfigDict
  workdir: workdir_files.Workdir
  data: _Data
  plan: Plan
  strategy: parallel.Jit | parallel.Pmap
  checkpointer: checkpointing.Checkpointer
  writer: metric_writers.MetricWriter
  # Compiled: each log line reads it, and op by op it would compile its
  # handful of operations in every process.
  learning_rate_fn: Callable[[int], Any]
  dropout_key: jax.Array  # From config.seed; placed on the devices.
  # The workdir's lock, held by process 0 (None on the others).
  lock: workdir_files.RunLock | workdir_files.LeaseLock | None

  @property
  def periodic_split(self) -> str:
    """Model selection looks at the validation split when there is one (the
    test split is then evaluated at the end only)."""
    return (input_pipeline.VALIDATION if self.data.info.num_validation
            else input_pipeline.TEST)

  @property
  def final_splits(self) -> list[str]:
    """Validation (if any), then test, whose result the run returns."""
    return list(dict.fromkeys([self.periodic_split, input_pipeline.TEST]))

  def evaluate(self, state: steps.TrainState, split: str,
               step: int) -> dict[str, float]:
    count = jax.process_count()
    result = evaluate(self.strategy, state, input_pipeline.eval_batches(
        self.data.dataset, self.data.info, self.data.prep,
        self.config.eval_batch_size // count, jax.process_index(), count,
        split))
    logging.info('%s at step %d: accuracy %.2f%%, loss %.4f (%d examples)',
                 split, step, 100 * result['accuracy'], result['loss'],
                 result['num_examples'])
    return result


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains (or resumes) to the configured length; returns final eval metrics.

  Raises errors.UserError (bad config, data or workdir; nothing changed),
  errors.TrainingDiverged (non-finite loss; nothing bad saved) or
  errors.Preempted (SIGTERM/SIGINT/SIGHUP; a checkpoint of the current step
  saved, or nothing new to save when training had not started).
  """
  if not workdir:
    raise errors.WorkdirError('--workdir is empty: name the directory for '
                              'this run, e.g. --workdir=/tmp/nin.')
  workdir = workdir_files.Workdir.reached(workdir)
  config, changed = _preflight(config, workdir)
  with contextlib.ExitStack() as cleanup:
    # Listening from here, so a signal during start-up is not lost.
    stop = cleanup.enter_context(stop_signals.StopSignals())
    data = _load_data(config, workdir)
    plan = Plan.make(config, data.info, jax.process_count())
    strategy = parallel.create(config.parallelism, steps.train_step,
                               steps.eval_step)
    # A fresh run's config.init_from is read before the workdir is touched,
    # so that a bad source changes nothing.
    init_from_now = bool(config.init_from) and not workdir.has_checkpoint()
    state, learning_rate_fn = _fresh_state(config, data, plan, strategy,
                                           init_from_now)
    stop.stop_before_training()  # Before the workdir is touched.
    lock = None
    if jax.process_index() == 0:  # One trainer per workdir.
      lock = cleanup.enter_context(workdir.lock())
    checkpointer = checkpointing.Checkpointer(
        workdir, config.keep_checkpoints, config.keep_best)
    # Checkpointer and metric files are closed even if training fails.
    cleanup.callback(checkpointer.close)
    stop.attach(checkpointer)
    start_step, state, progress = _restore(config, checkpointer, strategy,
                                           state, changed, init_from_now,
                                           data.info.class_names)
    _record(config, workdir, data, start_step)
    writer = metric_writers.MetricWriter(
        workdir, enabled=jax.process_index() == 0, resumed_step=start_step,
        wandb_project=config.wandb_project, run_config=config.to_dict())
    cleanup.callback(writer.close)
    run = _Run(config, workdir, data, plan, strategy, checkpointer, writer,
               jax.jit(learning_rate_fn),
               strategy.put_key(steps.dropout_key(config.seed)), lock)
    if start_step >= plan.num_steps:
      logging.info('Training already finished at step %d (of %d); nothing '
                   'to do. Final evaluation:', start_step, plan.num_steps)
      return _final_evaluation(run, state, start_step)
    stop.stop_before_training()
    return _train(run, state, start_step, progress, stop)


# --- 1. Pre-flight checks ----------------------------------------------------------


def _preflight(config: ml_collections.ConfigDict,
               workdir: workdir_files.Workdir
               ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Every check of the config and workdir, before data is read or anything
  is written; returns the config as recorded and the fields a resume changed.
  """
  config_checks.validate(config)
  if image_folder.is_folder(config.dataset):
    # Recorded with an absolute root, so evaluate/predict work from anywhere.
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset = image_folder.dataset_name(image_folder.root_of(
        config.dataset))
  _check_same_config_everywhere(config)
  changed = config_checks.check_resumable(config, workdir)
  if jax.process_index() == 0:
    workdir.check_writable()
  return config, changed


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


# --- 2. Data -----------------------------------------------------------------------


def _load_data(config: ml_collections.ConfigDict,
               workdir: workdir_files.Workdir) -> _Data:
  """Data first: a missing dataset must fail before anything is compiled."""
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  if info.num_classes != config.num_classes:
    raise errors.ConfigError(
        f'Dataset {info.name!r} has {info.num_classes} classes but '
        f'config.num_classes={config.num_classes}; pass '
        f'--config.num_classes={info.num_classes}.')
  if config.keep_best and not info.num_validation:
    raise errors.ConfigError(
        'config.keep_best picks a checkpoint by validation accuracy, and '
        f'{info.name!r} has no validation split here: pass e.g. '
        '--config.validation_size=5000 (held out from the training split).')
  # A resumed run keeps the transform it trained with.
  prep = preprocessing.recorded(workdir)
  if prep is not None:
    preprocessing.check_matches(prep, config)
    return _Data(dataset, info, prep, prep_is_recorded=True)
  return _Data(dataset, info,
               input_pipeline.fit_preprocessing(dataset, info, config),
               prep_is_recorded=False)


# What steps_per_dispatch = 0 means (configs/default.py says why).
DEFAULT_STEPS_PER_DISPATCH = 10


def resolve_steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """config.steps_per_dispatch, with 0 ("auto") made concrete."""
  return config.steps_per_dispatch or DEFAULT_STEPS_PER_DISPATCH


@dataclasses.dataclass(frozen=True)
class Plan:
  """Step counts derived from the config and the dataset size."""
  steps_per_epoch: int
  num_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def make(cls, config: ml_collections.ConfigDict,
           info: input_pipeline.DatasetInfo, process_count: int) -> 'Plan':
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


# --- 3. Initial state: fresh, init_from, or the newest checkpoint ------------------


def _fresh_state(config: ml_collections.ConfigDict, data: _Data, plan: Plan,
                 strategy: parallel.Jit | parallel.Pmap, from_source: bool
                 ) -> tuple[steps.TrainState, Callable[[int], Any]]:
  """A fresh run's state on the devices (from config.init_from if
  `from_source`), and the learning-rate schedule."""
  state, learning_rate_fn = steps.initial_state(
      config, data.info.image_shape, plan.steps_per_epoch, plan.num_steps,
      axis_name=strategy.axis_name)
  if from_source:
    state = init_from.initialized(config.init_from, state,
                                  data.info.class_names)
  return strategy.put_state(state), learning_rate_fn


def _restore(config: ml_collections.ConfigDict,
             checkpointer: checkpointing.Checkpointer,
             strategy: parallel.Jit | parallel.Pmap, state: steps.TrainState,
             changed: list[str], init_from_applied: bool,
             class_names: tuple[str, ...]
             ) -> tuple[int, steps.TrainState, dict[str, Any]]:
  """(start step, state, progress record): the newest readable checkpoint's,
  on any device count or strategy (the state is resharded), or `state`'s."""
  restored = checkpointer.restore_latest(strategy.host_state(state))
  if not restored:
    if config.init_from and not init_from_applied:
      # There were checkpoints, but none was readable: a fresh start.
      state = strategy.put_state(init_from.initialized(
          config.init_from, strategy.host_state(state), class_names))
    return 0, state, {}
  start_step, host_state, progress = restored
  logging.info('Resumed from checkpoint at step %d in %s', start_step,
               checkpointer.directory)
  if changed:
    logging.info('Config fields changed since the last run: %s',
                 ', '.join(changed))
  if config.init_from:
    logging.info('config.init_from is ignored: the run resumed.')
  return start_step, strategy.put_state(host_state), progress


# --- 4. The run's files ---------------------------------------------------------


def _record(config: ml_collections.ConfigDict, workdir: workdir_files.Workdir,
            data: _Data, start_step: int) -> None:
  """config.json, dataset.json and preprocessing.npz (process 0 writes)."""
  if jax.process_index() != 0:
    return
  workdir.make()
  workdir.write_config(config, start_step)
  workdir.write_dataset_info(data.info)
  if not data.prep_is_recorded:
    preprocessing.record(data.prep, workdir)


# --- 5. The loop -------------------------------------------------------------------


def _step_runner(run: _Run, start_step: int
                 ) -> Callable[[steps.TrainState, int, int],
                               tuple[steps.TrainState, steps.Metrics]]:
  """run_steps(state, first, count): `count` steps from batch `first`; the
  new state and the steps' summed metrics."""
  config, strategy, data = run.config, run.strategy, run.data
  if config.input_pipeline == 'device':
    batches = device_input.DeviceTrainBatches.from_dataset(
        data.dataset, data.info, data.prep, config, strategy)
    next_batch = batches.batch
    if resolve_steps_per_dispatch(config) > 1 and strategy.compile_steps:
      # Several steps per dispatch: the host is out of the loop.
      fused = strategy.compile_steps(functools.partial(
          steps.train_steps, draw=batches.draw, step_fn=steps.train_step))
      return lambda state, first, count: fused(
          state, batches.inputs, run.dropout_key, np.int32(first),
          np.int32(count))
  else:
    stream = input_pipeline.train_batches(
        data.dataset, data.info, data.prep, config, start_step,
        jax.process_index(), jax.process_count())
    next_batch = lambda index: strategy.put_batch(next(stream))

  def one_at_a_time(state, first, count):
    sums = None
    for index in range(first, first + count):
      state, metrics = strategy.train_step(state, next_batch(index),
                                           run.dropout_key)
      sums = steps.accumulate(sums, strategy.metrics(metrics))
    return state, sums

  return one_at_a_time


class _StepTrace:
  """config.profile_steps: a jax.profiler trace of that many steps (whole
  dispatches), from the second dispatch on, since the first is mostly
  compilation. Written where TensorBoard's profile tab looks (for a remote
  workdir, into a local folder first, then uploaded)."""

  def __init__(self, num_steps: int, directory: str):
    self._left = num_steps
    self._directory = directory
    self._tracing = False
    self._local = directory

  def __enter__(self) -> '_StepTrace':
    return self

  def __exit__(self, *exc) -> None:
    if self._tracing:  # The run ended (or failed) first.
      self._stop(None)

  def before(self, first_dispatch: bool) -> None:
    if self._left > 0 and not self._tracing and not first_dispatch:
      if storage.is_remote(self._directory):
        self._local = tempfile.mkdtemp(prefix='nin_jax_profile_')
      jax.profiler.start_trace(self._local)
      self._tracing = True

  def after(self, num_steps: int, outputs: Any) -> None:
    if self._tracing:
      self._left -= num_steps
      if self._left <= 0:
        self._stop(outputs)

  def _stop(self, outputs: Any) -> None:
    jax.block_until_ready(outputs)  # The traced steps ran to the end.
    jax.profiler.stop_trace()
    self._tracing = False
    self._left = 0
    if self._local != self._directory:
      try:
        storage.upload_tree(self._local, self._directory)
      except errors.WorkdirError as e:  # A profile is not worth a run.
        logging.warning('The profile was not uploaded: %s', e)
        return
      finally:
        shutil.rmtree(self._local, ignore_errors=True)
    logging.info('Wrote a profile of the training steps to %s (TensorBoard: '
                 'the profile tab).', self._directory)


class LogWindow:
  """Summed metrics and training wall time since the last log line."""

  def __init__(self):
    self.sums = None
    self._steps = 0  # Steps whose time is on the clock.
    self._seconds = 0.0
    self._since = time.perf_counter()

  def add(self, sums: steps.Metrics, count: int) -> None:
    """Adds the summed metrics of `count` more steps."""
    self.sums = steps.accumulate(self.sums, sums)
    self._steps += count

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


class DeadReluMonitor:
  """Warns once the class maps have been all zero for `patience` steps."""

  def __init__(self, patience: int, num_classes: int, dead_steps: int = 0):
    self._patience = patience
    self._num_classes = num_classes
    self.dead_steps = dead_steps  # Consecutive steps, kept in checkpoints.

  def update(self, dead_fraction: float, count: int) -> None:
    """After a log window of `count` steps with this dead fraction."""
    before = self.dead_steps
    self.dead_steps = self.dead_steps + count if dead_fraction == 1.0 else 0
    if before < self._patience <= self.dead_steps:
      logging.warning(
          'Every logit of every example has been exactly 0 for %d steps '
          '(loss stuck at ln(%d) = %.4f): the ReLU after the last 1x1 layer has '
          'died and training cannot recover. Restart in a new workdir with a '
          'lower --config.learning_rate, a longer --config.warmup_epochs, or '
          '--config.model.use_batchnorm=True.', self.dead_steps,
          self._num_classes, math.log(self._num_classes))


def _train(run: _Run, state: steps.TrainState, start_step: int,
           progress: dict[str, Any],
           stop: stop_signals.StopSignals) -> dict[str, float]:
  """Steps from `start_step` to the end; the final evaluation's metrics."""
  config, plan = run.config, run.plan
  if start_step and start_step % plan.eval_every == 0 and not _logged(
      run.writer, start_step, run.periodic_split):
    # Stopped by a signal at an evaluation step: saved without evaluating.
    run.writer.write(start_step, run.periodic_split,
                     run.evaluate(state, run.periodic_split, start_step))
  logging.info('Training %d steps (%d per epoch, global batch %d) on %d '
               'devices; %d training and %d evaluation examples.',
               plan.num_steps, plan.steps_per_epoch, config.batch_size,
               jax.device_count(), run.data.info.num_train,
               run.data.info.num_eval)
  run_steps = _step_runner(run, start_step)
  progress_log = metric_writers.ProgressLogger(plan.num_steps,
                                               plan.steps_per_epoch)
  window = LogWindow()
  window.restore(progress.get('window', {}))
  dead_relu = DeadReluMonitor(
      config.dead_relu_patience, config.num_classes,
      progress.get('dead_relu_steps', 0))
  steps_per_dispatch = resolve_steps_per_dispatch(config)
  best = progress.get('best')

  result = {}
  with _StepTrace(config.profile_steps,
                  run.workdir.path(workdir_files.TENSORBOARD)) as trace:
    step = start_step
    while step < plan.num_steps:
      count = plan.dispatch_end(step, steps_per_dispatch) - step
      trace.before(first_dispatch=step == start_step)
      state, sums = run_steps(state, step, count)
      trace.after(count, state)
      window.add(sums, count)
      previous, step = step, step + count
      if previous == start_step:  # Its time is mostly compilation.
        jax.block_until_ready(sums)
        logging.info('First dispatch (%d steps, compilation included) took '
                     '%.1f s.', count, window.seconds())
        window.restart_clock()

      last_step = step == plan.num_steps
      if step % plan.log_every == 0 or last_step:
        _log(run, step, window, progress_log, dead_relu)
        window = LogWindow()

      stopping = stop.should_stop(previous + 1, step)
      saving = step % plan.checkpoint_every == 0 or last_step or stopping
      evaluating = (step % plan.eval_every == 0 or last_step) and not stopping
      if saving or evaluating:
        window.stop_clock()  # Saving and evaluating is not training time.
      if saving:  # Nothing non-finite is evaluated or saved.
        host_state = _checked_host_state(run, state, step, window)
      # Evaluated before the save, so that the checkpoint can carry its
      # validation accuracy (config.keep_best).
      scores = {}
      for split in ((run.final_splits if last_step else [run.periodic_split])
                    if evaluating else []):
        scores[split] = run.evaluate(state, split, step)
        run.writer.write(step, split, scores[split])
      result = scores.get(input_pipeline.TEST, result)
      accuracy = None
      if config.keep_best and input_pipeline.VALIDATION in scores:
        accuracy = scores[input_pipeline.VALIDATION]['accuracy']
        if best is None or accuracy >= best['accuracy']:  # The later of equals.
          best = {'step': step, 'accuracy': accuracy}
          logging.info('Best validation accuracy so far (%.2f%%): step %d, '
                       'whose checkpoint is kept.', 100 * accuracy, step)
      if saving:
        _save(run, host_state, step, window, dead_relu, accuracy, best)
      if stopping:
        logging.warning('Saved a checkpoint at step %d in %s after %s; rerun '
                        'the same command to resume.', step,
                        run.checkpointer.directory, stop.received)
        raise errors.Preempted(step, stop.received)
      if saving or evaluating:
        window.start_clock()
  return result


def _logged(writer: metric_writers.MetricWriter, step: int, split: str
            ) -> bool:
  """writer.logged as process 0, which writes the metrics, sees it, on
  every process: whether to evaluate (collectives) must agree everywhere,
  and the other processes' writers hold no rows."""
  logged = writer.logged(step, split)
  if jax.process_count() > 1:
    logged = bool(multihost_utils.broadcast_one_to_all(np.int32(logged)))
  return logged


def _log(run: _Run, step: int, window: LogWindow,
         progress_log: metric_writers.ProgressLogger,
         dead_relu: DeadReluMonitor) -> None:
  """One log line: metrics.jsonl, TensorBoard, the console, the ReLU watch."""
  summary = steps.summarize(window.sums)
  _check_finite(summary['loss'], step, run.checkpointer)
  steps_per_second = window.steps_per_second()
  summary['learning_rate'] = float(run.learning_rate_fn(step - 1))
  if steps_per_second > 0:  # Unknown while only compilation was timed.
    summary['images_per_sec'] = steps_per_second * run.config.batch_size
  run.writer.write(step, 'train', summary)
  progress_log.log(step, summary, steps_per_second)
  dead_relu.update(summary['dead_fraction'],
                   int(jax.device_get(window.sums['count']))
                   // run.config.batch_size)


def _checked_host_state(run: _Run, state: steps.TrainState, step: int,
                        window: LogWindow) -> steps.TrainState:
  """The state as checkpoints hold it, once its values are known finite."""
  if window.sums is not None:
    _check_finite(steps.summarize(window.sums)['loss'], step, run.checkpointer)
  host_state = run.strategy.host_state(state)
  if not checkpointing.state_is_finite(host_state.params):
    raise _diverged('Parameters became non-finite', step, run.checkpointer)
  return host_state


def _save(run: _Run, host_state: steps.TrainState, step: int,
          window: LogWindow,
          dead_relu: DeadReluMonitor, accuracy: float | None,
          best: dict[str, Any] | None) -> None:
  """Checkpoints `step`, with its validation `accuracy` if config.keep_best
  evaluated one, and what a resume needs to continue exactly. The metric
  rows up to `step` are in the workdir first: a resume does not log them
  again."""
  if run.lock is not None:
    run.lock.check()  # Never write over another trainer's checkpoints.
  run.writer.flush()
  run.checkpointer.save(step, host_state, {
      'step': step,
      # Where the input resumes: batch `step` of the stream.
      'epoch': step // run.plan.steps_per_epoch,
      'batch_in_epoch': step % run.plan.steps_per_epoch,
      'input_pipeline': run.config.input_pipeline,
      'window': window.progress(),
      'dead_relu_steps': dead_relu.dead_steps,
      **({'best': best} if best else {}),
  }, accuracy)


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


# --- 6. Evaluation -----------------------------------------------------------------


def evaluate(strategy: parallel.Jit | parallel.Pmap, state: steps.TrainState,
             batches) -> dict[str, float]:
  """Mean metrics over every batch, and the number of examples seen."""
  total = None
  wait = parallel.waits_for_each_program()
  for batch in batches:
    total = steps.accumulate(total, strategy.eval_step(state,
                                                 strategy.put_batch(batch)))
    if wait:  # The batches' programs are independent of each other.
      jax.block_until_ready(total)
  total = strategy.metrics(total)
  summary = steps.summarize(total)
  summary['num_examples'] = float(jax.device_get(total['count']))
  return summary


def _final_evaluation(run: _Run, state: steps.TrainState,
                      step: int) -> dict[str, float]:
  """Evaluates a finished run again; logs what a previous run did not."""
  result = {}
  for split in run.final_splits:
    result = run.evaluate(state, split, step)
    if not run.writer.logged(step, split):
      run.writer.write(step, split, result)
  return result
