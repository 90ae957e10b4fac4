"""The sweep runner and the results table, on the tiny test budget."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

from tests import main_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments', 'paper'))
import results  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'paper', 'sweeps.py'), *args],
      cwd=REPO, capture_output=True, text=True, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')).stdout


def test_every_sweep_expands_to_valid_commands(tmp_path):
  printed = _run('--root', str(tmp_path), '--budget=full', '--seeds=0,1',
                 '--dry_run').splitlines()
  expected = sum(len(s.points) for s in sweeps.SWEEPS.values()) * 2
  assert len(printed) == expected
  assert all(' -m nin_jax.main --workdir=' in line for line in printed)
  assert any('--config.model.head=fc_dropout' in line for line in printed)
  assert any('nin_jax/configs/svhn.py' in line and 'train+extra' in line
             for line in printed)
  assert not os.listdir(tmp_path)  # A dry run creates nothing.


def test_the_paper_sweep_reads_folders_and_takes_overrides(tmp_path):
  printed = _run('--root', str(tmp_path), '--budget=full', '--seeds=0',
                 '--sweeps=paper', '--points=gap,mnist', '--dry_run',
                 '--folders=cifar10=/data/c10,mnist=/data/mnist',
                 '--set=num_epochs=80').splitlines()
  assert len(printed) == 2
  gap, mnist = printed
  assert '--config=nin_jax/configs/default.py' in gap
  assert '--config.dataset=folder:/data/c10' in gap
  assert '--config.augment_pad=0' in gap and '--config.model.head=gap' in gap
  assert '--config=nin_jax/configs/mnist.py' in mnist
  assert '--config.dataset=folder:/data/mnist' in mnist
  assert all(line.endswith('--config.num_epochs=80') for line in printed)


def _run_in_process(monkeypatch, capsys, *args):
  """sweeps.run_sweeps with each `python -m nin_jax.main` run in this
  process (no new JAX process per point: seconds instead of tens)."""

  def launch_here(argv):
    assert argv[1:3] == ['-m', 'nin_jax.main']
    workdir = argv[3].split('=', 1)[1]
    config = os.path.join(REPO, argv[4].split('=', 1)[1])
    return main_runner.run_main(monkeypatch, workdir, *argv[5:], config=config)

  monkeypatch.setattr(sweeps, 'launch', launch_here)
  failed = sweeps.run_sweeps(*args)
  assert failed == 0
  return capsys.readouterr().out


def test_sweep_runs_skips_finished_points_resumes_and_tabulates(
    tmp_path, monkeypatch, capsys):
  root = str(tmp_path)
  out = _run_in_process(monkeypatch, capsys, ['dropout'], root, 'test', [0],
                        1, False)
  assert out.count('running:') == 2
  # "Interrupt" one point: its done marker and last checkpoint are gone, as
  # if it had been killed after its first checkpoint.
  stopped = sweeps.workdir_of(root, 'dropout', sweeps.SWEEPS['dropout'].points[1],
                         0)
  os.remove(os.path.join(stopped, sweeps.DONE_FILE))
  shutil.rmtree(os.path.join(stopped, 'checkpoints', '4'))
  out = _run_in_process(monkeypatch, capsys, ['dropout'], root, 'test', [0],
                        1, False)
  assert out.count('done already:') == 1 and out.count('running:') == 1
  assert os.path.exists(os.path.join(stopped, sweeps.DONE_FILE))

  rows = results.collect(root, ['dropout', 'gap_vs_fc'])
  assert [r['point'] for r in rows] == ['dropout', 'no_dropout', 'gap',
                                        'fc_dropout', 'fc']
  for row, point in zip(rows, sweeps.SWEEPS['dropout'].points):
    with open(os.path.join(sweeps.workdir_of(root, 'dropout', point, 0),
                           'metrics.jsonl')) as f:
      last_test = [json.loads(l) for l in f if '"test"' in l][-1]
    np.testing.assert_allclose(row['errors'],
                               [100 * (1 - last_test['accuracy'])])
    assert row['budget'] == 'test'
  text = results.table(rows)
  assert ('| dropout | no_dropout | `augment_pad=0 augment_flip=False '
          'model.dropout_rate=0.0` | 1 | test |') in text
  assert text.splitlines()[2].endswith('| 10.41 |')
  assert '| gap_vs_fc | fc | `augment_pad=0 augment_flip=False model.head=fc` ' \
      '| 0 | - | not run | 11.59 |' in text
  # Time to an accuracy: the run made in one launch has one; the resumed
  # one does not (its launch did not start the run).
  timed = results.collect(root, ['dropout'], target=0.0)
  assert len(timed[0]['seconds_to_target']) == 1
  assert 0 < timed[0]['seconds_to_target'][0] < 600
  assert timed[1]['seconds_to_target'] == []
  lines = results.table(timed, target=0.0).splitlines()
  assert lines[0].endswith('| s to 0% (median, runs) |')
  assert lines[2].endswith(' (1) |') and lines[3].endswith('| - |')
  results.plot(rows, str(tmp_path / 'results.png'))
  assert (tmp_path / 'results.png').stat().st_size > 10_000
