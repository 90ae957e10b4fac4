"""nin_jax against a PyTorch NiN, side by side in one process.

  python experiments/benchmarks/benchmark.py [--repeats=5] [--steps=3] [--out=FILE]
      [--dtypes=float32,bfloat16] [--epoch=auto|yes|no]
      [--config=nin_jax/configs/NAME.py] [--config.FIELD=VALUE ...]

On CPU, GPU or TPU alike it measures, for the configured model (default:
the CIFAR-10 NiN at full width on 32x32x3 inputs, batch 128):
  * nin_jax, once per --dtypes entry (default: the config's model.dtype):
    the compiled train step (the trainer's own `jit` strategy, one step per
    dispatch, on a fixed batch) and eval step: compile time, images/s
    (median over --repeats timings of --steps steps each, after warm-up),
    the XLA-reported memory of the compiled train step;
  * with --epoch (default: on GPU/TPU, off on CPU, where it takes an hour):
    one epoch of CIFAR-10-sized data (--epoch_images random uint8 images,
    50,000) through the trainer's own loop: the training split on the
    device, each batch drawn, standardized, cropped and flipped there,
    config.steps_per_dispatch steps per dispatch (0: the trainer's default
    for the backend). The median epoch time over --epoch_repeats epochs;
  * PyTorch (optional; skipped with a message when not installed, or when
    the config is not the paper's CIFAR-10 network): the reference
    `nn.Sequential` of nin_jax/model/torch_reference.py with SGD (momentum,
    Nesterov), same batch and thread count, on a fixed batch. On CPU,
    float32. On a CUDA GPU, the variants a PyTorch user would try: float32
    eager, then channels-last with bfloat16 autocast eager, compiled
    (`torch.compile`) and compiled with CUDA graphs (mode
    'reduce-overhead'); "PyTorch best" is the fastest of them;
  * matrix-product peaks in JAX (float32 2048^2 on CPU; float32 and bfloat16
    8192^2 on accelerators), to put the achieved FLOP/s in proportion.

A training image of the CIFAR-10 NiN costs 3 x 0.445 GFLOP, an evaluation
image 0.445 (`python -m nin_jax.summary`). MFU is achieved FLOP/s over the chip's datasheet
peak for the dtype (dense bfloat16; TF32 for float32, which is what the
convolutions of both frameworks use on NVIDIA GPUs by default), where the
chip is known. Prints a Markdown table and writes JSON (--out) as it goes,
so a run cut short keeps what it measured.

With another config (e.g. digits) the image shape is its dataset's, and the
train-step rate is what a real run's logged `images_per_sec` should approach.
"""

import functools
import json
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO, 'nin_jax/configs/default.py'),
    'nin_jax config file; --config.FIELD=VALUE overrides a field.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (median).')
_STEPS = flags.DEFINE_integer('steps', 3, 'Steps per timed repeat.')
_DTYPES = flags.DEFINE_list('dtypes', None, 'Compute dtypes to time nin_jax '
                            'in (float32, bfloat16); default: the config\'s '
                            'model.dtype.')
_EPOCH = flags.DEFINE_enum('epoch', 'auto', ['auto', 'yes', 'no'],
                           'Time whole epochs through the trainer\'s loop; '
                           'auto: on GPU/TPU only.')
_EPOCH_IMAGES = flags.DEFINE_integer('epoch_images', 50_000,
                                     'Training images in the timed epoch.')
_EPOCH_REPEATS = flags.DEFINE_integer('epoch_repeats', 3, 'Timed epochs.')
_TORCH = flags.DEFINE_enum('torch', 'auto', ['auto', 'no'],
                           'PyTorch columns: auto runs them when possible.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSON results.')

FORWARD_GFLOP = 2 * 222.49e6 / 1e9  # Per 32x32 image (nin_jax.summary).
TRAIN_GFLOP = 3 * FORWARD_GFLOP  # Forward + backward (about 2x forward).
# Dense datasheet peaks in TFLOP/s: bfloat16, and TF32 for float32 (the SXM
# parts; an H200 has the H100's arithmetic).
DATASHEET_TFLOPS = {
    'H100': {'bfloat16': 989.4, 'float32': 494.7},
    'H200': {'bfloat16': 989.4, 'float32': 494.7},
    'A100': {'bfloat16': 312.0, 'float32': 156.0},
}


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_seconds(run_steps, steps=None) -> float:
  """Median wall time of one step over the repeats, after two warm-ups."""
  steps = steps or _STEPS.value
  run_steps(2)
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run_steps(steps)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def _accelerated() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() != 'cpu'


