"""SIGTERM, SIGINT and SIGHUP (and a preemption notice) as "save, then exit 75"."""

import os
import signal
import threading

from absl import logging
import jax

from nin_jax import checkpointing
from nin_jax import errors


class StopSignals:
  """Turns SIGTERM, SIGINT and SIGHUP into "save a checkpoint and exit".

  Listening starts before the data is read, so a signal during start-up
  (data loading, the first compilation) is not lost. One process: Python
  handlers note the signal and the loop stops after the current step.
  Several processes: JAX's preemption service (which Orbax's
  `reached_preemption` asks) hears SIGTERM on any process and makes all of
  them agree on the step to stop at; SIGINT and SIGHUP are forwarded to it
  as SIGTERM. A second SIGINT interrupts at once. SIGHUP (a closed terminal
  or ssh session) counts as SIGTERM.
  """

  def __init__(self):
    self._checkpointer = None  # Given by `attach` once there is one.
    self._distributed = jax.process_count() > 1
    self.received = None
    self._previous = {}

  def attach(self, checkpointer: checkpointing.Checkpointer) -> None:
    self._checkpointer = checkpointer

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is not threading.main_thread():
      return self  # Handlers can only be set from the main thread.
    wanted = [signal.SIGINT, signal.SIGHUP] + (
        [] if self._distributed else [signal.SIGTERM])
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

  def stop_before_training(self) -> None:
    """Exits (75) if a signal came while the run was starting; nothing new
    exists to save then."""
    if self.received is not None and not self._distributed:
      raise errors.Preempted(None, self.received, saved=False)

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
