"""The paper's studies as sweeps, and a runner: one workdir per point and seed.

  python experiments/paper/sweeps.py --sweeps=gap_vs_fc,dropout --root=/tmp/sweeps
      [--budget=full|digits|test] [--seeds=0,1,2] [--dry_run] [--slurm]
      [--folders=cifar10=ROOT,mnist=ROOT/mnist] [--set=FIELD=VALUE ...]

Each sweep is a list of points; a point is a config file plus
`--config.FIELD=VALUE` overrides, run once per seed in
ROOT/<sweep>/<point>/seed<N> by `python -m nin_jax.main`. The runner goes
through them one after another; with --dry_run it prints the command lines
instead (one per line, for a cluster's job array; run them from the
repository root). A point that finished
has a `sweep_done.json` in its workdir and is skipped; an interrupted one
is simply run again, and the trainer resumes it from its checkpoint.

Budgets:
  full:   the paper's setting: each point's own config (CIFAR-10 unless the
          point says otherwise), full length. Needs the datasets and an
          accelerator.
  digits: every point on the offline digits (configs/digits.py) for
          --digits_epochs epochs: the sweep machinery end to end on a CPU.
          Dataset points all become digits, so that sweep only shows that
          it runs.
  test:   configs/test.py (a tiny NiN, 4 steps): for the test suite.

--folders reads a dataset from an image folder instead of TFDS: each point
whose config names that dataset gets --config.dataset=folder:ROOT. --set
applies overrides to every point (after the point's own), e.g.
num_epochs=80 or model.dtype=bfloat16.

The `paper` sweep is the paper's table in one command, on whatever
accelerator JAX finds:
  python experiments/paper/sweeps.py --sweeps=paper --budget=full --root=R \\
      --folders=cifar10=DATA,mnist=DATA/mnist
  python experiments/paper/results.py --root=R --sweeps=paper --target=89.6
(--points=gap,fc_dropout,fc --set=num_epochs=80 runs a shorter ablation.)

On a SLURM cluster, --slurm submits the unfinished runs as one job array
instead (a task per point and seed, in the same workdirs) and reports its
state until it is done; a rerun submits only what is neither done nor in
the queue. Each task asks for SIGTERM --slurm_signal_seconds before its
time limit, and requeues itself once the trainer has saved (exit 75):
  python experiments/paper/sweeps.py --slurm --sweeps=paper --budget=full \\
      --root=/shared/paper --slurm_partition=gpu --slurm_time=08:00:00
(slurm_array.py; resources and what to set for a cluster: docs/slurm.md).

`experiments/paper/results.py` turns the workdirs into a table and a plot.
"""

import dataclasses
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slurm_array  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DONE_FILE = 'sweep_done.json'
CONFIGS = 'nin_jax/configs'

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict[str, Any]
  # The paper's test error (%) for this setting, if it reports one.
  paper_error: float | None = None
  config: str = f'{CONFIGS}/default.py'


@dataclasses.dataclass(frozen=True)
class Sweep:
  description: str
  points: tuple[Point, ...]
  # Overrides shared by every point (before the point's own).
  common: dict[str, Any] = dataclasses.field(default_factory=dict)


# The paper's ablations (Lin et al. 2014, section 4) were run on CIFAR-10
# without data augmentation, where NiN scores 10.41% test error.
NO_AUGMENTATION = {'augment_pad': 0, 'augment_flip': False}

