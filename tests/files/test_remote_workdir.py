"""A run on gs://, against a local GCS emulator (tests/gcs_emulator.py).

Train, resume past a damaged checkpoint, evaluate, visualize and export,
all with --workdir=gs://...: every file lands in the bucket, nothing in a
local folder. Skipped where gcp-storage-emulator or gcsfs is missing.
"""

import json
import logging as std_logging
import os
import signal
import socket
import subprocess
import sys
import time

from etils import epath
import pytest

from gcs_emulator import emulated_gcs  # pylint: disable=unused-import
import main_runner
from nin_jax.data import image_folder
from nin_jax import errors
from nin_jax import evaluate
from nin_jax import export
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax import publish
from nin_jax.training import checkpointing
from nin_jax.training import trained_run
from nin_jax import visualize


@pytest.fixture(autouse=True)
def _quick_lease(monkeypatch):
  # Two trainers started together are told apart after this pause; 2 s on
  # a real bucket, a fraction here where requests take milliseconds.
  monkeypatch.setattr(workdir_files.LeaseLock, 'SETTLE_SECONDS', 0.1)


def _damage(emulator, prefix: str) -> None:
  """Every file of a checkpoint emptied, its commit mark left: a finished
  save whose files were damaged afterwards."""
  for name in emulator.objects(prefix):
    if not name.endswith(workdir_files.COMMIT_SUCCESS):
      epath.Path(f'{emulator.url}/{name}').write_bytes(b'')


