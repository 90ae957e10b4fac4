"""Test accuracy against epochs for several run records or workdirs, in one
figure, so that runs of different schedules can be compared at equal epochs.

  python experiments/paper/curves.py --out=curves.png \
      experiments/paper/records/cifar10_paper \
      experiments/paper/records/default_2500

Each argument is a directory holding a metrics.jsonl and a config.json (a
workdir, or a record under experiments/paper/records/); its name labels the
curve unless --labels names them (one per directory, in order). Steps
become epochs with the run's own batch size and the number of training
examples of its dataset.json (or --train_examples).
"""

import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from nin_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from nin_jax.files import workdir_files  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Where to write the figure (.png).',
                    required=True)
flags.DEFINE_integer('train_examples', None,
                     "Training examples per epoch, for runs whose directory "
                     "has no dataset.json (CIFAR-10's 50,000, for example).")
flags.DEFINE_list('labels', None,
                  'Comma-separated curve labels, one per directory '
                  '(default: the directory names).')

_NOT_A_RUN = 'name a workdir or a run record.'


def accuracy_curve(run_dir: str, train_examples: int | None = None
                   ) -> tuple[list[float], list[float]]:
  """(epochs, test accuracy in %) of every test evaluation of a run."""
  config = workdir_files.read_json(run_dir, 'config.json', _NOT_A_RUN)
  if os.path.exists(os.path.join(run_dir, 'dataset.json')):
    train_examples = workdir_files.read_json(
        run_dir, 'dataset.json', _NOT_A_RUN)['num_train']
  if not train_examples:
    raise app.UsageError(f'{run_dir} has no dataset.json: give '
                         '--train_examples=N (50000 for CIFAR-10).')
  tests = sorted((r['step'], r['accuracy'])
                 for r in workdir_files.read_metrics(run_dir)
                 if r['split'] == 'test')
  steps_per_epoch = train_examples // config['batch_size']
  return ([step / steps_per_epoch for step, _ in tests],
          [100 * accuracy for _, accuracy in tests])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Name at least one run directory.')
  run_dirs = argv[1:]
  labels = FLAGS.labels or [os.path.basename(os.path.normpath(d))
                            for d in run_dirs]
  if len(labels) != len(run_dirs):
    raise app.UsageError(f'--labels names {len(labels)} curves for '
                         f'{len(run_dirs)} directories: give one per '
                         'directory.')
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for run_dir, label in zip(run_dirs, labels):
    try:
      epochs, accuracy = accuracy_curve(run_dir, FLAGS.train_examples)
    except errors.WorkdirError as e:
      raise app.UsageError(str(e)) from None
    axes.plot(epochs, accuracy, marker='.', label=label)
  axes.set_xlabel('epoch')
  axes.set_ylabel('test accuracy (%)')
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(FLAGS.out, dpi=120)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
