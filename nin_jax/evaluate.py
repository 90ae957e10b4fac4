"""Accuracy, per-class accuracy, top-k and a confusion matrix of a trained run.

  python -m nin_jax.evaluate --workdir=DIR [--split=test] [--step=N]
      [--top_k=5] [--out=DIR] [--data_dir=DIR]
  python -m nin_jax.evaluate --pretrained=NAME --out=DIR [--split=test] ...

Every example of the split is evaluated exactly once (the last batch is
padded and masked), with the run's own preprocessing, from the newest
checkpoint or --step. Writes `report.json` and `confusion.png` to --out
(default: DIR/evaluation/<split>_step<N>/; a published model needs --out)
and prints the numbers.
"""

import json
import os
from typing import Any

from absl import flags
import numpy as np
import optax

from nin_jax import cli
from nin_jax.data import input_pipeline
from nin_jax import errors
from nin_jax import plots
from nin_jax.training import trained_run

FLAGS = flags.FLAGS


def predictions(run: trained_run.TrainedRun, split: str,
                data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(logits, labels) of every example of `split`, in the split's order."""
  if split == input_pipeline.VALIDATION and not run.info.num_validation:
    raise errors.ConfigError(
        'This run held out no validation examples (config.validation_size=0);'
        ' evaluate --split=test instead.')
  all_logits, all_labels = [], []
  for batch in input_pipeline.eval_batches(
      run.dataset(data_dir), run.info, run.prep, run.config.eval_batch_size,
      split=split):
    real = batch['mask'] > 0
    all_logits.append(np.asarray(run.logits(batch['image']))[real])
    all_labels.append(batch['label'][real])
  return np.concatenate(all_logits), np.concatenate(all_labels)


def report(logits: np.ndarray, labels: np.ndarray,
           class_names: tuple[str, ...], top_k: int) -> dict[str, Any]:
  """Accuracy, top-k, mean loss, per-class accuracy and the confusion matrix."""
  n = len(class_names)
  predicted = logits.argmax(axis=-1)
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  per_class_total = confusion.sum(axis=1)
  ranked = np.argsort(-logits, axis=-1, kind='stable')
  ks = sorted({1, min(top_k, n)})
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
      'num_examples': int(len(labels)),
      'accuracy': float(np.mean(predicted == labels)),
      'top_k_accuracy': {str(k): float(np.mean(np.any(
          ranked[:, :k] == labels[:, None], axis=1))) for k in ks},
      'loss': float(np.mean(loss)),
      'per_class': [
          {'class': i, 'name': class_names[i],
           'examples': int(per_class_total[i]),
           'accuracy': (float(confusion[i, i] / per_class_total[i])
                        if per_class_total[i] else None)}
          for i in range(n)],
      'class_names': list(class_names),
      'confusion_matrix': confusion.tolist(),  # [true][predicted]
  }


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_run_flags(reads_data=True)
  flags.DEFINE_integer('top_k', 5, 'Also report top-k accuracy.')
  flags.DEFINE_string('out', None, 'Output directory (default: '
                      'WORKDIR/evaluation/<split>_step<N>; with --pretrained, '
                      'whose directory is never written to, no report is '
                      'written unless --out is given).')


def evaluation(run: trained_run.TrainedRun, split: str, top_k: int,
               data_dir: str | None = None) -> dict[str, Any]:
  """The report of one split: what report.json holds."""
  logits, labels = predictions(run, split, data_dir)
  return {'workdir': run.workdir, 'step': run.step, 'split': split,
          'dataset': run.info.name,
          **report(logits, labels, run.info.class_names, top_k)}


def write_report(run: trained_run.TrainedRun, split: str, top_k: int,
                 out: str | None = None, data_dir: str | None = None
                 ) -> tuple[dict[str, Any], str]:
  """Evaluates, writes report.json and confusion.png; (report, directory).

  The directory is made first, so that an unusable --out fails before the
  evaluation; if anything then fails, what was made is removed again. A
  published model's directory is never written to: it needs an `out`.
  """
  if out is None and run.published:
    raise errors.ConfigError(
        f'{run.workdir} is a published model, which is never written to: '
        'pass --out=DIR for the report.')
  out = out or os.path.join(run.workdir, 'evaluation', f'{split}_step{run.step}')
  with cli.output_directory(out) as local:
    result = evaluation(run, split, top_k, data_dir)
    cli.write_output(os.path.join(local, 'report.json'),
                     json.dumps(result, indent=2))
    with cli.writing(local):
      plots.confusion_matrix(
          np.array(result['confusion_matrix']), run.info.class_names,
          f'{run.info.name} {split}, step {run.step}: accuracy '
          f'{100 * result["accuracy"]:.2f}% ({result["num_examples"]} '
          'examples)', os.path.join(local, 'confusion.png'))
  return result, cli.output_path(out)


def main(argv: list[str]) -> None:
  cli.check_command_line(argv, 'top_k')
  run = cli.load_run()
  if FLAGS.out is None and run.published:  # Printed only.
    result, out = evaluation(run, FLAGS.split, FLAGS.top_k,
                             FLAGS.data_dir), None
  else:
    result, out = write_report(run, FLAGS.split, FLAGS.top_k, FLAGS.out,
                               FLAGS.data_dir)
  print(f'{run.info.name} {FLAGS.split} split, checkpoint step {run.step}, '
        f'{result["num_examples"]} examples')
  for k, accuracy in result['top_k_accuracy'].items():
    print(f'  top-{k} accuracy: {100 * accuracy:.2f}%')
  print(f'  mean loss: {result["loss"]:.4f}')
  print('  per class:')
  for row in result['per_class']:
    shown = ('n/a' if row['accuracy'] is None
             else f'{100 * row["accuracy"]:.2f}%')
    print(f'    {row["class"]:>3} {row["name"]:<16} {shown:>8} of '
          f'{row["examples"]}')
  if out is None:
    print('No report written (a published model\'s directory is never '
          'written to): --out=DIR keeps report.json and confusion.png.')
  else:
    print(f'Wrote {os.path.join(out, "report.json")} and '
          f'{os.path.join(out, "confusion.png")}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
