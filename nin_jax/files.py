"""Writes that a crash cannot leave half done."""

import os


def write_atomically(path: str, data: str | bytes | bytearray) -> None:
  """Replaces `path` with `data`, so that a crash leaves the old or the new
  file, never part of one (written beside it, then renamed over it)."""
  binary = not isinstance(data, str)
  with open(path + '.tmp', 'wb' if binary else 'w',
            encoding=None if binary else 'utf-8') as f:
    f.write(data)
  os.replace(path + '.tmp', path)
