"""predict: image files of any size; bad files reported, the rest predicted."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from nin_jax.data import input_pipeline
from nin_jax import predict
from nin_jax.training import trained_run


def _digit_files(directory, count=3):
  """Test digits written as 64x64 PNG/JPEG files (pixels scaled to 0-255)."""
  images, labels = input_pipeline._digits_arrays('test')
  paths = []
  for i in range(count):
    pixels = (images[i, ..., 0] * (255 / 16)).round().astype(np.uint8)
    path = directory / f'digit{i}.{"png" if i % 2 == 0 else "jpg"}'
    Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST).save(path)
    paths.append(str(path))
  return paths, images[:count], labels[:count]


def test_an_image_at_the_dataset_size_is_the_dataset_image(tmp_path):
  images, _ = input_pipeline._digits_arrays('test')
  pixels = (images[0, ..., 0] * (255 / 16)).round().astype(np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'exact.png')
  loaded = predict.load_image(str(tmp_path / 'exact.png'), (8, 8, 1), 16)
  np.testing.assert_array_equal(loaded, images[0])  # Back to 0..16 exactly.
  rgb = predict.load_image(str(tmp_path / 'exact.png'), (32, 32, 3), 255)
  assert rgb.shape == (32, 32, 3) and rgb.max() <= 255


def test_bad_files_among_good_ones(trained_workdir, tmp_path):
  run = trained_run.load(trained_workdir)
  good, _, _ = _digit_files(tmp_path)
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  paths = [good[0], str(tmp_path / 'notes.txt'), good[1],
           str(tmp_path / 'missing.png'), str(tmp_path / 'cut.png'),
           str(tmp_path), good[2]]
  results = predict.predict_files(run, paths, top_k=3)
  assert [r['file'] for r in results] == paths
  errors = [r.get('error', '') for r in results]
  assert 'not an image' in errors[1] and 'no such file' in errors[3]
  assert errors[4] and 'directory' in errors[5]
  expected = np.asarray(run.probabilities(np.stack([
      predict.load_image(p, (8, 8, 1), 16) for p in good])))
  for result, probs in zip([results[0], results[2], results[6]], expected):
    top = result['top_k']
    assert len(top) == 3
    assert top[0]['class'] == int(np.argmax(probs))
    np.testing.assert_allclose([t['probability'] for t in top],
                               np.sort(probs)[::-1][:3], rtol=1e-5)


def test_command_exit_status_and_json(trained_workdir, tmp_path):
  good, _, _ = _digit_files(tmp_path, count=2)
  (tmp_path / 'bad.jpg').write_text('nope')
  done = subprocess.run(
      [sys.executable, '-m', 'nin_jax.predict', f'--workdir={trained_workdir}',
       '--json', '--top_k=2', good[0], str(tmp_path / 'bad.jpg'), good[1]],
      capture_output=True, text=True)
  assert done.returncode == 2  # One file failed ...
  rows = [json.loads(line) for line in done.stdout.splitlines()]
  assert [len(r.get('top_k', [])) for r in rows] == [2, 0, 2]  # ... not all.
  assert 'error' in rows[1]
