"""SIGTERM, SIGINT and SIGHUP (and a preemption notice) as "save, then exit 75"."""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING

from absl import logging

from nin_jax import errors

if TYPE_CHECKING:
  from nin_jax.training import checkpointing

# Light imports: `python -m nin_jax.main` listens (listen_early) before it
# imports JAX and the rest, which takes seconds.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _listened(signals) -> list[int]:
  """Those of `signals` the process does not ignore: one started with
  `nohup` (SIGHUP) or in the background of a script (SIGINT) was asked to
  keep running, and does."""
  return [signum for signum in signals
          if signal.getsignal(signum) is not signal.SIG_IGN]


class _EarlySignals:
  """Notes a stop signal that comes before StopSignals listens.

  While Python imports the libraries and the processes of a multi-process
  run connect (seconds; minutes on a slow file system or with a late
  peer), a signal's default action would kill the process (status -15),
  and its peers would wait for it in jax.distributed.initialize for
  minutes. Noted instead, it is honoured as one that came during start-up.
  """

  def __init__(self):
    self.received = None
    self._original = {}  # The handlers before listen().
    self._forward = False  # To JAX's preemption service, once connected.

  def listen(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in _listened(_STOP_SIGNALS):
      self._original[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT:  # A second one stops at once.
      signal.signal(signal.SIGINT, signal.default_int_handler)
    self.received = self.received or signal.Signals(signum).name
    if self._forward:
      os.kill(os.getpid(), signal.SIGTERM)

  def hand_to_jax(self) -> None:
    """After jax.distributed.initialize, whose preemption service now owns
    SIGTERM: a signal noted so far (and SIGINT or SIGHUP from now on) goes
    to it, so that every process stops at the same step."""
    if not self._original:
      return
    self._forward = True
    if self.received:
      logging.warning('%s received while the processes were starting: they '
                      'stop after their first step to save a checkpoint.',
                      self.received)
      os.kill(os.getpid(), signal.SIGTERM)

  def original(self, signum: int, current) -> object:
    """The handler of `signum` before listen(), if listening; else `current`.
    """
    return self._original.get(signum, current)

  def stop(self) -> str | None:
    """Stops noting (StopSignals' handlers are in place); the signal noted,
    which is then forgotten (a later run in this process starts afresh)."""
    received, self.received = self.received, None
    self._original, self._forward = {}, False
    return received


_EARLY = _EarlySignals()


def listen_early() -> None:
  """Notes stop signals from now until StopSignals listens; the first thing
  `python -m nin_jax.main` does."""
  _EARLY.listen()


def hand_to_jax() -> None:
  """A noted signal to JAX's preemption service, after jax.distributed
  .initialize (which installs the service's SIGTERM handler)."""
  _EARLY.hand_to_jax()


class StopSignals:
  """Turns SIGTERM, SIGINT and SIGHUP into "save a checkpoint and exit".

  Listening starts before the data is read, so a signal during start-up
  (data loading, the first compilation) is not lost; one before that
  (imports, connecting the processes) was noted by listen_early. One
  process: Python handlers note the signal and the loop stops after the
  current step. Several processes: JAX's preemption service (which Orbax's
  `reached_preemption` asks) hears SIGTERM on any process and makes all of
  them agree on the step to stop at; SIGINT and SIGHUP are forwarded to it
  as SIGTERM. A second SIGINT interrupts at once. SIGHUP (a closed terminal
  or ssh session) counts as SIGTERM. A signal the process was started
  ignoring (`nohup`) stays ignored.
  """

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
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
    for signum in _listened(wanted):
      self._previous[signum] = _EARLY.original(
          signum, signal.signal(signum, self._handle))
    # One noted before (listen_early): with several processes it is with
    # JAX's preemption service already (hand_to_jax).
    self.received = _EARLY.stop()
    if self.received == 'SIGINT':  # A second one stops at once.
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if self.received and not self._distributed:
      logging.warning('%s received while the run was starting: stopping '
                      'before training.', self.received)
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