def matmul_peaks_tflops() -> dict[str, float]:
  """JAX's matrix-product rate per dtype: the practical ceiling."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 8192 if _accelerated() else 2048
  dtypes = ('float32', 'bfloat16') if _accelerated() else ('float32',)
  peaks = {}
  for dtype in dtypes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)

    def run(k, a=a, f=f):
      for _ in range(k):
        out = f(a)
      out.block_until_ready()
    peaks[dtype] = 2 * n ** 3 / _median_seconds(run, steps=10) / 1e12
  return peaks


def _image_shape(config) -> tuple[int, int, int]:
  from nin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.image_shape(config)


def _is_seed_network(config) -> bool:
  """Whether the config's model is the network PyTorch reimplements."""
  from nin_jax.configs import default  # pylint: disable=g-import-not-at-top
  reference = default.get_config()
  return (config.model.block_features == reference.model.block_features
          and config.num_classes == 10 and _image_shape(config) == (32, 32, 3)
          and not config.model.use_batchnorm)


def _device_memory_mb() -> float | None:
  """Peak device memory of this process so far, where the backend says."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return peak / 2**20 if peak else None


def bench_nin_jax(config, epoch: bool) -> dict[str, float]:
  """The trainer's compiled steps (and loop) on random data."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import fixed_batch  # pylint: disable=g-import-not-at-top
  from nin_jax.data import device_input, preprocessing  # pylint: disable=g-import-not-at-top,g-multiple-import
  from nin_jax.training import steps, train
  batch_size = config.batch_size
  shape = _image_shape(config)
  run = fixed_batch.setup(config)
  strategy, key = run.strategy, run.key

  start = time.perf_counter()
  compiled = strategy.train_step.lower(run.state, run.train_batch,
                                       key).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  step_memory_mb = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                    + memory.output_size_in_bytes) / 2**20 if memory else None

  def train_steps(k):
    for _ in range(k):
      run.state, metrics = strategy.train_step(run.state, run.train_batch, key)
    jax.block_until_ready(metrics)

  def eval_steps(k):
    for _ in range(k):
      metrics = strategy.eval_step(run.state, run.batch)
    jax.block_until_ready(metrics)

  result = {'dtype': config.model.dtype,
            'train_images_per_sec': batch_size / _median_seconds(train_steps),
            'eval_images_per_sec': batch_size / _median_seconds(eval_steps),
            'compile_seconds': compile_seconds,
            'train_step_memory_mb': step_memory_mb}
  if epoch:
    run.state = None  # Its buffers were donated; the loop starts afresh.
    config = config.copy_and_resolve_references()
    config.input_pipeline = 'device'
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_EPOCH_IMAGES.value,) + shape, np.uint8)
    labels = rng.integers(0, config.num_classes, _EPOCH_IMAGES.value)
    channels = shape[-1]
    prep = preprocessing.Preprocessing(
        'standardize', shift=np.full(channels, 127.5, np.float32),
        scale=np.full(channels, 1 / 64, np.float32))
    batches = device_input.DeviceTrainBatches.from_arrays(
        images, labels, prep, config, strategy)
    steps_per_epoch = _EPOCH_IMAGES.value // batch_size
    per_dispatch = train.resolve_steps_per_dispatch(config)
    fused = strategy.compile_steps(functools.partial(
        steps.train_steps, draw=batches.draw))
    state = run.fresh_state()

    def dispatch(first, count):
      nonlocal state
      state, sums = fused(state, batches.inputs, key, np.int32(first),
                          np.int32(count))
      return sums

    start = time.perf_counter()
    jax.block_until_ready(dispatch(0, per_dispatch))  # Compiles.
    loop_compile_seconds = time.perf_counter() - start
    times = []
    for repeat in range(_EPOCH_REPEATS.value):
      start = time.perf_counter()
      for first in range(0, steps_per_epoch, per_dispatch):
        sums = dispatch(repeat * steps_per_epoch + first,
                        min(per_dispatch, steps_per_epoch - first))
      jax.block_until_ready(sums)
      times.append(time.perf_counter() - start)
    result.update({
        'epoch_seconds': statistics.median(times),
        'epoch_images': steps_per_epoch * batch_size,
        'epoch_steps_per_dispatch': per_dispatch,
        'loop_compile_seconds': loop_compile_seconds,
        'epoch_loss_finite': bool(np.isfinite(float(sums['loss'])))})
  result['device_memory_mb'] = _device_memory_mb()
  result['peak_rss_mb'] = _peak_rss_mb()
  return result


