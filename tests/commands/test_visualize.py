"""Class activation maps: what they are, and the PNG files drawn from them."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from nin_jax.data import input_pipeline
from nin_jax import errors
from nin_jax import plots
from nin_jax.training import trained_run
from nin_jax import visualize


def test_class_map_is_the_last_channel_and_averages_to_the_logit(
    trained_workdir):
  run = trained_run.load(trained_workdir)
  images, _ = input_pipeline._digits_arrays('test')
  inputs = run.preprocess(images[:6])
  logits, maps = run.logits_and_class_maps(inputs)
  # The last mlpconv's output, computed without the sow: the same maps.
  blocks = run.model.apply(
      run.variables, inputs, train=False, capture_intermediates=True,
      mutable=['intermediates'])[1]['intermediates']
  last_block = blocks['mlpconv3']['__call__'][0]
  np.testing.assert_array_equal(np.asarray(maps), np.asarray(last_block))
  assert maps.shape == (6, 2, 2, 10)  # 8 -> 4 -> 2 pixels, one map a class.
  np.testing.assert_allclose(np.asarray(maps).mean(axis=(1, 2)),
                             np.asarray(logits), rtol=1e-6, atol=1e-6)
  # Upsampled to the image: its mean is still the logit (bilinear, 2 -> 8).
  _, upsampled = visualize.class_activation_maps(run, images[:6])
  assert upsampled.shape == (6, 8, 8, 10)
  np.testing.assert_allclose(upsampled.mean(axis=(1, 2)), np.asarray(logits),
                             rtol=1e-4, atol=1e-4)


def test_fc_head_has_no_class_activation_maps(trained_workdir):
  run = trained_run.load(trained_workdir)
  run.config.model.head = 'fc'
  with pytest.raises(errors.ConfigError, match='gap head'):
    visualize.class_activation_maps(run, np.zeros((1, 8, 8, 1), np.uint8))


def _overlaps(figure) -> list[str]:
  """Titles, panels and colour bars (with their tick labels) of a drawn
  figure that overlap each other, named for the failure message."""
  figure.canvas.draw()
  renderer = figure.canvas.get_renderer()
  suptitle = figure._suptitle  # pylint: disable=protected-access
  boxes = ([('suptitle', suptitle.get_window_extent(renderer))]
           if suptitle is not None else [])
  for k, ax in enumerate(figure.axes):
    if ax.get_label() == '<colorbar>':
      boxes.append((f'colour bar {k}', ax.get_tightbbox(renderer)))
    else:
      boxes.append((f'panel {k}', ax.get_window_extent(renderer)))
      boxes.append((f'title {ax.get_title()!r}',
                    ax.title.get_window_extent(renderer)))
  # A pixel of slack: boxes that only touch do not count.
  boxes = [(name, box.padded(-1)) for name, box in boxes]
  return [f'{a} and {b}' for i, (a, box) in enumerate(boxes)
          for b, other in boxes[i + 1:] if box.overlaps(other)]


def _panel_pixels(figure, ax) -> np.ndarray:
  """The RGB pixels that `ax` covers in the drawn figure."""
  figure.canvas.draw()
  pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(np.float32)
  box = ax.get_window_extent()
  top = pixels.shape[0] - int(np.ceil(box.y1))  # Rows count from the top.
  return pixels[top + 2:pixels.shape[0] - int(box.y0) - 2,
                int(box.x0) + 2:int(np.ceil(box.x1)) - 2]


def test_class_maps_are_translucent_over_the_image_with_a_colour_bar():
  # Left half black, right half white; the maps one value all over (the
  # predicted one high, the true one 0), drawn at 4 times the image's size.
  image = np.zeros((1, 8, 8, 1), np.float32)
  image[:, :, 4:] = 1
  figure = plots.class_maps_figure(
      image, np.full((1, 32, 32), 5.0), np.zeros((1, 32, 32)),
      [('image\ntrue: 3', 'map of predicted: 3\np = 0.9',
        'map of true: 3\np = 0.9')], [False], 'one row')
  try:
    image_axes = [ax for ax in figure.axes if ax.get_label() != '<colorbar>']
    assert len(image_axes) == 3
    assert [ax.get_label() for ax in figure.axes].count('<colorbar>') == 1
    for ax in image_axes[1:]:
      grey, overlay = ax.get_images()  # The map lies over the image...
      assert 0.3 <= overlay.get_alpha() <= 0.7  # ...and lets it show through,
      assert overlay.get_extent() == grey.get_extent()  # over the same area.
      assert overlay.get_array().shape == (32, 32)
      pixels = _panel_pixels(figure, ax)
      half = pixels.shape[1] // 2
      # The image's black and white halves stay apart under the map.
      assert (pixels[:, half + 3:].mean() - pixels[:, :half - 3].mean()) > 40
    # The two maps' colours differ (high vs 0 on the row's one scale).
    high, zero = (_panel_pixels(figure, ax) for ax in image_axes[1:])
    assert np.abs(high.mean(axis=(0, 1)) - zero.mean(axis=(0, 1))).max() > 40
  finally:
    plt.close(figure)


def test_class_map_titles_never_overlap():
  # CIFAR-10's longest names, a misclassified row, a suptitle of 5 lines.
  names = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck')
  probs = np.full((3, 10), 0.01)
  probs[[0, 1, 2], [1, 1, 9]] = 0.91
  titles = visualize.panel_titles(names, probs, np.array([1, 9, 9]))
  rng = np.random.default_rng(0)
  figure = plots.class_maps_figure(
      rng.uniform(size=(3, 32, 32, 3)), rng.uniform(0, 50, (3, 128, 128)),
      rng.uniform(0, 50, (3, 128, 128)), titles, [False, True, False],
      'Class activation maps ' * 20)
  try:
    assert not _overlaps(figure)
  finally:
    plt.close(figure)
  # The check sees overlaps: two long titles over narrow neighbouring panels.
  figure, axes = plt.subplots(1, 2, figsize=(3, 2))
  try:
    for ax in axes:
      ax.set_title('map of predicted: automobile (1.00)')
    assert _overlaps(figure)
  finally:
    plt.close(figure)


def test_the_pngs_are_drawn(trained_workdir, tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  run = trained_run.load(trained_workdir)
  images, labels = visualize.pick_examples(run, 'test', 4)
  assert len(images) == 4
  saved = []
  save = plots._save  # pylint: disable=protected-access

  def save_and_check(figure, path):
    saved.append(path)
    if path.endswith('maps.png'):  # The figure as drawn, checked as written.
      assert not _overlaps(figure)
      maps = [ax.get_images()[-1].get_array() for ax in figure.axes
              if len(ax.get_images()) == 2]
      # 4 rows of 2 maps, upsampled from 2x2 to 128x128 for drawing.
      assert [m.shape for m in maps] == [(128, 128)] * 8
    save(figure, path)

  monkeypatch.setattr(plots, '_save', save_and_check)
  visualize.draw_class_maps(run, images, labels, str(tmp_path / 'maps.png'),
                            'test')
  plots.training_curves(visualize.read_metrics(trained_workdir), 'tiny run',
                        str(tmp_path / 'curves.png'))
  assert len(saved) == 2
  for name, rows_of_pictures in (('maps.png', 4), ('curves.png', 1)):
    with Image.open(tmp_path / name) as image:
      pixels = np.asarray(image.convert('L'), np.float32)
    assert pixels.shape[0] > 200 * rows_of_pictures * 0.8
    assert pixels.std() > 20  # Not a blank canvas.
