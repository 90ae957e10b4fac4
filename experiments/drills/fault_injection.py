"""Kill a training run at random moments, resume it, compare with a clean run.

  python experiments/drills/fault_injection.py --workdir=/tmp/nin_faults [--kills=5]
      [--seed=0] [--config=nin_jax/configs/test.py] [--override=--config.X=Y]

First trains an uninterrupted reference run. Then starts the same command
in a second workdir and sends it SIGKILL at a random moment: a random step
after its newest checkpoint, plus a random 0-0.3 s after that step's
metrics are logged (so mid-step, mid-save or mid-evaluation); then starts it
again, until it has been killed --kills times; then lets it finish. Finally it compares the two
workdirs: every metrics.jsonl row (wall-clock fields excepted) and every
array of the final checkpoint, bit for bit. Prints how many kills landed,
how many the run survived (resumed and finished) and whether the results are
identical; exits 1 if they are not.

Both runs share a persistent XLA compilation cache (in the workdir), so
restarts cost seconds; a cached program computes the same bits.

  python experiments/drills/fault_injection.py --workdir=/tmp/nin_faults_gs --gcs

The same with both runs in a gs:// bucket of a local GCS emulator
(tests/gcs_emulator.py; pip install -e ".[test]"): kills land mid-upload
too, and the resumed run must still match bit for bit. --workdir then
holds only the logs and the compilation cache.

  python experiments/drills/fault_injection.py --workdir=/tmp/nin_starts --start_up

Instead starts two processes over gloo (loopback) several times and sends a
stop signal to one or both while they start (importing, connecting,
reading data, compiling): each time both must exit 75 within --patience
seconds, with one checkpoint (JAX's preemption service stops them after
their first step). Prints one line per start; exits 1 if any fails.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from nin_jax.files import storage  # pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax.files import workdir_files  # pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax.training import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', None, 'Root for both runs.',
                               required=True)
_KILLS = flags.DEFINE_integer('kills', 5, 'SIGKILLs to land before the '
                              'run may finish.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for the kill delays.')
_CONFIG = flags.DEFINE_string('config', 'nin_jax/configs/test.py',
                              'Config file of both runs.')
_OVERRIDES = flags.DEFINE_multi_string(
    'override', ['--config.num_train_steps=300', '--config.log_every_steps=5',
                 '--config.checkpoint_every_steps=7',
                 '--config.eval_every_steps=50'],
    'Extra --config.* flags of both runs.')
_START_UP = flags.DEFINE_bool(
    'start_up', False, 'Signal two processes while they start, instead.')
_GCS = flags.DEFINE_bool(
    'gcs', False, 'Run both workdirs on gs:// (a local GCS emulator).')
_PATIENCE = flags.DEFINE_float(
    'patience', 120, 'Seconds both processes of a --start_up run may take.')
TIMING = ('time', 'images_per_sec')
# --start_up: (signal, seconds after both were launched, processes signalled).
# 0.3 s: importing; 1-2 s: connecting or reading data; 4 s: compiling.
START_UP_CASES = [(signal.SIGTERM, delay, targets)
                  for delay in (0.3, 1.5, 4.0)
                  for targets in ((1,), (0,), (0, 1))] + [
                      (signal.SIGINT, 0.3, (1,)), (signal.SIGHUP, 1.5, (0,))]


def _command(workdir):
  return [sys.executable, '-m', 'nin_jax.main', f'--workdir={workdir}',
          f'--config={_CONFIG.value}', *_OVERRIDES.value]


def _env():
  # os.environ holds the emulator's variables under --gcs.
  cache = os.path.join(_WORKDIR.value, 'xla_cache')
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO,
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _rows(workdir):
  return [{k: v for k, v in row.items() if k not in TIMING}
          for row in workdir_files.read_metrics(workdir)]


def _logged_step(workdir):
  """The last step with a complete row in metrics.jsonl (0 if none)."""
  try:
    rows = workdir_files.read_metrics(workdir)
  except (OSError, ValueError):
    return 0
  return rows[-1]['step'] if rows else 0


def _newest_checkpoint(workdir):
  return max(workdir_files.finished_steps(workdir), default=0)


def _same_arrays(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      x.dtype == y.dtype and np.array_equal(x, y)
      for x, y in zip(leaves_a, leaves_b))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_up(case, workdir):
  """One --start_up case: True if both processes exit 75 in time."""
  signum, delay, targets = case
  address = f'localhost:{_free_port()}'
  logs = [os.path.join(_WORKDIR.value, f'{os.path.basename(workdir)}.p{i}.log')
          for i in range(2)]
  processes = []
  started = time.perf_counter()
  for i, log_path in enumerate(logs):
    with open(log_path, 'w', encoding='utf-8') as log:
      processes.append(subprocess.Popen(
          _command(workdir) + [f'--coordinator_address={address}',
                               '--num_processes=2', f'--process_id={i}'],
          cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT))
  time.sleep(delay)
  for i in targets:
    processes[i].send_signal(signum)
  statuses = []
  for process in processes:
    left = _PATIENCE.value - (time.perf_counter() - started)
    try:
      statuses.append(process.wait(timeout=max(left, 1)))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      statuses.append('hung')
  checkpoints = (sorted(os.listdir(workdir_files.checkpoints_dir(workdir)))
                 if os.path.isdir(workdir_files.checkpoints_dir(workdir))
                 else [])
  ok = statuses == [75, 75] and len(checkpoints) == 1
  print(f'{signal.Signals(signum).name} {delay} s after launch to process(es) '
        f'{", ".join(map(str, targets))}: exit statuses {statuses} after '
        f'{time.perf_counter() - started:.1f} s, checkpoints {checkpoints}'
        f'{"" if ok else "  <- FAILED (logs: " + ", ".join(logs) + ")"}',
        flush=True)
  return ok


def main(argv):
  del argv
  if _START_UP.value:
    os.makedirs(_WORKDIR.value, exist_ok=True)
    runs = [os.path.join(_WORKDIR.value, f'start{i}')
            for i in range(len(START_UP_CASES))]
    if any(os.path.exists(run) for run in runs):
      raise app.UsageError(f'{_WORKDIR.value} holds runs; pass a new '
                           '--workdir.')
    results = [_start_up(case, run) for case, run in zip(START_UP_CASES, runs)]
    print(f'{sum(results)} of {len(results)} starts: both processes exited 75 '
          'with one checkpoint.')
    sys.exit(0 if all(results) else 1)
  if _GCS.value:
    sys.path.insert(0, os.path.join(REPO, 'tests'))
    import gcs_emulator  # pylint: disable=g-import-not-at-top
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with gcs_emulator.gcs_emulator() as emulator:
      print(f'GCS emulator at {emulator.endpoint}, bucket {emulator.url}')
      _kill_and_compare(emulator.url)
  else:
    _kill_and_compare(_WORKDIR.value)


def _kill_and_compare(root):
  """Kills a run in `root` --kills times, lets it finish, compares it with
  an uninterrupted one; exits 1 if they differ."""
  rng = random.Random(_SEED.value)
  straight = f'{root}/straight'
  broken = f'{root}/killed'
  for path in (straight, broken):
    if storage.exists(path):
      raise app.UsageError(f'{path} exists; pass a new --workdir.')

  started = time.perf_counter()
  subprocess.run(_command(straight), cwd=REPO, env=_env(), check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  print(f'uninterrupted run: {time.perf_counter() - started:.1f} s')

  total_steps = max(row['step'] for row in _rows(straight))
  kills, restarts = 0, 0
  while True:
    log_path = os.path.join(_WORKDIR.value, f'start{restarts + 1}.log')
    with open(log_path, 'w', encoding='utf-8') as log:  # Never a full pipe.
      process = subprocess.Popen(_command(broken), cwd=REPO, env=_env(),
                                 stdout=log, stderr=subprocess.STDOUT)
    restarts += 1
    if kills < _KILLS.value:
      # A random step after the newest checkpoint (within an even share of
      # what is left, so the kills spread over the run), and a random moment
      # up to 0.3 s after that step's metrics appear: mid-step, mid-save,
      # mid-evaluation or between them.
      low = min(_newest_checkpoint(broken) + 1, total_steps)
      share = (total_steps - low) // (_KILLS.value - kills + 1)
      target = rng.randint(low, low + share)
      extra = rng.uniform(0.0, 0.3)
      while process.poll() is None and _logged_step(broken) < target:
        time.sleep(0.01)
      time.sleep(extra)
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        print(f'kill {kills}: SIGKILL {extra:.2f} s after step {target} was '
              f'logged; last logged step {_logged_step(broken)}, newest '
              f'checkpoint {_newest_checkpoint(broken)}')
        continue
    if process.wait() != 0:
      with open(log_path, encoding='utf-8') as f:
        print(f'start {restarts} failed with status {process.returncode}:\n'
              f'{f.read()[-3000:]}')
      sys.exit(1)
    break  # Finished.
  if kills < _KILLS.value:
    print(f'The run finished after {kills} kills (fewer than --kills='
          f'{_KILLS.value}); lengthen it with --override.')

  same_metrics = _rows(straight) == _rows(broken)
  step_a, arrays_a, _ = checkpointing.read_checkpoint(straight)
  step_b, arrays_b, _ = checkpointing.read_checkpoint(broken)
  same_state = step_a == step_b and _same_arrays(arrays_a, arrays_b)
  print(f'kills landed: {kills}; survived: {kills} of {kills} (the run '
        f'resumed each time and finished after {restarts} starts)')
  print(f'final step {step_b}; metrics identical: {same_metrics}; final '
        f'parameters and optimizer state identical: {same_state}')
  sys.exit(0 if same_metrics and same_state else 1)


if __name__ == '__main__':
  app.run(main)
