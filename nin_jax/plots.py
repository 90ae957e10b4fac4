"""The figures the commands write: confusion matrix, class maps, curves.

matplotlib figures drawn by its Agg canvas (files only, no display needed),
without pyplot: matplotlib's backend, which a notebook may have chosen, is
left as it is.
"""

import textwrap
from typing import Any, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np


# Class maps: a perceptually uniform colour map, about half transparent, over
# the grey image with its contrast lowered (black and white drawn as 22% and
# 78% grey) so that the map's colours stay readable over a digit's black and
# white pixels and the image still shows through.
_MAP_COLOURS = 'inferno'
_MAP_ALPHA = 0.6
_GREY_RANGE = (-0.4, 1.4)


def _figure(**options: Any) -> Figure:
  """A figure of its own, drawn by Agg (pyplot does not keep it)."""
  figure = Figure(**options)
  FigureCanvasAgg(figure)
  return figure


def _save(figure: Any, path: str) -> None:
  figure.savefig(path, dpi=110, bbox_inches='tight')


def confusion_matrix(confusion: np.ndarray, class_names: Sequence[str],
                     title: str, path: str) -> None:
  """Rows: true class; columns: predicted. Colour: share of the row."""
  n = len(class_names)
  size = max(5.0, 0.45 * n + 2)
  figure = _figure(figsize=(size, size * 0.9))
  axes = figure.subplots()
  rows = confusion.sum(axis=1, keepdims=True)
  shares = confusion / np.maximum(rows, 1)
  image = axes.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                  label='share of the true class')
  if n <= 30:  # Readable tick labels and counts.
    long_names = max(len(name) for name in class_names) > 3
    axes.set_xticks(range(n), class_names,
                    rotation=(90 if n > 10 else 45) if long_names else 0,
                    ha='right' if long_names and n <= 10 else 'center')
    axes.set_yticks(range(n), class_names)
  if n <= 20:
    for i in range(n):
      for j in range(n):
        if confusion[i, j]:
          axes.text(j, i, str(confusion[i, j]), ha='center', va='center',
                    fontsize=8, color='white' if shares[i, j] > 0.5 else 'black')
  axes.set_xlabel('predicted class')
  axes.set_ylabel('true class')
  axes.set_title(title)
  _save(figure, path)


def class_maps(images: np.ndarray, predicted_maps: np.ndarray,
               true_maps: np.ndarray, titles: Sequence[Sequence[str]],
               wrong: Sequence[bool], path: str, suptitle: str) -> None:
  """class_maps_figure, saved to `path`."""
  _save(class_maps_figure(images, predicted_maps, true_maps, titles, wrong,
                          suptitle), path)


