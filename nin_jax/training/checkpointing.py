"""Orbax checkpoints in `<workdir>/checkpoints`: everything a resume needs.

A checkpoint holds the train state (parameters, optimizer state, step,
BatchNorm statistics) and a small JSON `progress` record (input position,
the partly summed metrics of the current log window, the dead-ReLU counter),
so a resumed run continues bit for bit where it stopped. The dropout key is
not saved: it follows from config.seed and the step (steps.py).

Orbax writes each step into a temporary directory and renames it when
complete, so a save cut short by a crash is never taken for a checkpoint. A
checkpoint whose files were damaged afterwards is moved aside to
`<workdir>/checkpoints_unreadable/` (never deleted) and the next older one is
used. Saves are synchronous: a NiN's state is a few MB (a fraction of a
second to write), and Orbax's background save thread was seen to lose its
array metadata when a TFDS generator pipeline ran beside it.
"""

import contextlib
import logging as std_logging
import threading
import time
from typing import Any, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files

# Orbax writes a step into '<step>.orbax-checkpoint-tmp-<time>' and renames
# it when complete.
TMP_SUFFIX = '.orbax-checkpoint-tmp'


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'/'-joined path -> shape of each array of `tree` (nested dicts, a
  TrainState, Orbax's metadata of one)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path):
          tuple(leaf.shape) if hasattr(leaf, 'shape') else np.shape(leaf)
          for path, leaf in leaves}


def shape_differences(there: Any, here: Any) -> list[
    tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]]:
  """(path, shape there, shape here) of each array whose shape differs
  between two trees, or that one of them lacks (None), in path order: how
  saved arrays (a checkpoint's, a trained run's) are compared with those a
  config describes."""
  there, here = _shapes(there), _shapes(here)
  return [(path, there.get(path), here.get(path))
          for path in sorted(there.keys() | here.keys())
          if there.get(path) != here.get(path)]


def _items(state: Any) -> dict[str, Any]:
  """The arrays a checkpoint's 'state' item holds (as read_checkpoint returns)."""
  return {'train_state': state}


