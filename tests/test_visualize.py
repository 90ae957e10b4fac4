"""Class activation maps: what they are, and the PNG files drawn from them."""

import numpy as np
import pytest

from nin_jax import errors
from nin_jax import input_pipeline
from nin_jax import plots
from nin_jax import trained_run
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


def test_the_pngs_are_drawn(trained_workdir, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  run = trained_run.load(trained_workdir)
  images, labels = visualize.pick_examples(run, 'test', 4)
  assert len(images) == 4
  visualize.draw_class_maps(run, images, labels, str(tmp_path / 'maps.png'),
                            'test')
  plots.training_curves(visualize.read_metrics(trained_workdir), 'tiny run',
                        str(tmp_path / 'curves.png'))
  for name, rows_of_pictures in (('maps.png', 4), ('curves.png', 1)):
    with Image.open(tmp_path / name) as image:
      pixels = np.asarray(image.convert('L'), np.float32)
    assert pixels.shape[0] > 200 * rows_of_pictures * 0.8
    assert pixels.std() > 20  # Not a blank canvas.
