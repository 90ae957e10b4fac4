"""Same numbers on 1 device, 8 devices (jit and pmap) and 2 processes.

Moving a run from 1 device to 8 mid-way shows both that checkpoints
reshard and that 8 devices compute what 1 does; 8 simulated devices are the
slowest runs here, so there are two: the streaming input under jit, and the
device-resident input under pmap with BatchNorm (whose statistics must be
those of the global batch, and whose batches must not depend on the
topology). Both inputs are also run over two processes of one device each.

The runs on more than one device are `python -m nin_jax.main` in processes
of their own, since the number of (simulated CPU) devices is fixed when JAX
starts; the one-device runs are the same command in this process, while
the two-process streaming run goes on beside them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Constant learning rate, so that a run cut short at step 4 and resumed to 6
# follows the same schedule as a run of 6; eval only at the end.
COMMON = ['--config=nin_jax/configs/test.py', '--config.num_train_steps=6',
          '--config.lr_schedule=step', '--config.warmup_epochs=0',
          '--config.log_every_steps=1', '--config.eval_every_steps=6',
          '--config.checkpoint_every_steps=2', '--config.data_shards=2']
# The device-resident input, with BatchNorm on (its statistics must be
# those of the global batch under pmap too, or the runs would differ) and
# dropout off, since pmap draws each device's masks from its own key.
DEVICE_INPUT = ['--config.input_pipeline=device',
                '--config.model.dropout_rate=0',
                '--config.model.use_batchnorm=True']


def _with_input(extra):
  """Streaming input unless `extra` picks another."""
  if not any(a.startswith('--config.input_pipeline=') for a in extra):
    return [*extra, '--config.input_pipeline=streaming']
  return list(extra)


def _start(workdir, devices=1, extra=(), distributed=None):
  """Starts one process."""
  env = main_runner.environment(devices, TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, '-m', 'nin_jax.main', f'--workdir={workdir}',
             *COMMON, *_with_input(extra), *(distributed or ())]
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_here(workdir, extra=()):
  """A run on this process's one device: no interpreter to start."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    code = main_runner.run_main(monkeypatch, workdir, *COMMON[1:],
                                *_with_input(extra))
  assert code == 0, f'{workdir}: exit {code}'


def _finish(*processes):
  for process in processes:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, main_runner.failure_tail(out)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  train = {r['step']: r['loss'] for r in rows if r['split'] == 'train'}
  test = [r for r in rows if r['split'] == 'test'][-1]
  return train, test


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('parallel')
  d = {name: str(root / name) for name in (
      'one', 'one_then_eight', 'two',
      'device_one', 'device_one_then_eight', 'device_two_processes')}
  address = f'localhost:{_free_port()}'
  two = [_start(d['two'], distributed=[
      f'--coordinator_address={address}', '--num_processes=2',
      f'--process_id={i}']) for i in range(2)]
  _run_here(d['one'])
  _run_here(d['device_one'], extra=DEVICE_INPUT)
  _finish(*two)
  # Both at step 4, to be resumed on 8 devices: steps 5-6 and the
  # evaluation run there (their later rows are moved aside on resume).
  for name in ('one', 'device_one'):
    copy = d[f'{name}_then_eight']
    shutil.copytree(d[name], copy)
    shutil.rmtree(os.path.join(copy, 'checkpoints', '6'))
  _finish(_start(d['one_then_eight'], devices=8),
          _start(d['device_one_then_eight'], devices=8,
                 extra=DEVICE_INPUT + ['--config.parallelism=pmap']))
  address = f'localhost:{_free_port()}'
  _finish(*[_start(d['device_two_processes'], extra=DEVICE_INPUT, distributed=[
      f'--coordinator_address={address}', '--num_processes=2',
      f'--process_id={i}']) for i in range(2)])
  return {name: _metrics(workdir) for name, workdir in d.items()}


def _assert_same(a, b):
  (train_a, test_a), (train_b, test_b) = a, b
  assert sorted(train_a) == sorted(train_b) == list(range(1, 7))
  np.testing.assert_allclose([train_a[s] for s in range(1, 7)],
                             [train_b[s] for s in range(1, 7)], rtol=2e-5)
  np.testing.assert_allclose(test_a['loss'], test_b['loss'], rtol=2e-5)
  assert test_a['accuracy'] == test_b['accuracy']
  assert test_a['num_examples'] == test_b['num_examples'] == 360


def test_checkpoint_from_one_device_resumes_on_eight_with_equal_results(runs):
  # Steps 5-6 and the (padded, masked) evaluation ran on 8 devices.
  _assert_same(runs['one_then_eight'], runs['one'])


def test_two_processes_equal_one_process(runs):
  _assert_same(runs['two'], runs['one'])


def test_device_input_on_one_device_equals_two_processes(runs):
  # Each process draws its device's half of the same global batches.
  _assert_same(runs['device_two_processes'], runs['device_one'])


def test_device_input_resumed_on_eight_devices_under_pmap_with_batchnorm(
    runs):
  # Steps 5-6 drawn by 8 devices (pmap), an eighth of each batch each, in
  # the data order whose first 4 batches 1 device drew; BatchNorm's batch
  # statistics are the global batch's (an eighth's would change the loss).
  _assert_same(runs['device_one_then_eight'], runs['device_one'])


def test_processes_with_different_configs_stop_before_compiling(tmp_path):
  address = f'localhost:{_free_port()}'
  processes = [_start(str(tmp_path), extra=[f'--config.seed={i}'], distributed=[
      f'--coordinator_address={address}', '--num_processes=2',
      f'--process_id={i}']) for i in range(2)]
  for process in processes:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 2, main_runner.failure_tail(out)
    assert 'differs from process 0' in out
  assert not os.path.exists(tmp_path / 'checkpoints')
