"""Class activation maps and training curves of a trained run, as PNG files.

  python -m nin_jax.visualize --workdir=DIR --out=DIR [--split=test]
      [--num_images=8] [--step=N] [--data_dir=DIR]
  python -m nin_jax.visualize --pretrained=NAME --out=DIR ...

With global average pooling each logit is the mean of one class map (a
channel of the last mlpconv, after its ReLU), so that map shows where the
network saw the class. `class_maps.png` shows, for --num_images images of
the split (up to half of them misclassified ones from its first 500, the
rest the first correct ones), the image, then the map of the predicted class
and the map of the true class, upsampled bilinearly and drawn translucently
over the image in grey, so that the image shows where the evidence lies; one
colour scale per row, from 0, with its colour bar.
`training_curves.png` plots loss, accuracy and learning rate against step,
train and evaluation, from the run's metrics.jsonl (a published model
carries a copy).
"""

import os
from typing import Any, Sequence

from absl import flags
from absl import logging
import jax
import numpy as np

from nin_jax import cli
from nin_jax.data import image_folder
from nin_jax import errors
from nin_jax.files import workdir_files
from nin_jax import plots
from nin_jax.training import trained_run

FLAGS = flags.FLAGS

# Examples scanned for misclassified ones to show.
SEARCHED = 500
# Pixels a side that class maps are upsampled to for drawing, at least.
DRAWN_SIZE = 128


def class_activation_maps(run: trained_run.TrainedRun, raw_images: np.ndarray,
                          size: tuple[int, int] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities, maps upsampled bilinearly to `size` (default: the
  image's), (n, height, width, classes))."""
  probs, maps = probabilities_and_class_maps(run, raw_images)
  return (np.asarray(probs),
          np.asarray(upsample(maps, size or raw_images.shape[1:3])))


def probabilities_and_class_maps(run: trained_run.TrainedRun, raw_images: Any
                                 ) -> tuple[jax.Array, jax.Array]:
  """(probabilities, (n, classes); the class maps at the last mlpconv's
  resolution, (n, h, w, classes)) of raw images: the maps explain the
  logits only with the gap head, so other heads are a ConfigError."""
  if run.config.model.head != 'gap':
    raise errors.ConfigError(
        f'This run uses config.model.head={run.config.model.head!r}: its '
        'logits are not averages of the class maps, so class activation maps '
        'do not explain them. Visualize a run with the gap head.')
  logits, maps = run.logits_and_class_maps(run.preprocess(raw_images))
  return jax.nn.softmax(logits.astype(np.float32), axis=-1), maps


def upsample(maps: Any, size: Sequence[int]) -> jax.Array:
  """Class maps (n, h, w, classes) upsampled bilinearly to (n, *size,
  classes), as they are drawn."""
  return jax.image.resize(maps.astype(np.float32),
                          (maps.shape[0], *size, maps.shape[-1]),
                          method='bilinear')


def drawn_size(height: int, width: int) -> tuple[int, int]:
  """The size maps of (height, width) images are drawn at: the image's
  times the smallest whole factor that makes it DRAWN_SIZE a side or more
  (so that each image pixel is a square of drawn pixels)."""
  scale = -(-DRAWN_SIZE // max(height, width))
  return height * scale, width * scale


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


def panel_titles(names: Sequence[str], probs: np.ndarray, labels: np.ndarray
                 ) -> list[tuple[str, str, str]]:
  """Titles of each row's image, predicted-class map and true-class map: two
  short lines each, so that neighbouring titles stay apart even with class
  names as long as CIFAR-10's 'automobile'."""
  return [(f'image\ntrue: {names[t]}',
           f'map of predicted: {names[p]}\np = {probs[i, p]:.2f}',
           f'map of true: {names[t]}\np = {probs[i, t]:.2f}')
          for i, (p, t) in enumerate(zip(probs.argmax(axis=-1), labels))]


def draw_class_maps(run: trained_run.TrainedRun, images: np.ndarray,
                    labels: np.ndarray, path: str, split: str) -> None:
  """Writes class_maps.png (module docstring) of these images to `path`."""
  # The maps are upsampled straight to the drawn size (not to the image's and
  # then again by matplotlib), so that a 2x2 digits map is smooth too.
  probs, maps = class_activation_maps(run, images,
                                      drawn_size(*images.shape[1:3]))
  predicted = probs.argmax(axis=-1)
  rows = np.arange(len(images))
  titles = panel_titles(run.info.class_names, probs, labels)
  wrong = predicted != labels
  # A folder dataset's name holds a path: its last part says enough.
  if run.published:
    source = f'published model {os.path.basename(run.workdir)}'
  elif image_folder.is_folder(run.info.name):
    source = f'run on the image folder {os.path.basename(run.info.name)}'
  else:
    source = f'{run.info.name} run'
  plots.class_maps(
      images.astype(np.float32) / run.pixel_max, maps[rows, ..., predicted],
      maps[rows, ..., labels], titles, wrong, path,
      f'Class activation maps of the {source}, step {run.step}, on {split} '
      f'images: {int(np.sum(~wrong))} of these {len(images)} right (red: a '
      'wrong prediction; p: softmax probability). Each map is upsampled '
      'bilinearly and drawn over the image in grey; colour: map value, one '
      'scale per row, from 0 (no evidence for the class).')


# What training_curves plots of each row (the learning rate: of train rows).
PLOTTED = ('loss', 'accuracy')


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of metrics.jsonl that can be plotted.

  Damaged lines are skipped by workdir_files.read_metrics; rows without a
  number to plot are skipped here, counted in one warning line.
  """
  rows = workdir_files.read_metrics(workdir)
  if not rows:
    raise errors.WorkdirError(
        f'{workdir} has no {workdir_files.METRICS} rows to plot.')

  def plottable(row: dict[str, Any]) -> bool:
    wanted = PLOTTED + (('learning_rate',) if row['split'] == 'train' else ())
    return all(isinstance(row.get(k), (int, float))
               and not isinstance(row.get(k), bool) for k in wanted)

  kept = [row for row in rows if plottable(row)]
  if len(kept) < len(rows):
    logging.warning('Skipped %d rows of %s without a %s to plot.',
                    len(rows) - len(kept),
                    workdir_files.path(workdir, workdir_files.METRICS),
                    ', '.join(PLOTTED) + ' or learning rate')
  if not kept:
    raise errors.WorkdirError(
        f'{workdir_files.METRICS} in {workdir} has no rows with a loss and an '
        'accuracy to plot.')
  return kept


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
  # Made first: an unusable --out fails before anything is computed.
  with cli.output_directory(FLAGS.out) as out:
    run = cli.load_run()
    images, labels = pick_examples(run, FLAGS.split, FLAGS.num_images,
                                   FLAGS.data_dir)
    rows = read_metrics(run.workdir)
    with cli.writing(out):
      draw_class_maps(run, images, labels,
                      os.path.join(out, 'class_maps.png'), FLAGS.split)
      plots.training_curves(rows, f'{run.info.name}: {run.workdir}',
                            os.path.join(out, 'training_curves.png'))
  shown = cli.output_path(FLAGS.out)
  print(f'Wrote {os.path.join(shown, "class_maps.png")} and '
        f'{os.path.join(shown, "training_curves.png")}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
