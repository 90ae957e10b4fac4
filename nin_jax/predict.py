"""Top-k classes of image files, with the trained run's own preprocessing.

  python -m nin_jax.predict --workdir=DIR [--step=N] [--top_k=3] [--json]
      IMAGE [IMAGE ...]
  python -m nin_jax.predict --pretrained=NAME [--top_k=3] [--json] IMAGE ...

Any PNG, JPEG (or other format Pillow reads) of any size: each is converted
to the dataset's channels (grey or RGB), resized to its image size, scaled
to its raw pixel range (0-255, or 0-16 for the digits) and then preprocessed
exactly as in training. A file that cannot be read gets one error line and
the others are still predicted; the exit status is then 2.
"""

import json
import sys
from typing import Any, Sequence

from absl import flags
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from nin_jax import cli
from nin_jax import errors
from nin_jax import trained_run

FLAGS = flags.FLAGS


def load_image(path: str, image_shape: Sequence[int],
               pixel_max: int) -> np.ndarray:
  """The file as the dataset stores images: (H, W, C) in [0, pixel_max]."""
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert('L' if channels == 1 else 'RGB')
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, np.float32)
  except FileNotFoundError:
    raise errors.ImageError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise errors.ImageError(f'{path}: is a directory, not an image') from None
  except UnidentifiedImageError:
    raise errors.ImageError(f'{path}: not an image Pillow can read (give a PNG '
                            'or JPEG file)') from None
  except OSError as e:  # Truncated or corrupt data, permissions.
    raise errors.ImageError(f'{path}: cannot read the image ({e})') from None
  pixels = pixels.reshape(height, width, channels)
  if pixel_max != 255:
    pixels = np.round(pixels * (pixel_max / 255.0))
  return pixels


def predict_files(run: trained_run.TrainedRun, paths: Sequence[str], top_k: int
                  ) -> list[dict[str, Any]]:
  """One result per path: {'file', 'top_k': [(name, p), ...]} or {'error'}."""
  results, images, readable = [], [], []
  for path in paths:
    try:
      images.append(load_image(path, run.info.image_shape, run.pixel_max))
      readable.append(len(results))
      results.append({'file': path})
    except errors.ImageError as e:
      results.append({'file': path, 'error': str(e)})
  if images:
    probs = np.asarray(run.probabilities(np.stack(images)))
    for row, index in zip(probs, readable):
      results[index]['top_k'] = [
          {'class': int(c), 'name': run.info.class_names[c],
           'probability': float(row[c])}
          for c in trained_run.top_k(row, top_k)]
  return results


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_run_flags(reads_data=False)
  flags.DEFINE_integer('top_k', 3, 'Classes to show per image.')
  flags.DEFINE_bool('json', False, 'Print one JSON object per image.')


def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths:
    cli.fail('give at least one image file: python -m nin_jax.predict '
             '--workdir=DIR (or --pretrained=NAME) IMAGE [IMAGE ...]')
  cli.check_command_line(argv[:1], 'top_k')  # The rest are image files.
  run = cli.load_run()
  results = predict_files(run, paths, FLAGS.top_k)
  for result in results:
    if FLAGS.json:
      print(json.dumps(result))
    elif 'error' in result:
      print(f'error: {result["error"]}', file=sys.stderr)
    else:
      ranked = '  '.join(f'{i + 1}. {p["name"]} {p["probability"]:.3f}'
                         for i, p in enumerate(result['top_k']))
      print(f'{result["file"]}: {ranked}')
  if any('error' in r for r in results):
    sys.exit(errors.EXIT_USER_ERROR)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