def _item_handlers() -> dict[str, Any]:
  """So that a fresh process can read a checkpoint's metadata."""
  return {'state': ocp.StandardCheckpointHandler(),
          'progress': ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Saves every so often, keeps the newest few, restores the newest good one."""

  def __init__(self, workdir: workdir_files.Workdir, keep: int,
               keep_best: bool = False):
    """Keeps the `keep` newest checkpoints and, with `keep_best`, also the
    one saved with the highest `accuracy` metric (see `save`)."""
    self.workdir = workdir
    self.directory = workdir.checkpoints
    self._failed = False  # A save failed: close() then stays quiet.
    self._remove_unfinished_saves()
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics['accuracy'], n=1,
          keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                policies),
            create=True, enable_async_checkpointing=False),
        item_handlers=_item_handlers())

  def _remove_unfinished_saves(self) -> None:
    """Deletes what saves cut short left behind (never whole checkpoints).

    Done here, synchronously, rather than by Orbax's cleanup_tmp_directories,
    whose background thread lost its file system to tfds.testing.mock_data
    (which patches file functions while a dataset is opened). On gs://
    Orbax writes a step in place and marks it finished with
    commit_success.txt: a step directory without one is such a remnant.
    """
    if jax.process_index() != 0:
      return
    for name in storage.list_dir(self.directory):
      step_dir = workdir_files.path(self.directory, name)
      if TMP_SUFFIX in name or (name.isdigit() and
                                not workdir_files.save_finished(step_dir)):
        storage.remove_tree(step_dir)
        logging.info('Removed %s, left by a save that did not finish.', name)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """Whether all processes agreed to stop at `step` (multi-process SIGTERM)."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, progress: dict[str, Any],
           accuracy: float | None = None) -> None:
    """Writes step `step`; a full or unwritable disk gives a clear error.

    `accuracy` (validation) makes the checkpoint a candidate for the best;
    of equal ones, the later is kept.
    """
    items = _items(state)
    running = set(threading.enumerate())
    # A failing save makes Orbax's threads log a page each; the one error
    # below says it all.
    with _reports_held() as held:
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(items),
            progress=ocp.args.JsonSave(progress)), force=True,
                           metrics=(None if accuracy is None
                                    else {'accuracy': float(accuracy)}))
        failure = None
      except Exception as e:  # pylint: disable=broad-except
        failure = e
        # Orbax's other threads of this save stop (and log) before we go
        # on, or they would print pages after the error line and write
        # into the directory that is removed below.
        try:
          self._manager.wait_until_finished()
        except Exception:  # pylint: disable=broad-except
          pass  # The same failure.
        _join_threads_started_since(running, timeout=60)
    if failure is None:
      held.release()
      return
    # TensorStore reports a full or read-only disk as a ValueError.
    if storage.failure(failure) is None:
      raise failure
    self._failed = True
    self._remove_unfinished_saves()  # Nothing half written stays.
    last = self.latest_step()
    kept = (f'The previous checkpoint (step {last}) is intact' if last
            is not None else 'No checkpoint had been saved yet')
    raise errors.WorkdirError(
        f'Could not write the checkpoint of step {step} to {self.directory} '
        f'({errors.describe(failure)}). {kept}; free some space or fix the '
        'permissions, then rerun the same command to resume.') from None

  def restore_latest(self, state: Any
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, progress) of the newest readable checkpoint.

    `state` gives the structure, shapes and shardings to restore into. A
    checkpoint whose shapes differ from it was made with another config: that
    stops with a ConfigError and touches nothing. One that cannot be read is
    moved aside and the next older one tried.
    """
    wanted = jax.tree.map(ocp.utils.to_shape_dtype_struct, _items(state))
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        saved = self._manager.item_metadata(step)['state']
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      self._check_compatible(step, saved, wanted)
      # A damaged array file makes Orbax and asyncio log a page per array;
      # the one warning of _set_aside says it all.
      with _reports_held() as held:
        try:
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(wanted),
              progress=ocp.args.JsonRestore()))
        except Exception as e:  # pylint: disable=broad-except
          restored, error = None, e  # Damaged files raise many kinds.
      if restored is None:
        self._set_aside(step, error)
        continue
      held.release()
      return (step, restored['state']['train_state'],
              dict(restored['progress']))
    return None

  def _check_compatible(self, step: int, saved: Any, abstract: Any) -> None:
    if saved is None:
      return
    differ = shape_differences(saved, abstract)
    if differ:
      examples = '; '.join(f'{k}: checkpoint {saved} vs config {wanted}'
                           for k, saved, wanted in differ[:3])
      raise errors.ConfigError(
          f'The checkpoint at step {step} in {self.directory} was made with a '
          f'different model or optimizer ({len(differ)} arrays differ, e.g. '
          f'{examples}). Run with the config saved in the workdir '
          '(config.json), or start a new --workdir.')

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable checkpoint out of Orbax's way, keeping its files;
    one that could not be reached (network, permissions) stops the run
    instead, and nothing is moved."""
    # A network outage would otherwise set aside one good checkpoint after
    # another.
    if storage.failure(error) == storage.UNREACHABLE:
      raise errors.WorkdirError(
          f'Cannot read the checkpoint of step {step} in {self.directory} '
          f'({errors.describe(error)}); nothing was moved. Check the network, '
          'the permissions and your credentials, then rerun the same '
          'command.') from None
    target = workdir_files.path(
        self.workdir.path(workdir_files.UNREADABLE_CHECKPOINTS),
        f'{step}-{time.strftime("%Y%m%dT%H%M%S")}')
    if jax.process_index() == 0:
      storage.move_tree(workdir_files.path(self.directory, str(step)), target)
    if jax.process_count() > 1:  # Others wait until it has moved.
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    logging.warning('Checkpoint at step %d cannot be read (%s: %s); moved it '
                    'to %s and trying the next older one.', step,
                    type(error).__name__, str(error).splitlines()[0][:200]
                    if str(error) else '', target)
    self._manager.reload()

  def close(self) -> None:
    """Blocks until pending saves are on disk; after a failed save quietly,
    as that error is the one to report."""
    with _reports_held() if self._failed else contextlib.nullcontext():
      try:
        self._manager.wait_until_finished()
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise


def _join_threads_started_since(running: set[threading.Thread],
                                timeout: float) -> None:
  """Waits up to `timeout` seconds in all for the threads started since
  `running` was taken to end.

  A save that fails in one of Orbax's commit threads raises while the
  others (one per item and array group, started for this save and ended
  when it completes) still write. Orbax has no public call that waits for
  them after a failure (CheckpointManager.wait_until_finished waits for an
  asynchronous save only), so the threads this save started are waited
  for. Daemon threads are not: library helpers that live as long as the
  process (an event loop thread of gcsfs) are daemons.
  """
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if thread in running or thread.daemon or (
        thread is threading.current_thread()):
      continue
    try:
      thread.join(timeout=max(0.0, deadline - time.monotonic()))
    except Exception:  # pylint: disable=broad-except
      pass  # Orbax's threads re-raise the save's failure on join.


