"""Whole train and eval steps of config variants, alternated in one process.

  python experiments/step_ab.py --pairs=6 \
      --variant=model.conv_impl=matmul_kernel_grad \
      --variant=model.conv_impl=winograd

Each --variant is a comma-separated list of FIELD=VALUE overrides of the
default config ('' for the default itself). Every variant gets its own
compiled train and eval step and state; the timed rounds then run one train
and one eval step of each variant in turn, so that a noisy machine slows all
of them alike. Prints each variant's median step time and its speed-up over
the first variant: the median of the per-round ratios.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax import input_pipeline
from nin_jax import models
from nin_jax import optimizer
from nin_jax import parallel
from nin_jax import train
from nin_jax.configs import default

_VARIANTS = flags.DEFINE_multi_string('variant', [''], 'FIELD=VALUE,... '
                                      'overrides of the default config.')
_PAIRS = flags.DEFINE_integer('pairs', 6, 'Timed rounds (after one warm-up).')


def _config(overrides: str):
  config = default.get_config()
  for item in filter(None, overrides.split(',')):
    name, value = item.split('=', 1)
    *parents, field = name.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = type(node[field])(value)
  return config


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  runs = []
  for overrides in _VARIANTS.value:
    config = _config(overrides)
    shape = input_pipeline.image_shape(config)
    strategy = parallel.Jit(train.train_step, train.eval_step)
    lr = optimizer.create_learning_rate_fn(config, 390, 78_000)
    state = strategy.put_state(train.create_train_state(
        config, models.create_model(config), shape, jax.random.key(0), lr))
    batch = strategy.put_batch({
        'image': rng.normal(size=(config.batch_size,) + shape).astype(
            np.float32),
        'label': rng.integers(0, config.num_classes,
                              config.batch_size).astype(np.int32),
        'mask': np.ones(config.batch_size, np.float32)})
    runs.append({'name': overrides or 'default', 'strategy': strategy,
                 'state': state, 'batch': batch,
                 'key': strategy.put_key(jax.random.key(1)),
                 'train': [], 'eval': []})

  for round_ in range(_PAIRS.value + 1):
    for run in runs:
      strategy, batch = run['strategy'], run['batch']
      start = time.perf_counter()
      run['state'], metrics = strategy.train_step(
          run['state'], {'image': batch['image'], 'label': batch['label']},
          run['key'])
      jax.block_until_ready(metrics)
      middle = time.perf_counter()
      jax.block_until_ready(strategy.eval_step(run['state'], batch))
      end = time.perf_counter()
      if round_:  # Round 0 compiles and warms up.
        run['train'].append(middle - start)
        run['eval'].append(end - middle)

  base = runs[0]
  print('| variant | train step | speed-up | eval step | speed-up |')
  print('|---|---|---|---|---|')
  for run in runs:
    cells = []
    for kind in ('train', 'eval'):
      ratio = statistics.median(
          b / r for b, r in zip(base[kind], run[kind]))
      cells.append(f'{1000 * statistics.median(run[kind]):.0f} ms | '
                   f'{ratio:.2f}x')
    print(f'| {run["name"]} | {cells[0]} | {cells[1]} |')


if __name__ == '__main__':
  app.run(main)
