"""Runs experiments/benchmark.py on a machine without TensorFlow.

  python experiments/without_tensorflow.py [benchmark.py's flags]

Some GPU images ship JAX and PyTorch but no TensorFlow. The benchmark never
calls TensorFlow or TFDS (its data is random and its image shapes are
known), but nin_jax imports them at module level, so this stands empty
modules in for them and runs the benchmark. The GPU rows of the README's
Performance section were measured this way. Anything that reads a dataset
needs the real TensorFlow (requirements.txt).
"""

import importlib.machinery
import os
import runpy
import sys
import types
from unittest import mock

STUBBED = ('tensorflow', 'tensorflow_datasets', 'tensorflow_datasets.core',
           'tensorflow_datasets.core.download',
           'tensorflow_datasets.core.download.download_manager')


def main() -> None:
  for name in STUBBED:
    stub = types.ModuleType(name)
    # A spec, because torch's compiler asks importlib about tensorflow.
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
    stub.__getattr__ = lambda attr: mock.MagicMock()
    sys.modules[name] = stub
  benchmark = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'benchmark.py')
  sys.argv = [benchmark] + sys.argv[1:]
  runpy.run_path(benchmark, run_name='__main__')


if __name__ == '__main__':
  main()
