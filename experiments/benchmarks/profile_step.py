"""Where the compiled NiN step spends its time: per-op times from a trace.

  python experiments/benchmarks/profile_step.py [--step=train|eval] [--top=30]
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
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import fixed_batch

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', '..', 'nin_jax',
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
  run = fixed_batch.setup(config)

  def step():
    if _STEP.value == 'train':
      run.state, metrics = run.strategy.train_step(run.state, run.train_batch,
                                                   run.key)
    else:
      metrics = run.strategy.eval_step(run.state, run.batch)
    jax.block_until_ready(metrics)

  lowered = (run.strategy.train_step.lower(run.state, run.train_batch, run.key)
             if _STEP.value == 'train' else
             run.strategy.eval_step.lower(run.state, run.batch))
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