def state_is_finite(state: Any) -> bool:
  """Whether every floating-point array of the state is finite."""
  leaves = [x for x in jax.tree.leaves(state)
            if jax.numpy.issubdtype(getattr(x, 'dtype', np.int32),
                                    jax.numpy.floating)]
  return bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  """One program and one transfer for the whole state, not two per array."""
  return jax.numpy.all(jax.numpy.array(
      [True] + [jax.numpy.isfinite(x).all() for x in leaves]))


class _HeldReports(std_logging.Filter):
  """Holds back what Orbax and asyncio log while a checkpoint is read or
  written.

  A damaged checkpoint makes Orbax log errors about its metadata, and a
  truncated array file makes its event loop report every other pending
  read's failure too, with the TensorStore spec: a thousand lines. The
  reader's one warning or error says it all; under --verbosity=1 they show.
  """

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    if logging.get_verbosity() >= logging.DEBUG or not (
        record.name == 'asyncio' or '/orbax/' in record.pathname):
      return True
    self.records.append(record)
    return False

  def release(self) -> None:
    """Logs what was held: the read or write worked, so it may matter."""
    for record in self.records:
      std_logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def _reports_held() -> Iterator[_HeldReports]:
  held = _HeldReports()
  loggers = (std_logging.getLogger('asyncio'), logging.get_absl_logger())
  for logger in loggers:
    logger.addFilter(held)
  try:
    yield held
  finally:
    for logger in loggers:
      logger.removeFilter(held)


def _read_step(manager: ocp.CheckpointManager, step: int
               ) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """read_checkpoint of one step; raises whatever a damaged one raises."""
  metadata = manager.item_metadata(step)['state']
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      progress=ocp.args.JsonRestore()))
  arrays = jax.tree.map(np.asarray, restored['state'])
  if not isinstance(arrays, dict) or 'train_state' not in arrays:
    raise ValueError('it holds no train_state')
  return step, arrays, dict(restored['progress'])


def read_checkpoint(workdir: str, step: int | None = None
                    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(step, arrays, progress) of a workdir's checkpoint (default: newest).

  No config or model is needed: arrays come back as numpy, nested as the
  train state was ({'train_state': {'params': ...}}).

  Without `step`, a damaged newest checkpoint is skipped, with one warning
  line, for the next older readable one, as the trainer does; but nothing
  is moved (the reader may run beside the trainer, which moves it aside
  when it resumes). A damaged `step` asked for is a WorkdirError that
  names the other saved steps.
  """
  directory = workdir_files.checkpoints_dir(storage.location(workdir))
  if not storage.is_dir(directory):
    raise errors.WorkdirError(
        f'No checkpoints in {workdir} (no {directory}): pass the --workdir '
        'of a run of python -m nin_jax.main.')
  failed, found = {}, None
  with _reports_held() as held, ocp.CheckpointManager(
      directory, item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(create=False)) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise errors.WorkdirError(f'No checkpoint in {directory}.')
    if step is not None and step not in steps:
      raise errors.WorkdirError(
          f'No checkpoint of step {step} in {directory}; the saved steps are '
          f'{", ".join(map(str, steps))}.')
    for candidate in [step] if step is not None else reversed(steps):
      try:
        found = _read_step(manager, candidate)
        break
      except Exception as e:  # pylint: disable=broad-except
        # Damaged files raise many kinds of errors.
        failed[candidate] = errors.describe(e)
  if not failed:  # Then what the libraries said may matter.
    held.release()
  if found is not None:
    for skipped, reason in failed.items():
      logging.warning(
          'Checkpoint at step %d in %s cannot be read (%s); using step %d, '
          'the newest readable one.', skipped, directory, reason, found[0])
    return found
  if step is not None:
    others = [s for s in steps if s != step]
    instead = (f'pass another --step ({", ".join(map(str, others))}), or '
               'leave it out for the newest readable checkpoint'
               if others else 'it is the only one: train again')
    raise errors.WorkdirError(
        f'The checkpoint of step {step} in {directory} cannot be read '
        f'({failed[step]}): {instead}.')
  newest = steps[-1]
  raise errors.WorkdirError(
      f'No checkpoint in {directory} can be read (step {newest}: '
      f'{failed[newest]}; steps {", ".join(map(str, steps))} tried): restore '
      'them from a backup, or train again in a new --workdir.')
