"""Images/sec of the sharded train step on 1, 2, 4 and 8 simulated CPU devices.

  python experiments/benchmarks/scaling.py [--devices=1,2,4,8] [--batch_size=128]
      [--widths=digits|full] [--steps=20] [--out=scaling.json]

Each device count runs in its own process (XLA fixes the device count at
start-up) over the same global batch. The parent also times the plain
single-device step (`jax.jit(train_step)` on unsharded arrays), so the
per-step cost of the sharding machinery shows as a ratio. Simulated devices
share this machine's cores, so more devices cannot be faster here: the table
measures overhead, not speed-up. Medians over `--steps` timed steps after
two warm-up steps; writes JSON and prints a Markdown table.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'],
                             'Simulated device counts.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_WIDTHS = flags.DEFINE_enum('widths', 'digits', ['digits', 'full'],
                            'NiN widths: configs/digits.py or the CIFAR ones.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per setting.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSON results.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: run one setting.')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_step_seconds(step, state, batch, key, steps):
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(2):
    state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def worker(mode: str) -> dict:
  """Times one setting in this process; mode is 'plain' or 'sharded'."""
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nin_jax.configs import default, digits  # pylint: disable=g-import-not-at-top
  from nin_jax.training import parallel, steps  # pylint: disable=g-import-not-at-top,g-multiple-import

  config = digits.get_config()
  if _WIDTHS.value == 'full':
    config.model.block_features = default.get_config().model.block_features
  config.batch_size = _BATCH.value
  shape = (8, 8, 1) if _WIDTHS.value == 'digits' else (32, 32, 3)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(_BATCH.value,) + shape).astype(np.float32),
           'label': rng.integers(0, 10, _BATCH.value).astype(np.int32)}
  state = steps.initial_state(config, shape, steps_per_epoch=100,
                              num_steps=10_000)[0]
  key = steps.dropout_key(config.seed)
  if mode == 'plain':
    step = jax.jit(steps.train_step, donate_argnums=0)
    seconds = _median_step_seconds(step, state, batch, key, _STEPS.value)
  else:
    strategy = parallel.Jit(steps.train_step, steps.eval_step)
    seconds = _median_step_seconds(
        strategy.train_step, strategy.put_state(state),
        strategy.put_batch(batch), strategy.put_key(key), _STEPS.value)
  return {'devices': jax.device_count(), 'mode': mode,
          'step_seconds': seconds, 'images_per_sec': _BATCH.value / seconds}


def _run_worker(mode: str, devices: int) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  out = subprocess.run(
      [sys.executable, __file__, f'--worker={mode}',
       f'--batch_size={_BATCH.value}', f'--widths={_WIDTHS.value}',
       f'--steps={_STEPS.value}'],
      env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  if _WORKER.value:
    print(json.dumps(worker(_WORKER.value)))
    return
  plain = _run_worker('plain', 1)
  rows = [_run_worker('sharded', int(n)) for n in _DEVICES.value]
  results = {'batch_size': _BATCH.value, 'widths': _WIDTHS.value,
             'plain_single_device': plain, 'sharded': rows}
  if _OUT.value:
    with open(_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)
  print(f'\nGlobal batch {_BATCH.value}, {_WIDTHS.value} widths, median of '
        f'{_STEPS.value} steps; plain jit on 1 device: '
        f'{plain["images_per_sec"]:.0f} img/s\n')
  print('| devices | img/s | step time / plain single-device step |')
  print('|---|---|---|')
  for row in rows:
    ratio = row['step_seconds'] / plain['step_seconds']
    print(f'| {row["devices"]} | {row["images_per_sec"]:.0f} | {ratio:.2f} |')


if __name__ == '__main__':
  app.run(main)