def _torch_variants(torch, cuda: bool) -> list[tuple[str, dict]]:
  if not cuda:
    return [('float32', {})]
  bf16 = {'channels_last': True, 'autocast': torch.bfloat16}
  return [('float32 eager', {}),
          ('bfloat16 channels-last eager', bf16),
          ('bfloat16 channels-last compiled', {**bf16, 'compile': 'default'}),
          ('bfloat16 channels-last compiled + CUDA graphs',
           {**bf16, 'compile': 'reduce-overhead'})]


def bench_torch(config) -> dict[str, dict] | None:
  """The reference PyTorch NiN in each variant; None when not possible."""
  if not _is_seed_network(config):
    print('The PyTorch reference (nin_jax/model/torch_reference.py) is the CIFAR-10 '
          'network; this config '
          'is another one, so its column is skipped.')
    return None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('PyTorch is not installed (pip install torch): its column is '
          'skipped.')
    return None
  from nin_jax.model.torch_reference import torch_nin  # pylint: disable=g-import-not-at-top
  cuda = _accelerated() and torch.cuda.is_available()
  if _accelerated() and not cuda:
    print('PyTorch sees no CUDA device here: its column is skipped.')
    return None
  device = 'cuda' if cuda else 'cpu'
  if not cuda:
    torch.set_num_threads(os.cpu_count())
  batch_size = config.batch_size
  results = {}
  for name, options in _torch_variants(torch, cuda):
    torch.manual_seed(0)
    memory_format = (torch.channels_last if options.get('channels_last')
                     else torch.contiguous_format)
    net = torch_nin().to(device, memory_format=memory_format)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9,
                          nesterov=True, weight_decay=5e-4,
                          **({'foreach': True} if cuda else {}))
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    forward = net
    if options.get('compile'):
      forward = torch.compile(net, mode=options['compile'])
    autocast = (torch.autocast(device, dtype=options['autocast'])
                if options.get('autocast') else torch.autocast(device,
                                                               enabled=False))

    def sync():
      if cuda:
        torch.cuda.synchronize()

    def train_steps(k, forward=forward, opt=opt, autocast=autocast,
                    images=images, labels=labels, net=net):
      net.train()
      for _ in range(k):
        opt.zero_grad(set_to_none=True)
        with autocast:
          loss = loss_fn(forward(images), labels)
        loss.backward()
        opt.step()
      sync()

    def eval_steps(k, forward=forward, autocast=autocast, images=images,
                   net=net):
      net.eval()
      with torch.no_grad(), autocast:
        for _ in range(k):
          forward(images)
      sync()

    if cuda:
      torch.cuda.reset_peak_memory_stats()
    try:
      start = time.perf_counter()
      train_steps(1)  # Compiles (when compiled) and warms up.
      first_step_seconds = time.perf_counter() - start
      results[name] = {
          'dtype': 'bfloat16' if options.get('autocast') else 'float32',
          'train_images_per_sec': batch_size / _median_seconds(train_steps),
          'eval_images_per_sec': batch_size / _median_seconds(eval_steps),
          'first_step_seconds': first_step_seconds,
          'device_memory_mb': (torch.cuda.max_memory_allocated() / 2**20
                               if cuda else None)}
    except Exception as e:  # pylint: disable=broad-except
      # One variant failing (a compiler bug, say) leaves the others' numbers.
      print(f'PyTorch {name} failed, left out: {type(e).__name__}: {e}')
      continue
    print(f'PyTorch {name}: {results[name]["train_images_per_sec"]:.0f} train '
          f'img/s, {results[name]["eval_images_per_sec"]:.0f} eval img/s',
          flush=True)
  return {'torch_version': torch.__version__, 'device': device,
          'threads': torch.get_num_threads(), 'variants': results,
          'peak_rss_mb': _peak_rss_mb()}


def _datasheet_tflops(device_kind: str, dtype: str) -> float | None:
  for chip, peaks in DATASHEET_TFLOPS.items():
    if chip in device_kind:
      return peaks.get(dtype)
  return None


def _best(rows: dict[str, dict], key: str) -> tuple[str, float]:
  name = max(rows, key=lambda n: rows[n][key])
  return name, rows[name][key]


