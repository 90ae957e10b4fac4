"""Errors a user can cause and fix; `main` prints their message, not a traceback."""


def describe(error: BaseException) -> str:
  """Why something failed, on one short line: the innermost cause (e.g.
  TensorStore's I/O error, not Orbax's wrapper of it), type and message."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = ' '.join(str(error).split())
  if len(text) > 240:
    text = text[:240] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


class UserError(Exception):
  """Base class: the message names what went wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """A configuration value is invalid or inconsistent."""


class DatasetUnavailableError(UserError, RuntimeError):
  """The dataset is neither prepared nor downloadable."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be written, or holds no run where one is needed."""


class ImageError(UserError, ValueError):
  """A file given for prediction is missing or is not a readable image."""


class DependencyError(UserError, ImportError):
  """An optional dependency that this command needs is not installed."""


class ExportError(UserError, RuntimeError):
  """An exported model does not compute what the trained model computes."""


class TrainingDiverged(FloatingPointError):
  """The loss or the parameters stopped being finite; nothing bad was saved."""


class Preempted(Exception):
  """A stop signal arrived; a checkpoint of `step` was written (or, if it
  came while the run was starting, there was nothing new to write)."""

  def __init__(self, step: int | None, signal_name: str, saved: bool = True):
    if saved:
      message = (f'{signal_name} received: saved a checkpoint at step {step}; '
                 'rerun the same command to resume.')
    else:
      message = (f'{signal_name} received while the run was starting: '
                 'nothing new to save; rerun the same command to resume.')
    super().__init__(message)
    self.step = step


# Exit statuses of `python -m nin_jax.main`, for scripts and schedulers.
EXIT_USER_ERROR = 2  # Bad config, data, workdir: the message names the fix.
EXIT_DIVERGED = 3  # Non-finite loss: lower the learning rate (message).
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, rerun to resume.
EXIT_INTERRUPTED = 130  # A second SIGINT: stopped at once (128 + 2).
