"""Top-k classes of image files, with the trained run's own preprocessing.

  python -m nin_jax.predict --workdir=DIR [--step=N] [--top_k=3] [--json]
      IMAGE [IMAGE ...]
  python -m nin_jax.predict --pretrained=NAME [--top_k=3] [--json] IMAGE ...

Any PNG, JPEG (or other format Pillow reads) of any size: each is converted
to the dataset's channels (grey or RGB), resized to its image size, scaled
to its raw pixel range (0-255, or 0-16 for the digits) and then preprocessed
exactly as in training; a 16-bit greyscale image is scaled to 8 bits first.
A file that cannot be read (missing, not an image, damaged, too large for
Pillow to decode safely) gets one error line and the others are still
predicted; the exit status is then 2.
"""

import json
import sys
from typing import Any, BinaryIO, Sequence

from absl import flags
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from nin_jax import cli
from nin_jax import errors
from nin_jax.training import trained_run

FLAGS = flags.FLAGS


# Pillow's modes of 16- and 32-bit integer pixels (a 16-bit PNG opens as
# 'I;16'; older Pillow versions give 'I'): converting them to 8 bits clips
# every value above 255, so they are scaled from 0-65535 instead.
WIDE_INTEGER_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def _to_8_bit_range(image: Image.Image) -> Image.Image:
  """A 16-bit greyscale image as floats in 0-255 ('F'); others unchanged."""
  if image.mode not in WIDE_INTEGER_MODES:
    return image
  pixels = np.asarray(image, np.float64)
  if pixels.min() < 0 or pixels.max() > 65535:
    raise ValueError(f'{image.mode} pixels outside 0-65535 (from '
                     f'{pixels.min():.0f} to {pixels.max():.0f})')
  return Image.fromarray((pixels * (255 / 65535)).astype(np.float32), 'F')


def load_image(path: str, image_shape: Sequence[int],
               pixel_max: int) -> np.ndarray:
  """The file as the dataset stores images: (H, W, C) in [0, pixel_max].

  16-bit greyscale images are scaled to 8 bits (not clipped). Every way a
  file can fail is an errors.ImageError about that file alone.
  """
  return decode_image(path, path, image_shape, pixel_max)


def decode_image(source: str | BinaryIO, name: str,
                 image_shape: Sequence[int], pixel_max: int,
                 max_pixels: int | None = None) -> np.ndarray:
  """load_image of a path or of an open binary file (an upload held in
  memory, say), whose errors start with `name`.

  `max_pixels`: a larger image is refused from its header, before it is
  decoded (Pillow's own limit, Image.MAX_IMAGE_PIXELS, applies as well).
  """
  height, width, channels = image_shape
  try:
    with Image.open(source) as image:
      if max_pixels is not None and image.width * image.height > max_pixels:
        raise errors.ImageError(
            f'{name}: too large to decode safely ({image.width}x'
            f'{image.height} pixels, over the limit of {max_pixels}); '
            'shrink it first (e.g. to 1000 pixels a side)')
      image.load()
      image = _to_8_bit_range(image)
      if image.mode != 'F':
        image = image.convert('L' if channels == 1 else 'RGB')
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, np.float32)
  except errors.ImageError:
    raise
  except FileNotFoundError:
    raise errors.ImageError(f'{name}: no such file') from None
  except IsADirectoryError:
    raise errors.ImageError(f'{name}: is a directory, not an image') from None
  except UnidentifiedImageError:
    raise errors.ImageError(f'{name}: not an image Pillow can read (give a PNG '
                            'or JPEG file)') from None
  except Image.DecompressionBombError as e:
    raise errors.ImageError(
        f'{name}: too large to decode safely ({e.args[0].split(",")[0]}); '
        'shrink it first (e.g. to 1000 pixels a side)') from None
  except OSError as e:  # Truncated or corrupt data, permissions.
    raise errors.ImageError(f'{name}: cannot read the image ({e})') from None
  except Exception as e:  # pylint: disable=broad-except
    # Pillow's decoders raise many kinds (SyntaxError, ValueError, ...) for
    # a malformed file; it is that file's error, not the command's.
    raise errors.ImageError(f'{name}: cannot decode the image '
                            f'({type(e).__name__}: {e})') from None
  if pixels.ndim == 2:  # Greyscale, for an RGB model: grey in each channel.
    pixels = np.repeat(pixels[..., None], channels, axis=-1)
  # Whole values, as the dataset stores them (a scaled 16-bit image has
  # fractions).
  pixels = np.round(pixels).reshape(height, width, channels)
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
      results[index]['top_k'] = ranked(run, row, top_k)
  return results


def ranked(run: trained_run.TrainedRun, probabilities: np.ndarray, k: int
           ) -> list[dict[str, Any]]:
  """The k most probable classes of one image's probabilities, most probable
  first: [{'class': index, 'name', 'probability'}, ...]."""
  return [{'class': int(c), 'name': run.info.class_names[c],
           'probability': float(probabilities[c])}
          for c in trained_run.top_k(probabilities, k)]


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