def class_maps_figure(images: np.ndarray, predicted_maps: np.ndarray,
                      true_maps: np.ndarray, titles: Sequence[Sequence[str]],
                      wrong: Sequence[bool], suptitle: str) -> Any:
  """One row per image: the image, then the predicted and the true class's map
  drawn translucently over a grey copy of it, so that the image shows through.

  `images` are (n, H, W, C) in [0, 1], drawn pixel by pixel; the maps are
  (n, h, w) at any resolution (finer than the image gives smooth maps) and
  cover the same area. One colour scale per row, from 0 (a class map is a
  ReLU's output: 0 is no evidence) to the larger of the row's two maxima, so
  that the two maps of a row compare; its colour bar is at the row's end.
  Rows in `wrong` get their predicted-map title in red. Constrained layout
  keeps the suptitle, the two-line panel titles and the colour bars apart.
  """
  n = len(images)
  figure = _figure(figsize=(7.5, 0.35 + 2.45 * n), layout='constrained')
  axes = figure.subplots(n, 3, squeeze=False)
  height, width = images.shape[1:3]
  extent = (0, width, height, 0)  # Maps and image share the same area.
  for i in range(n):
    image = images[i]
    colour = image.shape[-1] != 1
    low = min(0.0, float(predicted_maps[i].min()), float(true_maps[i].min()))
    top = max(float(predicted_maps[i].max()), float(true_maps[i].max()),
              low + 1e-6)
    axes[i, 0].imshow(image if colour else image[..., 0],
                      cmap=None if colour else 'gray', vmin=0, vmax=1,
                      interpolation='nearest', extent=extent)
    for j, picture in ((1, predicted_maps[i]), (2, true_maps[i])):
      axes[i, j].imshow(image.mean(axis=-1), cmap='gray',
                        vmin=_GREY_RANGE[0], vmax=_GREY_RANGE[1],
                        interpolation='nearest', extent=extent)
      overlay = axes[i, j].imshow(picture, cmap=_MAP_COLOURS, alpha=_MAP_ALPHA,
                                  vmin=low, vmax=top, interpolation='bilinear',
                                  extent=extent)
    bar = figure.colorbar(overlay, ax=axes[i, 1:], fraction=0.05, pad=0.02,
                          aspect=15)
    bar.ax.tick_params(labelsize=8)
    for j, title in enumerate(titles[i]):
      red = j == 1 and wrong[i]
      axes[i, j].set_title(title, fontsize=9,
                           color='firebrick' if red else 'black')
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
  figure.suptitle('\n'.join(textwrap.wrap(suptitle, 78)), fontsize=10)
  return figure


def map_overlay(image: np.ndarray, class_map: np.ndarray, low: float,
                top: float) -> np.ndarray:
  """One class map drawn over its image as class_maps_figure draws it, as
  (h, w, 3) uint8 pixels (a PNG for the web page of python -m
  nin_jax.serve): the image in grey with its contrast lowered, the map's
  colours from `low` to `top` over it, at _MAP_ALPHA.

  `image` is (H, W, C) in [0, 1]; `class_map` (h, w), a whole multiple of
  it, which each image pixel is repeated to cover (imshow's 'nearest').
  """
  rows, columns = (m // i for m, i in zip(class_map.shape, image.shape[:2]))
  grey = image.mean(axis=-1).repeat(rows, axis=0).repeat(columns, axis=1)
  grey = np.clip((grey - _GREY_RANGE[0]) / (_GREY_RANGE[1] - _GREY_RANGE[0]),
                 0, 1)
  shade = np.clip((class_map - low) / max(top - low, 1e-6), 0, 1)
  colours = colormaps[_MAP_COLOURS](shade)[..., :3]
  drawn = (1 - _MAP_ALPHA) * grey[..., None] + _MAP_ALPHA * colours
  return np.round(drawn * 255).astype(np.uint8)


def training_curves(rows: Sequence[dict[str, Any]], title: str,
                    path: str) -> None:
  """Loss, accuracy and learning rate against step, train vs evaluation."""
  figure = _figure(figsize=(15, 4))
  axes = figure.subplots(1, 3)
  splits = sorted({r['split'] for r in rows},
                  key=lambda s: (s != 'train', s))
  for split in splits:
    points = sorted((r for r in rows if r['split'] == split),
                    key=lambda r: r['step'])
    steps = [r['step'] for r in points]
    style = '-' if split == 'train' else 'o-'
    axes[0].plot(steps, [r['loss'] for r in points], style, label=split,
                 markersize=3)
    axes[1].plot(steps, [100 * r['accuracy'] for r in points], style,
                 label=split, markersize=3)
    if split == 'train':
      axes[2].plot(steps, [r['learning_rate'] for r in points])
  for ax, label in zip(axes, ('loss (cross-entropy)', 'accuracy (%)',
                              'learning rate')):
    ax.set_xlabel('step')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend()
  axes[1].legend()
  axes[0].set_title('loss')
  axes[1].set_title('accuracy')
  axes[2].set_title('learning rate (train)')
  figure.suptitle(title)
  figure.tight_layout()
  _save(figure, path)
