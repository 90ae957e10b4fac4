"""export: StableHLO and SavedModel that run without nin_jax, same answers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nin_jax import export
from nin_jax import input_pipeline
from nin_jax import trained

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
  run = trained.load(trained_workdir)
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
