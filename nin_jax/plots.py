"""The figures the commands write: confusion matrix, class maps, curves.

matplotlib with the Agg backend (files only, no display needed).
"""

import textwrap
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def _save(figure: Any, path: str) -> None:
  figure.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(figure)


def confusion_matrix(confusion: np.ndarray, class_names: Sequence[str],
                     title: str, path: str) -> None:
  """Rows: true class; columns: predicted. Colour: share of the row."""
  n = len(class_names)
  size = max(5.0, 0.45 * n + 2)
  figure, axes = plt.subplots(figsize=(size, size * 0.9))
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
               path: str, suptitle: str) -> None:
  """One row per image: the image, the predicted class's map, the true one's.

  `images` are (n, H, W, C) in [0, 1]; the maps are (n, H, W), already
  upsampled to the image size, and drawn over a grey copy of the image with
  one colour scale per row, from the lower to the higher of the two maps'
  extremes (so the two maps of a row compare).
  """
  n = len(images)
  figure, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
  for i in range(n):
    image = images[i]
    shown = image[..., 0] if image.shape[-1] == 1 else image
    grey = image.mean(axis=-1)
    low = min(float(predicted_maps[i].min()), float(true_maps[i].min()))
    top = max(float(predicted_maps[i].max()), float(true_maps[i].max()),
              low + 1e-6)
    for j, (picture, title) in enumerate(zip(
        (None, predicted_maps[i], true_maps[i]), titles[i])):
      ax = axes[i, j]
      if picture is None:
        ax.imshow(shown, cmap='gray' if image.shape[-1] == 1 else None,
                  vmin=0, vmax=1, interpolation='nearest')
      else:
        ax.imshow(grey, cmap='gray', vmin=0, vmax=1, interpolation='nearest')
        overlay = ax.imshow(picture, cmap='jet', alpha=0.6, vmin=low,
                            vmax=top)
        if j == 2:
          figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04)
      ax.set_title(title, fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  # Wrapped to the figure's width, with room kept for it above the rows.
  lines = textwrap.wrap(suptitle, 80)
  figure.suptitle('\n'.join(lines), fontsize=10)
  height = 2.5 * n
  figure.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.18 * len(lines)) / height))
  _save(figure, path)


def training_curves(rows: Sequence[dict[str, Any]], title: str,
                    path: str) -> None:
  """Loss, accuracy and learning rate against step, train vs evaluation."""
  figure, axes = plt.subplots(1, 3, figsize=(15, 4))
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
