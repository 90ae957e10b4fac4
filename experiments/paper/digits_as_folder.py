"""Writes scikit-learn's digits as a user's image folder: 28x28 grey PNGs.

  python experiments/paper/digits_as_folder.py --out=/tmp/digits_folder
  python -m nin_jax.main --workdir=/tmp/nin_digits_folder \
      --config=nin_jax/configs/digits.py \
      --config.dataset=folder:/tmp/digits_folder --config.augment_pad=3

A real dataset laid out the way a user would lay out theirs (ROOT/train/
<class>/<image>.png, ROOT/test/...), in another shape than CIFAR's (grey,
28x28 like MNIST, class folders named by word), to show that a folder
trains without code changes. The split is the digits config's (1,437 train,
360 test); pixels are scaled from 0-16 to 0-255 and upsampled with Pillow's
bilinear filter.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
         'eight', 'nine')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='Folder to create.')
  parser.add_argument('--size', type=int, default=28)
  args = parser.parse_args()
  for split in ('train', 'test'):
    images, labels = input_pipeline._digits_arrays(split)  # pylint: disable=protected-access
    for i, (image, label) in enumerate(zip(images, labels)):
      directory = os.path.join(args.out, split, NAMES[label])
      os.makedirs(directory, exist_ok=True)
      pixels = (image[..., 0] * (255 / 16)).round().astype(np.uint8)
      Image.fromarray(pixels).resize((args.size, args.size),
                                     Image.Resampling.BILINEAR).save(
                                         os.path.join(directory, f'{i:04d}.png'))
    print(f'{split}: {len(labels)} images in {args.out}/{split}/<class>/')


if __name__ == '__main__':
  main()
