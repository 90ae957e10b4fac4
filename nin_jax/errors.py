"""Errors a user can cause and fix; `main` prints their message, not a traceback."""


class UserError(Exception):
  """Base class: the message names what went wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """A configuration value is invalid or inconsistent."""


class DatasetUnavailableError(UserError, RuntimeError):
  """The dataset is neither prepared nor downloadable."""