def print_report(result: dict) -> None:
  """The Markdown tables: one row per variant, then the ratios."""
  peaks = result['matmul_peak_tflops']
  seed = result['seed_network']
  kind = result['device']
  print(f'\n{kind} ({result["backend"]}, {result["cpu_count"]} CPUs), '
        f'{result["dataset"]} model, batch {result["batch_size"]}; JAX '
        'matmul peak ' + ', '.join(f'{d} {p:.2f} TFLOP/s'
                                   for d, p in peaks.items()) + '\n')
  rows = {f'nin_jax {d}': r for d, r in result['nin_jax'].items()}
  torch_rows = (result['pytorch'] or {}).get('variants', {})
  rows.update({f'PyTorch {name}': r for name, r in torch_rows.items()})
  print('| variant | train img/s | eval img/s | train TFLOP/s | MFU (train) '
        '| epoch | compile / first step | device memory |')
  print('|---|---|---|---|---|---|---|---|')
  for name, r in rows.items():
    train, evaluate = r['train_images_per_sec'], r['eval_images_per_sec']
    tflops = train * TRAIN_GFLOP / 1e3 if seed else None
    datasheet = _datasheet_tflops(kind, r['dtype'])
    mfu = (f'{100 * tflops / datasheet:.1f}%' if tflops and datasheet
           else (f'{100 * tflops / peaks["float32"]:.0f}% of matmul'
                 if tflops else 'n/a'))
    if 'epoch_seconds' in r:
      epoch = (f'{r["epoch_seconds"]:.2f} s for {r["epoch_images"]:,} images '
               f'(trainer loop, steps per dispatch: '
               f'{r["epoch_steps_per_dispatch"]})')
    else:
      epoch = f'{50_000 / train:.2f} s for 50,000 (step rate)'
    compile_s = r.get('compile_seconds', r.get('first_step_seconds'))
    memory = r.get('device_memory_mb')
    print(f'| {name} | {train:,.0f} | {evaluate:,.0f} | '
          + (f'{tflops:.2f}' if tflops else 'n/a') + f' | {mfu} | {epoch} | '
          f'{compile_s:.1f} s | '
          + (f'{memory:,.0f} MB' if memory else 'n/a') + ' |')
  if not torch_rows:
    return
  ours = {n: r for n, r in rows.items() if n.startswith('nin_jax')}
  theirs = {n: r for n, r in rows.items() if n.startswith('PyTorch')}
  print('\n| ratio | train | eval |\n|---|---|---|')
  printed = set()
  for label, mine, other in (
      ('nin_jax best / PyTorch best', ours, theirs),
      ('float32: nin_jax / PyTorch',
       {n: r for n, r in ours.items() if r['dtype'] == 'float32'},
       {n: r for n, r in theirs.items() if r['dtype'] == 'float32'}),
      ('bfloat16: nin_jax / PyTorch best',
       {n: r for n, r in ours.items() if r['dtype'] == 'bfloat16'},
       {n: r for n, r in theirs.items() if r['dtype'] == 'bfloat16'})):
    if not mine or not other:
      continue
    cells = []
    for key in ('train_images_per_sec', 'eval_images_per_sec'):
      (a_name, a), (b_name, b) = _best(mine, key), _best(other, key)
      cells.append(f'{a / b:.2f}x ({a_name} / {b_name})')
    if tuple(cells) not in printed:  # One dtype: the same row twice.
      printed.add(tuple(cells))
      print(f'| {label} | {cells[0]} | {cells[1]} |')


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # JAX would otherwise take 75% of GPU memory up front, leaving PyTorch
  # (in the same process) little, and hiding JAX's real peak.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  epoch = _EPOCH.value == 'yes' or (_EPOCH.value == 'auto' and _accelerated())
  result = {'device': str(jax.devices()[0].device_kind),
            'backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
            'jax_version': jax.__version__, 'config': config.to_dict(),
            'dataset': config.dataset, 'batch_size': config.batch_size,
            'seed_network': _is_seed_network(config), 'nin_jax': {},
            'pytorch': None}

  def save():
    if _OUT.value:
      with open(_OUT.value, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=2)

  result['matmul_peak_tflops'] = matmul_peaks_tflops()
  print('JAX matmul peaks (TFLOP/s):', result['matmul_peak_tflops'],
        flush=True)
  for dtype in _DTYPES.value or [config.model.dtype]:
    variant = config.copy_and_resolve_references()
    variant.model.dtype = dtype
    result['nin_jax'][dtype] = bench_nin_jax(variant, epoch)
    print(f'nin_jax {dtype}:', result['nin_jax'][dtype], flush=True)
    save()
  if _TORCH.value == 'auto':
    result['pytorch'] = bench_torch(config)
    save()
  print_report(result)


if __name__ == '__main__':
  app.run(main)
