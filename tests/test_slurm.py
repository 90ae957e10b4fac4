"""Sweeps as SLURM job arrays, requeue after SIGTERM, and `srun -n 2`, on a
real one-node SLURM cluster (tests/slurm_cluster.py).

Skipped, with the reason, where no cluster can start (not root, slurm-wlm or
munge not installed); .ci/run installs them and sets NIN_JAX_REQUIRE_SLURM=1,
which turns the skip into a failure.

One array runs two tasks that are the same run under two names (the test
config's defaults are the `gap` head and dropout 0.5, so gap_vs_fc/gap and
dropout/dropout train alike): one is left alone, the other is sent SIGTERM
through SLURM mid-run, requeued, and must end with the same metrics. The
uninterrupted one is also the reference for `srun -n 2`, which runs beside
the array (the cluster's node declares 4 CPUs, more than it needs).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import main_runner
from tests import slurm_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments', 'paper'))
import results  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position

SWEEP = ['--sweeps=gap_vs_fc,dropout', '--points=gap,dropout', '--seeds=0',
         '--budget=test']
# One task at a time: the second finds the first's compiled programs in the
# persistent compilation cache (conftest.py), half the cost of compiling.
RESOURCES = ['--slurm', '--slurm_cpus_per_task=1', '--slurm_time=10',
             '--slurm_signal_seconds=60', '--slurm_poll_seconds=0.5',
             '--slurm_max_parallel=1']
TIMEOUT = 300


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
  try:
    started = slurm_cluster.SlurmCluster.start(
        str(tmp_path_factory.mktemp('slurm')))
  except slurm_cluster.SlurmUnavailable as e:
    if os.environ.get('NIN_JAX_REQUIRE_SLURM'):
      pytest.fail(f'no SLURM cluster, and NIN_JAX_REQUIRE_SLURM is set: {e}')
    pytest.skip(f'no SLURM cluster here: {e}')
  yield started
  started.stop()


def _sweeps(cluster, root, *args, **kwargs):
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'experiments', 'paper', 'sweeps.py'),
       f'--root={root}', *SWEEP, *RESOURCES, *args],
      cwd=REPO, env=dict(cluster.env, TF_CPP_MIN_LOG_LEVEL='2'),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _until(condition, what, cluster, timeout=TIMEOUT, every=0.02):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(every)
  pytest.fail(f'timed out waiting for {what}\n{cluster.logs()}')


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _trainer_pid(workdir):
  """The pid of the `python -m nin_jax.main` training in `workdir`, if any."""
  for pid in os.listdir('/proc'):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        args = f.read().decode(errors='replace').split('\0')
    except OSError:
      continue
    if 'nin_jax.main' in args and f'--workdir={workdir}' in args:
      return int(pid)
  return None


def _term_pending(pid):
  with open(f'/proc/{pid}/status', encoding='utf-8') as f:
    fields = dict(line.split(':', 1) for line in f if ':' in line)
  pending = int(fields['ShdPnd'], 16) | int(fields['SigPnd'], 16)
  return pending & (1 << (signal.SIGTERM - 1))


def _log(root, job_id, index):
  (directory,) = [d for j, d, _ in sweeps.slurm_array.submissions(root)
                  if j == job_id]
  with open(os.path.join(directory, f'{job_id}_{index}.out'),
            encoding='utf-8') as f:
    return f.read()


@pytest.fixture(scope='module')
def srun_run(cluster, tmp_path_factory):
  """`srun --ntasks=2` of the array's reference run (gap_vs_fc/gap/seed0,
  the same command line), started with the array so that they share the
  cores: the popen and its workdir."""
  directory = tmp_path_factory.mktemp('srun')
  workdir, log = str(directory / 'workdir'), directory / 'srun.log'
  name, point, seed, _, argv = next(sweeps.runs(
      ['gap_vs_fc'], '/unused', 'test', [0], 1, points=['gap']))
  assert (name, point, seed) == ('gap_vs_fc', 'gap', 0)
  argv = [a if not a.startswith('--workdir=') else f'--workdir={workdir}'
          for a in argv]
  with open(log, 'w') as out:  # Not a pipe, which nobody reads meanwhile.
    process = subprocess.Popen(
        ['srun', '--ntasks=2', '--cpus-per-task=1', '--time=10',
         '--kill-on-bad-exit=1', *argv],
        cwd=REPO, env=dict(cluster.env, TF_CPP_MIN_LOG_LEVEL='2'),
        stdout=out, stderr=subprocess.STDOUT)
  yield process, workdir, log
  if process.poll() is None:
    process.kill()
    process.wait()


@pytest.fixture(scope='module')
def array(cluster, srun_run, tmp_path_factory):
  """The sweep submitted as an array; its task 1 (dropout/dropout) stopped
  by `scancel --signal=TERM --batch`, as a time limit's warning signal
  (`--signal=B:TERM@N`) would, once it has trained two steps."""
  root = str(tmp_path_factory.mktemp('sweeps'))
  runner = _sweeps(cluster, root)
  job_id = _until(lambda: [j for j, _, _ in
                           sweeps.slurm_array.submissions(root)],
                  'the submission', cluster)[0]
  points = sweeps.SWEEPS['dropout'].points
  stopped = sweeps.workdir_of(root, 'dropout', points[0], 0)
  # Held (SIGSTOP) as soon as its first training row is written, so that
  # the signal comes mid-run however fast the machine is.
  metrics = os.path.join(stopped, 'metrics.jsonl')
  _until(lambda: os.path.exists(metrics) and '"train"' in open(metrics).read(),
         'the first training row', cluster)
  pid = _trainer_pid(stopped)
  assert pid, 'the trainer of dropout/dropout/seed0 is not running'
  os.kill(pid, signal.SIGSTOP)
  with open(metrics, encoding='utf-8') as f:  # A last line may be partial.
    assert '"step": 4, "split": "test"' not in f.read(), (
        'the run ended before it could be stopped')
  cluster.run('scancel', '--signal=TERM', '--batch', f'{job_id}_1')
  # The runner (the batch shell) passes it on to the held trainer.
  _until(lambda: _term_pending(pid), 'SIGTERM to reach the trainer', cluster)
  os.kill(pid, signal.SIGCONT)
  # Requeued, the task may start again cred_expire (5 s here, 120 s by
  # default) after the requeue (squeue's reason: BeginTime).
  out, _ = runner.communicate(timeout=TIMEOUT)
  assert runner.returncode == 0, out + cluster.logs()
  return {'root': root, 'job_id': job_id, 'out': out, 'stopped': stopped,
          'reference': sweeps.workdir_of(
              root, 'gap_vs_fc', sweeps.SWEEPS['gap_vs_fc'].points[0], 0)}


def test_the_sweep_runs_as_one_array_and_makes_its_table(array, cluster):
  out = array['out']
  assert f'submitted array {array["job_id"]}: 2 tasks' in out
  assert 'RUNNING' in out  # The array's state, reported while it ran.
  assert 'done: gap_vs_fc/gap/seed0' in out
  assert 'done: dropout/dropout/seed0' in out
  rows = results.collect(array['root'], ['gap_vs_fc', 'dropout'])
  ran = {r['point']: r for r in rows if r['errors']}
  assert sorted(ran) == ['dropout', 'gap']
  assert ran['gap']['errors'] == ran['dropout']['errors']  # The same run.
  assert ran['gap']['budget'] == 'test'
  assert '| gap_vs_fc | fc | ' in results.table(rows)
  # Submitted again: everything is done, nothing is submitted.
  again = _sweeps(cluster, array['root'])
  out, _ = again.communicate(timeout=TIMEOUT)
  assert again.returncode == 0, out
  assert out.count('done already:') == 2
  assert 'nothing to submit' in out and 'submitted' not in out
  # A run that is not done is the only task of the next array.
  done_file = os.path.join(array['reference'], sweeps.DONE_FILE)
  os.rename(done_file, done_file + '.aside')
  try:
    dry = _sweeps(cluster, array['root'], '--dry_run')
    out, _ = dry.communicate(timeout=TIMEOUT)
  finally:
    os.rename(done_file + '.aside', done_file)
  assert dry.returncode == 0, out
  assert '#SBATCH --array=0-0%1\n' in out
  assert '#SBATCH --signal=B:TERM@60\n' in out and '--requeue' in out
  assert out.count('# task ') == 1
  assert f'--workdir={array["reference"]} ' in out


def test_a_task_sent_sigterm_is_requeued_and_ends_as_if_uninterrupted(
    array):
  log = _log(array['root'], array['job_id'], 1)
  assert 'SIGTERM received' in log
  assert 'exit status 75' in log
  assert f'requeued {array["job_id"]}_1' in log
  assert '(task 1 of ' in log and ', start 2)' in log  # Started again.
  assert 'done: dropout/dropout/seed0' in array['out']
  assert 'PENDING (BeginTime)' in array['out']  # Requeued, as reported.
  assert 'requeued 1 times' in array['out']  # scontrol's Restarts=1.
  with open(os.path.join(array['stopped'], sweeps.DONE_FILE)) as f:
    assert json.load(f)['resumed']
  assert 'SIGTERM' not in _log(array['root'], array['job_id'], 0)

  def metrics(workdir):  # Every row, wall-clock fields aside.
    return [{k: v for k, v in row.items()
             if k not in ('time', 'images_per_sec')}
            for row in _rows(workdir)]
  assert metrics(array['stopped']) == metrics(array['reference'])


def test_srun_with_two_processes_trains_as_one_process(array, srun_run):
  """`srun -n 2`: JAX finds its peer from SLURM's variables, and the two
  processes train as the one process of the reference task (within float
  tolerance, as tests/training/test_parallel.py compares two processes
  started by hand with one)."""
  process, workdir, log = srun_run
  process.wait(timeout=TIMEOUT)
  out = log.read_text()
  assert process.returncode == 0, main_runner.failure_tail(out)
  assert 'process 0 of 2, 1 local / 2 global devices' in out, out[-3000:]
  two, one = _rows(workdir), _rows(array['reference'])
  assert [(r['step'], r['split']) for r in two] == [
      (r['step'], r['split']) for r in one]
  np.testing.assert_allclose([r['loss'] for r in two],
                             [r['loss'] for r in one], rtol=2e-5)
  test_two, test_one = two[-1], one[-1]
  assert test_two['accuracy'] == test_one['accuracy']
  assert test_two['num_examples'] == test_one['num_examples'] == 360