SWEEPS = {
    'gap_vs_fc': Sweep(
        'Global average pooling against fully connected heads (paper '
        'section 4.6: 10.41% vs 10.88% with dropout vs 11.59%).',
        (Point('gap', {'model.head': 'gap'}, 10.41),
         Point('fc_dropout', {'model.head': 'fc_dropout'}, 10.88),
         Point('fc', {'model.head': 'fc'}, 11.59)),
        NO_AUGMENTATION),
    'mlpconv_depth': Sweep(
        'How many 1x1 layers per block: 0 is a plain CNN of the same widths '
        '(the paper uses 2 and reports no such ablation).',
        (Point('mlp0', {'model.num_mlp_layers': 0}),
         Point('mlp1', {'model.num_mlp_layers': 1}),
         Point('mlp2', {'model.num_mlp_layers': 2}, 10.41)),
        NO_AUGMENTATION),
    'dropout': Sweep(
        'Dropout between the mlpconv blocks on and off (paper: 10.41% with; '
        'its figure 4 shows the error without dropout, clearly higher).',
        (Point('dropout', {'model.dropout_rate': 0.5}, 10.41),
         Point('no_dropout', {'model.dropout_rate': 0.0})),
        NO_AUGMENTATION),
    'augmentation': Sweep(
        'Translation and horizontal flips (paper section 4.2: 10.41% '
        'without, 8.81% with).',
        (Point('none', NO_AUGMENTATION, 10.41),
         Point('translate_flip', {'augment_pad': 4, 'augment_flip': True},
               8.81))),
    'datasets': Sweep(
        'The four datasets of the paper (test error: CIFAR-10 8.81% with '
        'augmentation, CIFAR-100 35.68%, SVHN 2.35%, MNIST 0.47%).',
        (Point('cifar10', {}, 8.81),
         Point('cifar100', {}, 35.68, f'{CONFIGS}/cifar100.py'),
         Point('svhn', {'train_split': 'train+extra'}, 2.35,
               f'{CONFIGS}/svhn.py'),
         Point('mnist', {}, 0.47, f'{CONFIGS}/mnist.py'))),
    'paper': Sweep(
        'The paper\'s table where its data is at hand: the CIFAR-10 recipe '
        'with translation and flips (8.81%), the head ablation without '
        'augmentation (10.41% / 10.88% / 11.59%) and MNIST (0.47%).',
        (Point('cifar10', {}, 8.81),
         Point('gap', {'model.head': 'gap', **NO_AUGMENTATION}, 10.41),
         Point('fc_dropout', {'model.head': 'fc_dropout', **NO_AUGMENTATION},
               10.88),
         Point('fc', {'model.head': 'fc', **NO_AUGMENTATION}, 11.59),
         Point('mnist', {}, 0.47, f'{CONFIGS}/mnist.py'))),
}

# Overrides that only make sense on the point's own dataset.
_DATASET_SPECIFIC = ('train_split',)


def _flag_value(value: Any) -> str:
  return str(value) if not isinstance(value, str) else value


def dataset_of(config: str) -> str:
  """The dataset a config file trains on (its `dataset` field)."""
  return runpy.run_path(os.path.join(REPO, config))['get_config']().dataset


def command(sweep: Sweep, point: Point, seed: int, workdir: str, budget: str,
            digits_epochs: int, folders: dict[str, str] | None = None,
            common: dict[str, Any] | None = None) -> list[str]:
  """The `python -m nin_jax.main` command line of one run.

  folders maps a dataset name to an image folder that replaces it (full
  budget only); common holds overrides for every point, applied last.
  """
  overrides = {**sweep.common, **point.overrides, 'seed': seed}
  if budget == 'full':
    config = point.config
    folder = (folders or {}).get(dataset_of(config))
    if folder:
      overrides['dataset'] = f'folder:{folder}'
  else:
    config = f'{CONFIGS}/{"digits" if budget == "digits" else "test"}.py'
    overrides = {k: v for k, v in overrides.items()
                 if k not in _DATASET_SPECIFIC}
    if budget == 'digits':
      overrides['num_epochs'] = digits_epochs
  overrides.update(common or {})
  return ([sys.executable, '-m', 'nin_jax.main', f'--workdir={workdir}',
           f'--config={config}'] +
          [f'--config.{k}={_flag_value(v)}' for k, v in overrides.items()])


def workdir_of(root: str, sweep_name: str, point: Point, seed: int) -> str:
  return os.path.join(root, sweep_name, point.name, f'seed{seed}')


