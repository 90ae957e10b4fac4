"""Sweep workdirs -> a Markdown results table and a plot.

  python experiments/paper/results.py --root=/tmp/sweeps [--sweeps=...]
      [--out=results.md] [--plot=results.png] [--target=89.6]

For every point of every sweep (experiments/paper/sweeps.py), reads the final
test accuracy (the last `test` row of metrics.jsonl) of each seed's workdir
that finished, and writes: mean and spread (sample standard deviation) of
the test error over seeds, the number of runs, the budget they ran with and
the paper's number for that setting. Points with no finished run are listed
as "not run". With --target=ACC (%), also the median time from a run's
launch (start-up and compilation included) to its first test evaluation
at or above ACC, over the runs made in one launch that reached it. The plot has one panel per sweep: each run as a dot, the mean
as a bar, the paper's number as a cross.
"""

import json
import os
import statistics
import sys
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax.files import workdir_files  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def _test_rows(workdir: str) -> list[dict[str, Any]]:
  """The test evaluations of metrics.jsonl, in order."""
  return [r for r in workdir_files.read_metrics(workdir)
          if r['split'] == 'test']


def final_test_error(workdir: str) -> float | None:
  """Test error (%) of a finished run, or None."""
  if not os.path.exists(os.path.join(workdir, sweeps.DONE_FILE)):
    return None
  tests = _test_rows(workdir)
  return 100 * (1 - tests[-1]['accuracy']) if tests else None


def seconds_to(workdir: str, target: float) -> float | None:
  """Seconds from launch to the first test accuracy >= target (%), or None.

  None also for a run resumed from an earlier launch, whose start-up is not
  the whole run's.
  """
  with open(os.path.join(workdir, sweeps.DONE_FILE), encoding='utf-8') as f:
    done = json.load(f)
  if done.get('resumed', True) or 'started' not in done:
    return None
  times = [r['time'] for r in _test_rows(workdir)
           if 100 * r['accuracy'] >= target]
  return min(times) - done['started'] if times else None


def collect(root: str, names: list[str], target: float | None = None
            ) -> list[dict[str, Any]]:
  """One row per point: its runs' errors and what they ran with."""
  rows = []
  for name in names:
    sweep = sweeps.SWEEPS[name]
    point_dirs = os.path.join(root, name)
    for point in sweep.points:
      errors, budgets, seconds = [], set(), []
      directory = os.path.join(point_dirs, point.name)
      seeds = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
      for seed in seeds:
        error = final_test_error(os.path.join(directory, seed))
        if error is not None:
          errors.append(error)
          with open(os.path.join(directory, seed, sweeps.DONE_FILE),
                    encoding='utf-8') as f:
            budgets.add(json.load(f)['budget'])
          if target is not None:
            seconds.append(seconds_to(os.path.join(directory, seed), target))
      rows.append({'sweep': name, 'point': point.name,
                   'overrides': {**sweep.common, **point.overrides},
                   'errors': errors, 'budget': ', '.join(sorted(budgets)),
                   'paper_error': point.paper_error,
                   'seconds_to_target': [t for t in seconds if t is not None]})
  return rows


def _mean_spread(errors: list[float]) -> str:
  if not errors:
    return 'not run'
  if len(errors) == 1:
    return f'{errors[0]:.2f}'
  return f'{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f}'


def table(rows: list[dict[str, Any]], target: float | None = None) -> str:
  """The Markdown table; with a target, a column of times to reach it."""
  extra = f' s to {target:g}% (median, runs) |' if target is not None else ''
  lines = ['| sweep | point | overrides | runs | budget | test error % '
           '(mean ± sd) | paper % |' + extra,
           '|---|---|---|---|---|---|---|' + ('---|' if extra else '')]
  for r in rows:
    overrides = ' '.join(f'{k}={v}' for k, v in r['overrides'].items()) or '-'
    paper = '-' if r['paper_error'] is None else f'{r["paper_error"]:.2f}'
    line = (f'| {r["sweep"]} | {r["point"]} | `{overrides}` | '
            f'{len(r["errors"])} | {r["budget"] or "-"} | '
            f'{_mean_spread(r["errors"])} | {paper} |')
    if extra:
      times = r['seconds_to_target']
      line += (f' {statistics.median(times):.1f} ({len(times)}) |' if times
               else ' - |')
    lines.append(line)
  return '\n'.join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(dict.fromkeys(r['sweep'] for r in rows))
  figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4),
                              squeeze=False)
  for ax, name in zip(axes[0], names):
    points = [r for r in rows if r['sweep'] == name]
    labelled = set()

    def label(name):
      if name in labelled:
        return None
      labelled.add(name)
      return name

    for x, r in enumerate(points):
      if r['errors']:
        ax.bar(x, statistics.mean(r['errors']), color='tab:blue', alpha=0.4,
               label=label('mean'))
        ax.plot([x] * len(r['errors']), r['errors'], 'o', color='tab:blue',
                markersize=4, label=label('runs'))
      if r['paper_error'] is not None:
        ax.plot(x, r['paper_error'], 'x', color='tab:red', markersize=9,
                mew=2, label=label('paper'))
    ax.set_xticks(range(len(points)), [r['point'] for r in points],
                  rotation=30, ha='right')
    budgets = sorted({r['budget'] for r in points if r['budget']})
    ax.set_title(f'{name} ({", ".join(budgets) or "not run"})')
    ax.set_ylabel('test error (%)')
    ax.grid(axis='y', alpha=0.3)
    if labelled:
      ax.legend(fontsize=8)
  figure.suptitle('Runs (dots), their mean (bars), the paper (crosses)')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def define_flags() -> None:
  """Defined when run as a script, not on import (the tests import this
  module next to others with the same flag names)."""
  flags.DEFINE_string('root', None, 'The sweeps\' --root.',
      required=True)
  flags.DEFINE_list('sweeps', list(sweeps.SWEEPS), 'Sweeps to report.')
  flags.DEFINE_string('out', None, 'Write the Markdown table here too.')
  flags.DEFINE_string('plot', None, 'Write the plot (PNG) here.')
  flags.DEFINE_float('target', None, 'Also report the time to this test '
      'accuracy (%), e.g. 89.6.')


def main(argv):
  del argv
  rows = collect(os.path.abspath(FLAGS.root), FLAGS.sweeps, FLAGS.target)
  text = table(rows, FLAGS.target)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, 'w', encoding='utf-8') as f:
      f.write(text + '\n')
  if FLAGS.plot:
    plot(rows, FLAGS.plot)


if __name__ == '__main__':
  define_flags()
  app.run(main)
