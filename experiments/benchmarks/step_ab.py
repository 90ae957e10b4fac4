"""Whole train and eval steps of config variants, alternated in one process.

  python experiments/benchmarks/step_ab.py --pairs=6 \
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import fixed_batch
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
  runs = []
  for overrides in _VARIANTS.value:
    run = fixed_batch.setup(_config(overrides))
    runs.append({'name': overrides or 'default', 'run': run,
                 'train': [], 'eval': []})

  for round_ in range(_PAIRS.value + 1):
    for variant in runs:
      run = variant['run']
      start = time.perf_counter()
      run.state, metrics = run.strategy.train_step(
          run.state, run.train_batch, run.key)
      jax.block_until_ready(metrics)
      middle = time.perf_counter()
      jax.block_until_ready(run.strategy.eval_step(run.state, run.batch))
      end = time.perf_counter()
      if round_:  # Round 0 compiles and warms up.
        variant['train'].append(middle - start)
        variant['eval'].append(end - middle)

  base = runs[0]
  print('| variant | train step | speed-up | eval step | speed-up |')
  print('|---|---|---|---|---|')
  for variant in runs:
    cells = []
    for kind in ('train', 'eval'):
      ratio = statistics.median(
          b / r for b, r in zip(base[kind], variant[kind]))
      cells.append(f'{1000 * statistics.median(variant[kind]):.0f} ms | '
                   f'{ratio:.2f}x')
    print(f'| {variant["name"]} | {cells[0]} | {cells[1]} |')


if __name__ == '__main__':
  app.run(main)