def launch(argv: list[str]) -> int:
  """Runs one training command from the repository root; its exit status.

  Ctrl-C reaches the trainer with the rest of the terminal's process group:
  it finishes its step, saves and exits with 75, and the runner waits for
  that instead of dying first. A SIGTERM sent to the runner alone (a
  scheduler's) is passed on to the trainer, which does the same.
  """
  child = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
      argv, cwd=REPO,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  previous = {
      signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
      signal.SIGTERM: signal.signal(
          signal.SIGTERM, lambda signum, frame: child.send_signal(signum))}
  try:
    return child.wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def runs(names: list[str], root: str, budget: str, seeds: list[int],
         digits_epochs: int, folders: dict[str, str] | None = None,
         common: dict[str, Any] | None = None,
         points: list[str] | None = None):
  """(sweep name, point, seed, workdir, argv) of every run asked for."""
  for name in names:
    sweep = SWEEPS[name]
    for point in sweep.points:
      if points and point.name not in points:
        continue
      for seed in seeds:
        workdir = workdir_of(root, name, point, seed)
        yield name, point.name, seed, workdir, command(
            sweep, point, seed, workdir, budget, digits_epochs, folders,
            common)


def is_done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, DONE_FILE))


def run_one(name: str, point: str, seed: int, workdir: str, argv: list[str],
            budget: str) -> int:
  """Runs one point and seed here; its exit status. A run that finished
  gets its DONE_FILE: its command, when its last launch started and whether
  that launch resumed an earlier one (results.py's time to a target
  accuracy counts only runs made in one launch)."""
  resumed = os.path.isdir(os.path.join(workdir, 'checkpoints'))
  started = time.time()
  status = launch(argv)
  if status == 0:
    with open(os.path.join(workdir, DONE_FILE), 'w', encoding='utf-8') as f:
      json.dump({'sweep': name, 'point': point, 'seed': seed,
                 'budget': budget, 'command': argv[1:],
                 'started': started, 'resumed': resumed,
                 'seconds': round(time.time() - started, 1)}, f, indent=2)
  return status


def run_sweeps(names: list[str], root: str, budget: str, seeds: list[int],
               digits_epochs: int, dry_run: bool,
               folders: dict[str, str] | None = None,
               common: dict[str, Any] | None = None,
               points: list[str] | None = None) -> int:
  """Runs (or prints) every unfinished point; returns the number that failed.

  points, if given, keeps only the points of those names.
  """
  failed = 0
  for name, point, seed, workdir, argv in runs(
      names, root, budget, seeds, digits_epochs, folders, common, points):
    if is_done(workdir):
      if not dry_run:
        print(f'done already: {name}/{point}/seed{seed}')
      continue
    if dry_run:  # For a job array: run from the repository root.
      print(' '.join(['python'] + argv[1:]))
      continue
    print(f'running: {name}/{point}/seed{seed}', flush=True)
    status = run_one(name, point, seed, workdir, argv, budget)
    if status == 75:  # Preempted: the run saved; stop here.
      print('interrupted: rerun the same command to continue')
      return failed + 1
    if status != 0:
      print(f'FAILED ({status}): {" ".join(argv)}')
      failed += 1
  return failed