def test_train_resume_evaluate_visualize_export_on_gs(
    emulated_gcs, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # Where a URL made a local path would land.
  run = f'{emulated_gcs.url}/run'
  assert main_runner.run_main(monkeypatch, run,
                              '--config.profile_steps=2') == 0
  objects = emulated_gcs.objects('run/')
  assert any(name.startswith('run/tensorboard/plugins/profile/')
             for name in objects), objects
  for name in ('config.json', 'dataset.json', 'preprocessing.npz',
               'metrics.jsonl', 'checkpoints/2/commit_success.txt',
               'checkpoints/4/commit_success.txt'):
    assert f'run/{name}' in objects, objects
  assert any(name.startswith('run/tensorboard/train/events.out')
             for name in objects)
  assert 'run/.lock' not in objects  # Released.
  assert not any('.write_test' in name or name.endswith('.tmp')
                 for name in objects)

  # The newest checkpoint damaged: set aside (copied, then deleted), the
  # run resumes from step 2 and relogs steps 3-4 as if it never stopped.
  _damage(emulated_gcs, 'run/checkpoints/4/')
  # And a save cut short: on gs:// a step without commit_success.txt.
  storage.write_atomically(f'{run}/checkpoints/8/state/_METADATA', '{')
  damaged = [name[len('run/checkpoints/4/'):]
             for name in emulated_gcs.objects('run/checkpoints/4/')]
  assert main_runner.run_main(monkeypatch, run,
                              '--config.num_train_steps=6') == 0
  objects = emulated_gcs.objects('run/')
  (aside,) = {name.split('/')[2] for name in objects
              if name.startswith('run/checkpoints_unreadable/')}
  assert aside.startswith('4-')
  assert emulated_gcs.objects(f'run/checkpoints_unreadable/{aside}/') == [
      f'run/checkpoints_unreadable/{aside}/{name}' for name in damaged]
  assert 'run/checkpoints/6/commit_success.txt' in objects
  assert not any(name.startswith('run/checkpoints/8/') for name in objects)
  rows = workdir_files.read_metrics(run)
  keys = [(row['step'], row['split']) for row in rows]
  assert len(keys) == len(set(keys))
  assert max(step for step, _ in keys) == 6
  superseded = storage.read_bytes(
      f'{run}/{workdir_files.SUPERSEDED_METRICS}').decode().splitlines()
  assert {json.loads(line)['step'] for line in superseded} == {4}

  assert main_runner.run_command(evaluate, f'--workdir={run}') == 0
  report = json.loads(storage.read_bytes(
      f'{run}/evaluation/test_step6/report.json'))
  assert report['step'] == 6 and report['workdir'] == run
  assert main_runner.run_command(
      visualize, f'--workdir={run}', f'--out={run}/figures') == 0
  assert main_runner.run_command(
      export, f'--workdir={run}', f'--out={emulated_gcs.url}/models/nin.export'
  ) == 0
  objects = emulated_gcs.objects()
  for name in ('run/evaluation/test_step6/confusion.png',
               'run/figures/class_maps.png', 'run/figures/training_curves.png',
               'models/nin.export', 'models/nin.export.json'):
    assert name in objects, objects
  assert os.listdir(tmp_path) == []

  # Published from the bucket into a local directory of models.
  published, _ = publish.publish(run, 'from_gs', root=str(tmp_path / 'models'))
  assert trained_run.load(published).step == 6


def test_two_processes_stopped_while_connecting_resume_in_a_gs_workdir(
    emulated_gcs):
  """What a pod slice meets: host 1 is preempted (SIGTERM) while it waits
  for host 0 in jax.distributed.initialize. Before, it died of it (-15) and
  host 0 then waited minutes for it. Noted, the signal goes to JAX's
  preemption service once they are connected: both stop after their
  first dispatch (step 2), every host having written its shards of the
  checkpoint into the same bucket (process 0 the rest). Then both resume
  it to the end."""
  run = f'{emulated_gcs.url}/run'
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]

  def start(process_id, *overrides):
    return subprocess.Popen(
        [sys.executable, '-m', 'nin_jax.main', f'--workdir={run}',
         f'--config={main_runner.TEST_CONFIG}', *overrides,
         f'--coordinator_address=localhost:{port}', '--num_processes=2',
         f'--process_id={process_id}'],
        env={**os.environ, **emulated_gcs.env, 'TF_CPP_MIN_LOG_LEVEL': '2'},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def finish(processes, code, expected=None):
    try:
      for process in processes:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == code, main_runner.failure_tail(out)
        assert expected is None or expected in out, main_runner.failure_tail(
            out)
    finally:  # One failed: the other would wait for it.
      for process in processes:
        if process.poll() is None:
          process.kill()
          process.communicate()

  late = start(1)
  time.sleep(1)  # Importing, or connecting to the absent process 0.
  late.send_signal(signal.SIGTERM)
  time.sleep(0.5)
  if late.poll() is not None:
    pytest.fail(f'process 1 ended with {late.returncode} on SIGTERM:\n'
                + main_runner.failure_tail(late.communicate()[0]))
  finish([start(0), late], errors.EXIT_PREEMPTED,
         'saved a checkpoint at step 2')
  objects = emulated_gcs.objects('run/')
  assert {name.split('/')[2] for name in objects
          if name.startswith('run/checkpoints/')} == {'2'}, objects
  assert 'run/checkpoints/2/commit_success.txt' in objects

  finish([start(i, '--config.num_train_steps=6') for i in range(2)], 0)
  objects = emulated_gcs.objects('run/')
  assert 'run/checkpoints/6/commit_success.txt' in objects
  assert 'run/.lock' not in objects
  rows = workdir_files.read_metrics(run)
  assert sorted({row['step'] for row in rows if row['split'] == 'train'}) == [
      2, 4, 6]


def test_one_trainer_per_gs_workdir(emulated_gcs, monkeypatch, capsys):
  run = f'{emulated_gcs.url}/run'
  lock = f'{run}/{workdir_files.LOCK}'
  with workdir_files.Workdir(run).lock():
    with pytest.raises(errors.WorkdirError,
                       match=f'Another trainer is running in {run} \\(pid '):
      with workdir_files.Workdir(run).lock():
        pass
    # The trainer meets the same: one error line, exit 2, nothing written.
    assert main_runner.run_main(monkeypatch, run) == 2
    assert 'Another trainer is running' in capsys.readouterr().err
    assert emulated_gcs.objects('run/') == ['run/.lock']
  assert not storage.exists(lock)  # Released on exit.

  # A lease its holder stopped renewing (killed) is taken over.
  storage.write_atomically(lock, json.dumps(
      {'holder': 'pid 1 on gone', 'token': 'x',
       'renewed': time.time() - 2 * workdir_files.LeaseLock.EXPIRES_SECONDS}))
  with workdir_files.Workdir(run).lock():
    holder = json.loads(storage.read_bytes(lock))['holder']
    assert holder.startswith(f'pid {os.getpid()} ')

  # So is a fresh one of a process of this host that has ended (a killed
  # run, restarted at once).
  dead_pid = subprocess.Popen(['true'])
  dead_pid.wait()
  storage.write_atomically(lock, json.dumps(
      {'holder': f'pid {dead_pid.pid}', 'token': 'y', 'renewed': time.time(),
       'host': socket.gethostname(), 'pid': dead_pid.pid,
       'pid_space': workdir_files._pid_space()}))  # pylint: disable=protected-access
  with workdir_files.Workdir(run).lock():
    assert json.loads(storage.read_bytes(lock))['pid'] == os.getpid()

  # Not when the pid is another pid namespace's (a container sharing the
  # host name): the lease stands.
  storage.write_atomically(lock, json.dumps(
      {'holder': 'pid 1 in a container', 'token': 'z', 'renewed': time.time(),
       'host': socket.gethostname(), 'pid': dead_pid.pid,
       'pid_space': 'another-boot/4026531836'}))
  with pytest.raises(errors.WorkdirError, match='Another trainer'):
    with workdir_files.Workdir(run).lock():
      pass


def test_urls_nin_jax_cannot_write_are_refused():
  assert storage.location('gs://b/run/') == 'gs://b/run'
  for url in ('hdfs://nn/run', 'gs://', 'http://host/run'):
    with pytest.raises(errors.WorkdirError, match='mount'):
      storage.location(url)


def test_what_must_stay_local_refuses_a_url(tmp_path):
  with pytest.raises(errors.WorkdirError, match='rsync'):
    image_folder.root_of('folder:gs://b/images')
  with pytest.raises(errors.WorkdirError, match='--root=gs://b/models'):
    publish.publish(str(tmp_path), 'x', root='gs://b/models')


def test_gs_without_google_cloud_storage_names_the_extra(monkeypatch):
  monkeypatch.setattr(storage, '_importable', lambda module: False)
  with pytest.raises(errors.WorkdirError, match=r'pip install "nin_jax\[gcs\]"'):
    storage.check_reachable('gs://b/run')


def test_listings_see_what_another_process_wrote(emulated_gcs):
  # gcsfs would otherwise keep this process's first listing: a reader
  # beside a trainer would miss its newer checkpoints.
  directory = f'{emulated_gcs.url}/run/checkpoints'

  def save_elsewhere(step):
    subprocess.run([sys.executable, '-c', 'from etils import epath; epath.Path('
                    f'"{directory}/{step}/x").write_text("1")'],
                   env={**os.environ, **emulated_gcs.env}, check=True)

  save_elsewhere(2)
  assert storage.list_dir(directory) == ['2']
  save_elsewhere(4)
  assert storage.list_dir(directory) == ['2', '4']


def test_a_trainer_whose_lease_was_taken_over_stops_before_saving(
    emulated_gcs, monkeypatch):
  # It could not renew for EXPIRES_SECONDS (suspended, cut off), so a
  # second trainer took the workdir over: its next renewal must not write
  # the lease back, its save must not happen, its exit must not delete the
  # other trainer's lock.
  monkeypatch.setattr(workdir_files.LeaseLock, 'RENEW_SECONDS', 0.05)
  run = f'{emulated_gcs.url}/run'
  lock = f'{run}/{workdir_files.LOCK}'
  other = {'holder': 'pid 7 on elsewhere', 'token': 'theirs',
           'renewed': time.time(), 'host': 'elsewhere', 'pid': 7}
  with workdir_files.Workdir(run).lock() as held:
    held.check()
    storage.write_atomically(lock, json.dumps(other))
    deadline = time.monotonic() + 30
    while not held.lost_to and time.monotonic() < deadline:
      time.sleep(0.05)
    with pytest.raises(errors.WorkdirError, match='lost the lock .* to pid 7'):
      held.check()
  assert json.loads(storage.read_bytes(lock))['token'] == 'theirs'


def test_a_checkpoint_that_cannot_be_reached_is_not_set_aside(tmp_path):
  class HttpError(Exception):
    """gcsfs's error for a 503 or 401."""
  checkpointer = checkpointing.Checkpointer(workdir_files.Workdir(str(tmp_path)),
                                          keep=2)
  (tmp_path / 'checkpoints' / '4').mkdir()
  for error in (HttpError('503 Service Unavailable'),
                ValueError('UNAVAILABLE: connection reset')):
    with pytest.raises(errors.WorkdirError, match='nothing was moved'):
      checkpointer._set_aside(4, error)  # pylint: disable=protected-access
  assert os.listdir(tmp_path / 'checkpoints') == ['4']
  checkpointer.close()


def test_an_export_to_a_bare_bucket_is_refused():
  with pytest.raises(errors.WorkdirError, match='is a bucket'):
    export.write(None, 'gs://bucket')


def test_an_unreachable_bucket_is_one_line_not_the_clients_retries(
    monkeypatch, caplog):
  class Offline:
    """A gs:// path without a network, as gcsfs fails: each retry logged
    (with its traceback), then an OSError."""

    def __init__(self, name):
      del name

    def exists(self):
      std_logging.getLogger('gcsfs.retry').error(
          '_request out of retries on exception: Cannot connect to host')
      std_logging.getLogger('gcsfs').warning('Could not determine bucket type')
      raise OSError('Cannot connect to host storage.googleapis.com:443')

  monkeypatch.setattr(storage, '_path', Offline)
  with pytest.raises(errors.WorkdirError, match='Cannot reach --workdir='):
    storage.check_reachable('gs://bucket/run')
  assert 'out of retries' not in caplog.text
  assert 'bucket type' not in caplog.text
  assert std_logging.getLogger('gcsfs').level == std_logging.NOTSET
