"""export: StableHLO, SavedModel and ONNX run without nin_jax, same answers."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from nin_jax.data import input_pipeline
from nin_jax import export
from nin_jax.training import trained_run

# What a consumer runs, with jax or TensorFlow and numpy only (the README
# shows the same code).
CONSUMERS = {
    'stablehlo': '''
import json, sys
import jax, numpy as np
with open(sys.argv[1], 'rb') as f:
  exported = jax.export.deserialize(bytearray(f.read()))
serve = lambda images: np.asarray(exported.call(images))
''',
    'savedmodel': '''
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = lambda images: model.serve(tf.constant(images)).numpy()
''',
    'onnx': '''
import json, sys
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])
serve = lambda images: session.run(['probabilities'], {'images': images})[0]
meta = session.get_modelmeta().custom_metadata_map
assert json.loads(meta['class_names']) == json.load(
    open(sys.argv[1] + '.json'))['class_names']
''',
}
CONSUMER_END = '''
for name in sys.argv[2:]:
  np.save(name + '.out.npy', serve(np.load(name)))
assert 'nin_jax' not in sys.modules
print(json.load(open(sys.argv[1] + '.json'))['class_names'])
'''


@pytest.mark.parametrize('export_format', export.FORMATS)
def test_export_in_a_fresh_process_matches_the_trainer(
    export_format, trained_workdir, tmp_path):
  if export_format == 'onnx':  # An optional extra: pip install -e ".[export]".
    pytest.importorskip('jax2onnx')
    pytest.importorskip('onnxruntime')
  run = trained_run.load(trained_workdir)
  out = str(tmp_path / 'nin.export')
  export.write(run, out, export_format)
  meta = json.loads((tmp_path / 'nin.export.json').read_text())
  assert meta['input']['shape'] == ['batch', 8, 8, 1]
  assert meta['checkpoint_step'] == 4
  images, _ = input_pipeline._digits_arrays('test')
  batches = {'one.npy': images[:1], 'seven.npy': images[1:8]}
  for name, batch in batches.items():
    np.save(tmp_path / name, batch)
  (tmp_path / 'consumer.py').write_text(CONSUMERS[export_format]
                                        + CONSUMER_END)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  done = subprocess.run([sys.executable, 'consumer.py', out, *batches],
                        cwd=tmp_path, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == str(list(run.info.class_names))
  for name, batch in batches.items():
    got = np.load(tmp_path / (name + '.out.npy'))
    expected = np.asarray(run.probabilities(batch))
    assert got.shape == expected.shape == (len(batch), 10)
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_onnx_without_its_extra_names_the_install_line(trained_workdir,
                                                       tmp_path, monkeypatch):
  real_import = __import__

  def no_onnx(name, *args, **kwargs):
    if name in ('jax2onnx', 'onnxruntime'):
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr('builtins.__import__', no_onnx)
  run = trained_run.load(trained_workdir)
  with pytest.raises(export.errors.DependencyError,
                     match=re.escape('pip install -e ".[export]"')):
    export.write(run, str(tmp_path / 'nin.onnx'), 'onnx')
  assert not list(tmp_path.iterdir())


def test_pools_padded_for_onnx_are_the_same_function():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)) - 1.0  # Negatives.
  window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
  expected = (nn.max_pool(x, window, strides, padding=padding),
              nn.avg_pool(x, window, strides, padding=padding,
                          count_include_pad=True))
  with export._explicit_pool_padding():  # pylint: disable=protected-access
    assert nn.max_pool.__name__ == 'padded_max_pool'
    got = (nn.max_pool(x, window, strides, padding=padding),
           nn.avg_pool(x, window, strides, padding=padding,
                       count_include_pad=True))
  assert nn.max_pool.__name__ == 'max_pool'  # Restored.
  for a, b in zip(got, expected):
    assert a.shape == b.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(a, b)


def test_an_onnx_model_that_computes_something_else_is_refused(
    trained_workdir):
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  older = trained_run.load(trained_workdir, step=2)
  model_bytes = export.export_onnx(older).SerializeToString()
  assert export.check_onnx(older, model_bytes) <= export.TOLERANCE
  with pytest.raises(export.errors.ExportError, match='nothing was written'):
    export.check_onnx(trained_run.load(trained_workdir), model_bytes)
