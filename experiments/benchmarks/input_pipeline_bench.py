"""Does the input pipeline keep up with the train step? Images/sec of each.

  python experiments/benchmarks/input_pipeline_bench.py [--settings=digits,cifar10]
      [--preprocessing=standardize,gcn_zca] [--out=input_bench.json]

For each setting and preprocessing it times, one after the other in one
process:
  * the streaming path: `input_pipeline.train_batches` (tf.data on the host)
    including the copy onto the devices, after one warm-up epoch (the source
    is cached in memory from then on, as in training);
  * the device-resident path: `device_input.DeviceTrainBatches.batch`;
  * the train step of the same config on a fixed batch (no input at all),
    one step per dispatch;
  * the trainer's own loop: `steps.train_steps`, config.steps_per_dispatch
    steps per dispatch, each drawing its batch on the device;
and prints each path's images/sec as a ratio to the step's: the goal is at
least 10x, so that input never limits training. The loop's rate is what a
real run's logged `images_per_sec` should match.

Settings: 'digits' is configs/digits.py on the bundled 8x8 digits;
'cifar10' is the default CIFAR-10 config at full width on
`tfds.testing.mock_data` images (32x32x3, random pixels; this machine
cannot download CIFAR-10, and the pipeline's cost does not depend on the
pixel values). Each setting runs in its own process.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_SETTINGS = flags.DEFINE_list('settings', ['digits', 'cifar10'],
                              'digits and/or cifar10.')
_PREPROCESSING = flags.DEFINE_list('preprocessing', ['standardize', 'gcn_zca'],
                                   'Preprocessing kinds to time.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Timed batches per path.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed train steps (full-width '
                              'CIFAR steps take seconds on a CPU).')
_MOCK_EXAMPLES = flags.DEFINE_integer('mock_examples', 5000,
                                      'Mock CIFAR-10 examples per split.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSON results.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: one setting.')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images_per_sec(next_batch, count, batch_size):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(next_batch())  # Compilation / first fill.
  start = time.perf_counter()
  for _ in range(count):
    batch = next_batch()
  jax.block_until_ready(batch)
  return count * batch_size / (time.perf_counter() - start)


def _measure(setting, kind):
  """Images/sec of both paths and of the train step, for one config."""
  import functools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nin_jax.configs import default, digits  # pylint: disable=g-import-not-at-top,g-multiple-import
  from nin_jax.data import device_input, input_pipeline  # pylint: disable=g-import-not-at-top,g-multiple-import
  from nin_jax.training import parallel, steps, train
  config = (digits if setting == 'digits' else default).get_config()
  config.preprocessing = kind
  dataset = input_pipeline.Dataset(config)
  info = input_pipeline.get_info(dataset)
  started = time.perf_counter()
  prep = input_pipeline.fit_preprocessing(dataset, info, config)
  fit_seconds = time.perf_counter() - started
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  steps_per_epoch = input_pipeline.steps_per_epoch(info, config, 1)
  result = {'setting': setting, 'preprocessing': kind,
            'batch_size': config.batch_size, 'fit_seconds': fit_seconds}

  stream = input_pipeline.train_batches(dataset, info, prep, config)
  for _ in range(steps_per_epoch):  # Fills the in-memory cache.
    next(stream)
  result['streaming'] = _images_per_sec(
      lambda: strategy.put_batch(next(stream)), _BATCHES.value,
      config.batch_size)

  config.input_pipeline = 'device'
  device = device_input.DeviceTrainBatches.from_dataset(
      dataset, info, prep, config, strategy)
  counter = iter(range(10**9))
  result['device'] = _images_per_sec(lambda: device.batch(next(counter)),
                                     _BATCHES.value, config.batch_size)

  # The schedule's length does not change a step's time.
  state = strategy.put_state(steps.initial_state(
      config, info.image_shape, steps_per_epoch,
      int(config.num_epochs * steps_per_epoch))[0])
  key = strategy.put_key(steps.dropout_key(config.seed))
  batch = device.batch(0)

  def step():
    nonlocal state
    state, metrics = strategy.train_step(state, batch, key)
    return metrics

  # A digits step takes milliseconds: time more of them.
  num_steps = _STEPS.value * (30 if setting == 'digits' else 1)
  result['train_step'] = _images_per_sec(step, num_steps, config.batch_size)

  # What the trainer runs: either steps_per_dispatch steps per compiled
  # call, each drawing its batch on the device, or (one per dispatch) the
  # draw and the step.
  per_call = train.resolve_steps_per_dispatch(config)
  result['steps_per_dispatch'] = per_call
  if per_call > 1:
    fused = strategy.compile_steps(functools.partial(
        steps.train_steps, draw=device.draw))
    calls = iter(range(10**9))

    def loop():
      nonlocal state
      state, sums = fused(state, device.inputs, key,
                          np.int32(next(calls) * per_call), np.int32(per_call))
      return sums

    result['train_loop'] = per_call * _images_per_sec(
        loop, max(1, num_steps // per_call), config.batch_size)
  else:
    def draw_and_step():
      nonlocal state
      state, metrics = strategy.train_step(state, device.batch(next(counter)),
                                           key)
      return metrics

    result['train_loop'] = _images_per_sec(draw_and_step, num_steps,
                                           config.batch_size)
  return result


def _worker(setting):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import contextlib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from nin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  context = contextlib.nullcontext()
  if setting == 'cifar10':
    # Mock data needs no download; skip the reachability check too.
    input_pipeline._host_reachable = lambda url: True  # pylint: disable=protected-access
    context = tfds.testing.mock_data(num_examples=_MOCK_EXAMPLES.value)
  with context:
    rows = [_measure(setting, kind) for kind in _PREPROCESSING.value]
  print(json.dumps(rows))


def main(argv):
  del argv
  if _WORKER.value:
    _worker(_WORKER.value)
    return
  rows = []
  for setting in _SETTINGS.value:
    out = subprocess.run(
        [sys.executable, __file__, f'--worker={setting}',
         f'--preprocessing={",".join(_PREPROCESSING.value)}',
         f'--batches={_BATCHES.value}', f'--steps={_STEPS.value}',
         f'--mock_examples={_MOCK_EXAMPLES.value}'],
        cwd=REPO, check=True, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=REPO)).stdout
    rows += json.loads(out.strip().splitlines()[-1])
  print('| setting | preprocessing | batch | train step img/s | trainer loop '
        'img/s (steps per dispatch) | streaming img/s (x step) | device img/s '
        '(x step) | fit s |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    step = r['train_step']
    print(f"| {r['setting']} | {r['preprocessing']} | {r['batch_size']} | "
          f"{step:.0f} | {r['train_loop']:.0f} ({r['steps_per_dispatch']}) | "
          f"{r['streaming']:.0f} ({r['streaming'] / step:.1f}x) | "
          f"{r['device']:.0f} ({r['device'] / step:.1f}x) | "
          f"{r['fit_seconds']:.1f} |")
  if _OUT.value:
    with open(_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
