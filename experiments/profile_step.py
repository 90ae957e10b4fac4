"""Where the compiled NiN step spends its time: per-op times from a trace.

  python experiments/profile_step.py [--step=train|eval] [--top=30]
      [--config.FIELD=VALUE ...]

Runs the trainer's train (or eval) step on a fixed random batch under
`jax.profiler.trace`, reads the trace's XPlane file, and prints the ops
(XLA's fusions and thunks) by total time per step, summed over threads,
each with its shape and the JAX operation it came from (the HLO metadata:
`transpose(jvp(...))` marks the backward pass). Ops that record no trace
event are missing; the last line compares the listed time with the step's.
Reading the trace needs TensorFlow's copy of the XPlane protobuf.
"""

import collections
import glob
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax import input_pipeline
from nin_jax import models
from nin_jax import optimizer
from nin_jax import parallel
from nin_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', 'nin_jax',
                           'configs', 'default.py'), 'nin_jax config file.')
_STEP = flags.DEFINE_enum('step', 'train', ['train', 'eval'], 'Which step.')
_TOP = flags.DEFINE_integer('top', 30, 'Ops to list.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Traced steps (after 2 warm-ups).')


def _op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (result shape, JAX op_name metadata)."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"',
                     line)
    if match:
      names[match.group(1)] = (match.group(2), match.group(3))
  return names


def _event_times(trace_dir: str) -> collections.Counter:
  """Total milliseconds per event name over every non-Python thread."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  (path,) = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if 'ThunkExecutor' not in name and not name.startswith('$'):
          totals[name] += event.duration_ps / 1e9
  return totals


def main(argv):
  del argv
  config = _CONFIG.value
  shape = input_pipeline.image_shape(config)
  strategy = parallel.Jit(train.train_step, train.eval_step)
  lr = optimizer.create_learning_rate_fn(config, 390, 78_000)
  state = strategy.put_state(train.create_train_state(
      config, models.create_model(config), shape, jax.random.key(0), lr))
  key = strategy.put_key(jax.random.key(1))
  rng = np.random.default_rng(0)
  batch = strategy.put_batch({
      'image': rng.normal(size=(config.batch_size,) + shape).astype(
          np.float32),
      'label': rng.integers(0, config.num_classes,
                            config.batch_size).astype(np.int32),
      'mask': np.ones(config.batch_size, np.float32)})
  train_batch = {'image': batch['image'], 'label': batch['label']}

  def step():
    nonlocal state
    if _STEP.value == 'train':
      state, metrics = strategy.train_step(state, train_batch, key)
    else:
      metrics = strategy.eval_step(state, batch)
    jax.block_until_ready(metrics)

  lowered = (strategy.train_step.lower(state, train_batch, key)
             if _STEP.value == 'train' else
             strategy.eval_step.lower(state, batch))
  names = _op_names(lowered.compile().as_text())
  for _ in range(2):
    step()
  trace_dir = tempfile.mkdtemp(prefix='nin_jax_profile_')
  with jax.profiler.trace(trace_dir):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      step()
    step_ms = 1000 * (time.perf_counter() - start) / _STEPS.value
  per_step = {name: ms / _STEPS.value
              for name, ms in _event_times(trace_dir).items()}
  print(f'{_STEP.value} step: {step_ms:.0f} ms (batch {config.batch_size}, '
        f'{jax.devices()[0].device_kind})\n')
  print('| ms per step | op | shape | from |\n|---|---|---|---|')
  for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[
      :_TOP.value]:
    shape, origin = names.get(name, ('', ''))
    origin = re.sub(r'^jit\(\w+\)/', '', origin)
    print(f'| {ms:.1f} | {name} | {shape} | {origin} |')
  print(f'\nAll listed ops: {sum(per_step.values()):.0f} ms of thread time '
        f'per {step_ms:.0f} ms step.')


if __name__ == '__main__':
  app.run(main)