def submit_sweeps(names: list[str], root: str, budget: str, seeds: list[int],
                  digits_epochs: int, resources: 'slurm_array.Resources',
                  dry_run: bool = False, wait: bool = True,
                  poll_seconds: float = 60,
                  folders: dict[str, str] | None = None,
                  common: dict[str, Any] | None = None,
                  points: list[str] | None = None) -> int:
  """Submits the runs that are neither done nor in the queue as one SLURM
  job array; with wait, reports its state until it has left the queue.
  Returns the number of runs of the watched arrays that did not finish.
  """
  busy = {} if dry_run else slurm_array.in_the_queue(root)
  tasks = []
  for name, point, seed, workdir, argv in runs(
      names, root, budget, seeds, digits_epochs, folders, common, points):
    label = f'{name}/{point}/seed{seed}'
    if is_done(workdir):
      print(f'done already: {label}')
    elif workdir in busy:
      print(f'in the queue already: {label} ({busy[workdir]})')
    else:
      tasks.append({'sweep': name, 'point': point, 'seed': seed,
                    'workdir': workdir, 'budget': budget, 'command': argv})
  if not tasks and not busy:
    print('nothing to submit: every run is done')
    return 0
  if dry_run:
    slurm_array.submit(root, tasks, resources, REPO,
                       os.path.abspath(__file__), dry_run=True)
    for i, task in enumerate(tasks):
      print(f'# task {i}: ' + ' '.join(['python'] + task['command'][1:]))
    return 0
  job_ids = sorted({state.split('_')[0] for state in busy.values()})
  if tasks:
    job_ids.append(slurm_array.submit(root, tasks, resources, REPO,
                                      os.path.abspath(__file__)))
  if not wait:
    return 0
  slurm_array.watch(job_ids, poll_seconds,
                    lambda line: print(line, flush=True))
  not_done = 0
  for job_id, directory, job_tasks in slurm_array.submissions(root):
    if job_id not in job_ids:
      continue
    states = slurm_array.final_states(job_id)
    for i, task in enumerate(job_tasks):
      label = f'{task["sweep"]}/{task["point"]}/seed{task["seed"]}'
      state = f' {states[i]}' if i in states else ''
      if is_done(task['workdir']):
        print(f'done: {label}{state}')
      else:
        not_done += 1
        print(f'NOT DONE: {label}{state} (log: '
              f'{os.path.join(directory, f"{job_id}_{i}.out")})')
  return not_done


def run_task(spec: str) -> int:
  """One task of a job array (the batch script's command): runs its point
  and seed; if stopped by a signal (saved, exit 75), requeues the task."""
  noted = []  # A signal before the trainer starts.
  signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
  path, _, index = spec.rpartition(':')
  with open(path, encoding='utf-8') as f:
    task = json.load(f)[int(index)]
  label = f'{task["sweep"]}/{task["point"]}/seed{task["seed"]}'
  if is_done(task['workdir']):
    print(f'done already: {label}')
    return 0
  print(f'running: {label} (task {index} of {path}, '
        f'start {int(os.environ.get("SLURM_RESTART_COUNT", 0)) + 1})',
        flush=True)
  status = 75 if noted else run_one(
      task['sweep'], task['point'], task['seed'], task['workdir'],
      task['command'], task['budget'])
  print(f'{label}: exit status {status}', flush=True)
  if status == 75:
    # Stopped by SLURM's warning signal (or a preemption) and saved.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SLURM's requeue kill.
    slurm_array.requeue()
  return status


def define_flags() -> None:
  """Defined when run as a script, not on import (the tests import this
  module next to others with the same flag names)."""
  flags.DEFINE_list('sweeps', list(SWEEPS), 'Sweeps to run: '
      f'{", ".join(SWEEPS)}.')
  flags.DEFINE_string('root', None, 'Directory for the workdirs (required).')
  flags.DEFINE_enum('budget', 'digits', ['full', 'digits', 'test'],
      'See the module docstring.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per point.')
  flags.DEFINE_integer('digits_epochs', 4,
      'Epochs per run with --budget=digits.')
  flags.DEFINE_bool('dry_run', False,
      'Print the command lines instead of running.')
  flags.DEFINE_list('points', [], 'Run only the points of these names '
      '(default: every point of the sweeps).')
  flags.DEFINE_list('folders', [], 'DATASET=ROOT pairs: read that dataset '
      '(e.g. cifar10, mnist) from the image folder ROOT instead of TFDS '
      '(--budget=full).')
  flags.DEFINE_multi_string('set', [], 'FIELD=VALUE, an override for every '
      'point; repeat the flag for several (--set=num_epochs=80 '
      '--set=model.dtype=bfloat16).')
  flags.DEFINE_bool('slurm', False, 'Submit the unfinished runs as one '
      'SLURM job array (sbatch) instead of running them here, and report '
      'its state until it is done; see docs/slurm.md.')
  flags.DEFINE_string('slurm_time', '08:00:00', 'Time limit of each task '
      '(sbatch --time); a task stopped by it is requeued and resumes.')
  flags.DEFINE_integer('slurm_cpus_per_task', 4, 'sbatch --cpus-per-task.')
  flags.DEFINE_string('slurm_gres', None, 'sbatch --gres of each task; '
      'default gpu:1 with --budget=full, none otherwise; empty: none.')
  flags.DEFINE_string('slurm_partition', '', 'sbatch --partition (default: '
      'the cluster\'s default partition).')
  flags.DEFINE_integer('slurm_signal_seconds', 300, 'SIGTERM this many '
      'seconds before the time limit (sbatch --signal=B:TERM@N): time to '
      'finish a step and save a checkpoint.')
  flags.DEFINE_integer('slurm_max_parallel', 0, 'At most this many tasks '
      'at once (--array=...%N); 0: no limit.')
  flags.DEFINE_multi_string('slurm_sbatch', [], 'Another sbatch option for '
      'every task, e.g. --slurm_sbatch=--account=lab '
      '--slurm_sbatch=--qos=long.')
  flags.DEFINE_bool('slurm_wait', True, 'After submitting, report the '
      'array\'s state until it is done (--noslurm_wait: submit and return).')
  flags.DEFINE_float('slurm_poll_seconds', 60, 'How often to ask squeue.')
  flags.DEFINE_string('slurm_task', None, 'TASKS_FILE:INDEX: run one task of '
      'a submitted array (what its batch script runs).')


