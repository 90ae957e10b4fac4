"""Where data-side files go, and writes that a crash cannot leave half done."""

import os
import tempfile

import ml_collections
import numpy as np


def write_atomically(path: str, data: str | bytes | bytearray) -> None:
  """Replaces `path` with `data`, so that a crash leaves the old or the new
  file, never part of one (written beside it, then renamed over it)."""
  binary = not isinstance(data, str)
  with open(path + '.tmp', 'wb' if binary else 'w',
            encoding=None if binary else 'utf-8') as f:
    f.write(data)
  os.replace(path + '.tmp', path)


def write_npz_atomically(path: str, **arrays: np.ndarray) -> None:
  """np.savez to `path` through a uniquely named file beside it, so that
  concurrent writers (the processes of one run) and readers never clash."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=directory, suffix='.npz.tmp',
                                   delete=False) as f:
    try:
      np.savez(f, **arrays)
    except BaseException:
      os.remove(f.name)
      raise
  os.replace(f.name, path)


def data_root(config: ml_collections.ConfigDict) -> str:
  """config.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets: where
  TFDS data lives and where nin_jax caches what it derives from datasets."""
  return (config.data_dir or os.environ.get('TFDS_DATA_DIR')
          or os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))
