"""nin_jax against the seed's PyTorch network, side by side in one process.

  python experiments/benchmark.py [--repeats=5] [--steps=3] [--out=FILE]
      [--config=nin_jax/configs/NAME.py] [--config.FIELD=VALUE ...]

Measures, for the configured model (default: the CIFAR-10 NiN at full width
on 32x32x3 inputs, batch 128, float32; --config.batch_size and
--config.model.dtype=bfloat16 change those):
  * nin_jax: the compiled train step (the trainer's own `jit` strategy) and
    eval step: compile time, images/s (median over --repeats timings of
    --steps steps each, after warm-up), the XLA-reported memory of the
    compiled train step and the process's peak resident memory;
  * PyTorch (optional; skipped with a message when not installed, or when
    the config is not the seed's CIFAR-10 network): the seed's
    `nn.Sequential` with SGD (momentum, Nesterov), same batch, dtype and
    thread count;
  * a float32 matmul (2048^2) in JAX, as the machine's practical peak;
and reports the ratios nin_jax / PyTorch and the achieved GFLOP/s as a share
of that peak (a training image of the CIFAR-10 NiN costs 3 x 0.445 GFLOP, an
evaluation image 0.445). Prints a Markdown table and writes JSON.

With another config (e.g. digits) the image shape is its dataset's, and
the train-step rate is what a real run's logged `images_per_sec` should
approach.
"""

import json
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO, 'nin_jax/configs/default.py'),
    'nin_jax config file; --config.FIELD=VALUE overrides a field.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (median).')
_STEPS = flags.DEFINE_integer('steps', 3, 'Steps per timed repeat.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSON results.')

FORWARD_GFLOP = 2 * 222.49e6 / 1e9  # Per 32x32 image (DESIGN.md section 1).
TRAIN_GFLOP = 3 * FORWARD_GFLOP  # Forward + backward (about 2x forward).


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_seconds(run_steps) -> float:
  """Median wall time of one step over the repeats, after two warm-ups."""
  run_steps(2)
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run_steps(_STEPS.value)
    times.append((time.perf_counter() - start) / _STEPS.value)
  return statistics.median(times)


def matmul_peak_gflops() -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)

  def run(k):
    for _ in range(k):
      out = f(a)
    out.block_until_ready()
  return 2 * n ** 3 / _median_seconds(run) / 1e9


def _image_shape(config) -> tuple[int, int, int]:
  from nin_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.image_shape(config)


def _is_seed_network(config) -> bool:
  """Whether the config's model is the network PyTorch reimplements."""
  from nin_jax.configs import default  # pylint: disable=g-import-not-at-top
  reference = default.get_config()
  return (config.model.block_features == reference.model.block_features
          and config.num_classes == 10 and _image_shape(config) == (32, 32, 3)
          and not config.model.use_batchnorm)


def bench_nin_jax(config) -> dict[str, float]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nin_jax import models, optimizer, parallel, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  batch_size = config.batch_size
  shape = _image_shape(config)
  strategy = parallel.Jit(train.train_step, train.eval_step)
  model = models.create_model(config)
  lr = optimizer.create_learning_rate_fn(config, 390, 78_000)
  init_key, key = jax.random.split(jax.random.key(0))
  state = strategy.put_state(train.create_train_state(
      config, model, shape, init_key, lr))
  key = strategy.put_key(key)
  rng = np.random.default_rng(0)
  batch = strategy.put_batch({
      'image': rng.normal(size=(batch_size,) + shape).astype(np.float32),
      'label': rng.integers(0, config.num_classes, batch_size).astype(np.int32),
      'mask': np.ones(batch_size, np.float32)})
  train_batch = {k: batch[k] for k in ('image', 'label')}

  start = time.perf_counter()
  compiled = strategy.train_step.lower(state, train_batch, key).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  step_memory_mb = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                    + memory.output_size_in_bytes) / 2**20 if memory else None

  def train_steps(k):
    nonlocal state
    for _ in range(k):
      state, metrics = strategy.train_step(state, train_batch, key)
    jax.block_until_ready(metrics)

  def eval_steps(k):
    for _ in range(k):
      metrics = strategy.eval_step(state, batch)
    jax.block_until_ready(metrics)

  train_seconds = _median_seconds(train_steps)
  eval_seconds = _median_seconds(eval_steps)
  return {'train_images_per_sec': batch_size / train_seconds,
          'eval_images_per_sec': batch_size / eval_seconds,
          'compile_seconds': compile_seconds,
          'train_step_memory_mb': step_memory_mb,
          'peak_rss_mb': _peak_rss_mb()}