def _pairs(values: list[str], flag: str) -> dict[str, str]:
  """['a=1', 'b=2'] as {'a': '1', 'b': '2'}; a UsageError names the flag."""
  pairs = {}
  for value in values:
    key, equals, rest = value.partition('=')
    if not (key and equals and rest):
      raise app.UsageError(f'--{flag} takes KEY=VALUE pairs, not {value!r}.')
    pairs[key] = rest
  return pairs


def main(argv):
  del argv
  if FLAGS.slurm_task:
    sys.exit(run_task(FLAGS.slurm_task))
  if not FLAGS.root:
    raise app.UsageError('--root is required.')
  unknown = [name for name in FLAGS.sweeps if name not in SWEEPS]
  if unknown:
    raise app.UsageError(f'Unknown sweeps {unknown}; choose from '
                         f'{list(SWEEPS)}.')
  known = {p.name for name in FLAGS.sweeps for p in SWEEPS[name].points}
  unknown = sorted(set(FLAGS.points) - known)
  if unknown:
    raise app.UsageError(f'Unknown points {unknown}; these sweeps have '
                         f'{sorted(known)}.')
  folders = {name: os.path.abspath(root) for name, root in
             _pairs(FLAGS.folders, 'folders').items()}
  root, seeds = os.path.abspath(FLAGS.root), [int(s) for s in FLAGS.seeds]
  if FLAGS.slurm:
    gres = FLAGS.slurm_gres
    if gres is None:
      gres = 'gpu:1' if FLAGS.budget == 'full' else ''
    resources = slurm_array.Resources(
        time=FLAGS.slurm_time, cpus_per_task=FLAGS.slurm_cpus_per_task,
        gres=gres, partition=FLAGS.slurm_partition,
        signal_seconds=FLAGS.slurm_signal_seconds,
        max_parallel=FLAGS.slurm_max_parallel,
        sbatch_args=tuple(FLAGS.slurm_sbatch))
    try:
      failed = submit_sweeps(
          FLAGS.sweeps, root, FLAGS.budget, seeds, FLAGS.digits_epochs,
          resources, FLAGS.dry_run, FLAGS.slurm_wait,
          FLAGS.slurm_poll_seconds, folders, _pairs(FLAGS.set, 'set'),
          FLAGS.points)
    except (RuntimeError, OSError) as e:
      sys.exit(f'error: {e}')
    except KeyboardInterrupt:
      sys.exit('stopped watching; the array keeps running. Run the same '
               'command again to watch it (nothing is submitted twice).')
  else:
    failed = run_sweeps(FLAGS.sweeps, root, FLAGS.budget, seeds,
                        FLAGS.digits_epochs, FLAGS.dry_run, folders,
                        _pairs(FLAGS.set, 'set'), FLAGS.points)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  define_flags()
  app.run(main)
