"""Class activation maps and training curves of a trained run, as PNG files.

  python -m nin_jax.visualize --workdir=DIR --out=DIR [--split=test]
      [--num_images=8] [--step=N] [--data_dir=DIR]
  python -m nin_jax.visualize --pretrained=NAME --out=DIR ...

With global average pooling each logit is the mean of one class map (a
channel of the last mlpconv, after its ReLU), so that map shows where the
network saw the class. `class_maps.png` shows, for --num_images images of
the split (up to half of them misclassified ones from its first 500, the
rest the first correct ones), the image, the map of the predicted class and
the map of the true class, upsampled bilinearly to the image size and
overlaid.
`training_curves.png` plots loss, accuracy and learning rate against step,
train and evaluation, from the run's metrics.jsonl (a published model
carries a copy).
"""

import os
from typing import Any

from absl import flags
import jax
import numpy as np

from nin_jax import cli
from nin_jax import errors
from nin_jax import plots
from nin_jax import trained_run
from nin_jax import workdir_files

FLAGS = flags.FLAGS

# Examples scanned for misclassified ones to show.
SEARCHED = 500


def class_activation_maps(run: trained_run.TrainedRun, raw_images: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities, maps upsampled to the image size (n, H, W, classes))."""
  if run.config.model.head != 'gap':
    raise errors.ConfigError(
        f'This run uses config.model.head={run.config.model.head!r}: its '
        'logits are not averages of the class maps, so class activation maps '
        'do not explain them. Visualize a run with the gap head.')
  logits, maps = run.logits_and_class_maps(run.preprocess(raw_images))
  height, width = raw_images.shape[1:3]
  upsampled = jax.image.resize(maps.astype(np.float32),
                               (maps.shape[0], height, width, maps.shape[-1]),
                               method='bilinear')
  return (np.asarray(jax.nn.softmax(logits, axis=-1)), np.asarray(upsampled))


def pick_examples(run: trained_run.TrainedRun, split: str, count: int,
                  data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`count` raw images and labels of `split` worth looking at.

  Among the split's first SEARCHED examples: up to half of them
  misclassified (where the maps of the predicted and the true class differ),
  the rest the first correctly classified ones; in split order.
  """
  batch = run.dataset(data_dir).head(split, max(count, SEARCHED))
  images, labels = batch['image'], batch['label'].astype(np.int64)
  predicted = np.concatenate([
      np.asarray(run.logits(run.preprocess(images[i:i + 100]))).argmax(-1)
      for i in range(0, len(images), 100)])
  wrong = np.flatnonzero(predicted != labels)[:count // 2]
  right = np.flatnonzero(predicted == labels)[:count - len(wrong)]
  chosen = np.sort(np.concatenate([wrong, right]))
  return images[chosen], labels[chosen]


def draw_class_maps(run: trained_run.TrainedRun, images: np.ndarray,
                    labels: np.ndarray, path: str, split: str) -> None:
  probs, maps = class_activation_maps(run, images)
  names = run.info.class_names
  predicted = probs.argmax(axis=-1)
  rows = np.arange(len(images))
  titles = [
      (f'true: {names[t]}', f'map of predicted: {names[p]} ({probs[i, p]:.2f})',
       f'map of true: {names[t]} ({probs[i, t]:.2f})')
      for i, (p, t) in enumerate(zip(predicted, labels))]
  accuracy = float(np.mean(predicted == labels))
  plots.class_maps(
      images.astype(np.float32) / run.pixel_max, maps[rows, ..., predicted],
      maps[rows, ..., labels], titles, path,
      f'Class activation maps, {run.info.name} {split}, step {run.step} '
      f'({100 * accuracy:.0f}% of these {len(images)} right; colour: map '
      'value, one scale per row)')


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  rows = workdir_files.read_metrics(workdir)
  if not rows:
    raise errors.WorkdirError(
        f'{workdir} has no {workdir_files.METRICS} rows to plot.')
  return rows


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_run_flags(reads_data=True)
  flags.DEFINE_string('out', None, 'Directory for the PNG files (nothing is '
                      'written into the workdir or published model).',
                      required=True)
  flags.DEFINE_integer('num_images', 8, 'Images in the grid.')


def main(argv: list[str]) -> None:
  cli.check_command_line(argv, 'num_images')
  run = cli.load_run()
  os.makedirs(FLAGS.out, exist_ok=True)
  images, labels = pick_examples(run, FLAGS.split, FLAGS.num_images,
                                  FLAGS.data_dir)
  maps_path = os.path.join(FLAGS.out, 'class_maps.png')
  draw_class_maps(run, images, labels, maps_path, FLAGS.split)
  curves_path = os.path.join(FLAGS.out, 'training_curves.png')
  plots.training_curves(read_metrics(run.workdir),
                        f'{run.info.name}: {run.workdir}', curves_path)
  print(f'Wrote {maps_path} and {curves_path}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