def bench_torch(config) -> dict[str, float] | None:
  if not _is_seed_network(config):
    print('The PyTorch reference is the seed\'s CIFAR-10 network; this config '
          'is another one, so its column is skipped.')
    return None
  if config.model.dtype != 'float32':
    print('The PyTorch reference runs in float32 on CPU; its column is '
          'skipped for --config.model.dtype=' + config.model.dtype + '.')
    return None
  batch_size = config.batch_size
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('PyTorch is not installed (pip install torch): its column is '
          'skipped.')
    return None
  from nin_jax.seed_torch import seed_network  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  net = seed_network()
  opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
  loss_fn = torch.nn.CrossEntropyLoss()
  images = torch.randn(batch_size, 3, 32, 32)
  labels = torch.randint(0, 10, (batch_size,))

  def train_steps(k):
    net.train()
    for _ in range(k):
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(images), labels)
      loss.backward()
      opt.step()

  def eval_steps(k):
    net.eval()
    with torch.no_grad():
      for _ in range(k):
        net(images)

  return {'train_images_per_sec': batch_size / _median_seconds(train_steps),
          'eval_images_per_sec': batch_size / _median_seconds(eval_steps),
          'torch_version': torch.__version__, 'threads': torch.get_num_threads(),
          'peak_rss_mb': _peak_rss_mb()}


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  peak = matmul_peak_gflops()
  ours = bench_nin_jax(config)
  theirs = bench_torch(config)
  seed_network = _is_seed_network(config)
  result = {'device': str(jax.devices()[0].device_kind),
            'backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
            'config': config.to_dict(), 'batch_size': config.batch_size,
            'dtype': config.model.dtype, 'matmul_peak_gflops': peak,
            'nin_jax': ours, 'pytorch': theirs}

  def gflops_share(images_per_sec, gflop):
    rate = images_per_sec * gflop
    return f'{rate:.0f} GFLOP/s ({100 * rate / peak:.0f}% of peak)'

  print(f'\n{result["device"]} ({result["backend"]}, {os.cpu_count()} CPUs), '
        f'{config.dataset} model, batch {config.batch_size}, '
        f'{config.model.dtype}; float32 matmul peak {peak:.0f} GFLOP/s\n')
  print('| | nin_jax | PyTorch (seed) | nin_jax / PyTorch |')
  print('|---|---|---|---|')
  for name, gflop in (('train', TRAIN_GFLOP), ('eval', FORWARD_GFLOP)):
    key = f'{name}_images_per_sec'
    mine = ours[key]
    row = f'| {name} img/s | {mine:.1f} | '
    row += (f'{theirs[key]:.1f} | {mine / theirs[key]:.2f}x |' if theirs
            else 'n/a | n/a |')
    print(row)
    if seed_network:  # The FLOP counts are the CIFAR-10 NiN's.
      print(f'| {name} compute | {gflops_share(mine, gflop)} | ' + (
          f'{gflops_share(theirs[key], gflop)} | |' if theirs else 'n/a | |'))
  print(f'| compile (train step) | {ours["compile_seconds"]:.1f} s | | |')
  if ours['train_step_memory_mb'] is not None:
    print(f'| train step memory (XLA) | {ours["train_step_memory_mb"]:.0f} MB'
          ' | | |')
  print(f'| peak RSS after each part | {ours["peak_rss_mb"]:.0f} MB | ' + (
      f'{theirs["peak_rss_mb"]:.0f} MB (cumulative) | |' if theirs else '| |'))
  if _OUT.value:
    with open(_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
