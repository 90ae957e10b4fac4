"""A trained NiN outside the trainer: StableHLO, a SavedModel or ONNX.

  python -m nin_jax.export --workdir=DIR --out=PATH [--step=N]
      [--format=stablehlo|savedmodel|onnx] [--platforms=cpu,cuda,tpu]
  python -m nin_jax.export --pretrained=NAME --out=PATH ...

The exported function takes a batch of raw images exactly as the dataset
stores them (uint8, (batch, H, W, C), any batch size; pixel values 0-255,
or 0-16 for the digits) and returns class probabilities (float32, (batch,
classes)). The training-time preprocessing and the weights are inside it,
so a consumer needs only `jax` (`jax.export.deserialize`), only
TensorFlow (`tf.saved_model.load`) or only ONNX Runtime, not this project.
PATH.json, written beside it, holds the class names, the input shape and the
checkpoint step (an ONNX file also carries them as metadata).

ONNX goes through `jax2onnx`, an optional extra
(`pip install -e ".[export]"`), and is checked against JAX with
ONNX Runtime before it is written.
"""

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Any

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nin_jax import cli
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.training import trained_run

FLAGS = flags.FLAGS

FORMATS = ('stablehlo', 'savedmodel', 'onnx')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
EXPORT_EXTRA = 'pip install -e ".[export]" (in a clone of nin_jax)'
# ONNX Runtime has run opset 18 since version 1.14.
ONNX_OPSET = 18
# Largest difference from JAX's probabilities that an export may show.
TOLERANCE = 1e-4


def export_stablehlo(run: trained_run.TrainedRun, platforms: tuple[str, ...]
                     ) -> jax.export.Exported:
  """The serving function lowered for `platforms`, batch size symbolic."""
  height, width, channels = run.info.image_shape
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8)
  return jax.export.export(jax.jit(run.probabilities),
                           platforms=platforms)(spec)


def write_savedmodel(run: trained_run.TrainedRun, out: str,
                     platforms: tuple[str, ...]) -> None:
  """A TensorFlow SavedModel whose `serve` (and serving_default signature)
  is the serving function, converted by jax2tf (StableHLO inside an
  XlaCallModule op: TensorFlow and TF Serving run it, TFLite does not)."""
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width, channels = run.info.image_shape
  converted = jax2tf.convert(
      run.probabilities,
      polymorphic_shapes=[f'(batch, {height}, {width}, {channels})'],
      native_serialization_platforms=platforms)
  module = tf.Module()
  module.serve = tf.function(
      converted, autograph=False, input_signature=[tf.TensorSpec(
          (None, height, width, channels), tf.uint8, name='images')])
  tf.saved_model.save(module, out,
                      signatures={'serving_default': module.serve})


def _onnx_modules():
  """jax2onnx, onnx and onnxruntime, or one error naming the extra."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.DependencyError(
        f'--format=onnx needs jax2onnx and onnxruntime ({e.name} is not '
        f'installed): {EXPORT_EXTRA}') from None
  return jax2onnx, onnx, onnxruntime


@contextlib.contextmanager
def _explicit_pool_padding():
  """Pools with explicit padding, written as a pad and a VALID pool.

  While it traces, jax2onnx (0.17.1) swaps flax's max_pool and avg_pool for
  versions that take their arguments by keyword only and treat an explicit
  padding as VALID: the NiN's 3x3/2 pools with padding 1 would shrink an
  8x8 map to 3x3, not 4x4. Padding first (-inf for max; 0 for average, whose
  padding counts) is the same function in JAX and converts exactly. Entered
  inside the traced function, so it wraps jax2onnx's versions.
  """
  max_pool, avg_pool = nn.max_pool, nn.avg_pool

  def pad(x, padding, value):
    return jnp.pad(x, ((0, 0), *(tuple(p) for p in padding), (0, 0)),
                   constant_values=value)

  def padded_max_pool(x, window_shape, strides=None, padding='VALID'):
    if not isinstance(padding, str):
      x, padding = pad(x, padding, -jnp.inf), 'VALID'
    return max_pool(x, window_shape=tuple(window_shape), strides=strides,
                    padding=padding)

  def padded_avg_pool(x, window_shape, strides=None, padding='VALID',
                      count_include_pad=True):
    if not isinstance(padding, str):
      if not count_include_pad:
        raise NotImplementedError('ONNX export of an average pool whose '
                                  'padding does not count')
      x, padding = pad(x, padding, 0.0), 'VALID'
    return avg_pool(x, window_shape=tuple(window_shape), strides=strides,
                    padding=padding, count_include_pad=True)

  nn.max_pool, nn.avg_pool = padded_max_pool, padded_avg_pool
  try:
    yield
  finally:
    nn.max_pool, nn.avg_pool = max_pool, avg_pool


def export_onnx(run: trained_run.TrainedRun) -> Any:
  """The serving function as an ONNX model (onnx.ModelProto), batch symbolic,
  the run's metadata in its metadata_props."""
  jax2onnx, onnx, _ = _onnx_modules()
  height, width, channels = run.info.image_shape

  def serve(images):
    with _explicit_pool_padding():
      return run.probabilities(images)

  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(
      f'batch, {height}, {width}, {channels}'), jnp.uint8)
  model = jax2onnx.to_onnx(serve, [spec], model_name='nin', opset=ONNX_OPSET,
                           input_names=['images'],
                           output_names=['probabilities'])
  onnx.helper.set_model_props(model, {
      key: json.dumps(value) for key, value in
      metadata(run, 'onnx', ()).items()})
  onnx.checker.check_model(model)
  return model


def check_onnx(run: trained_run.TrainedRun, model_bytes: bytes) -> float:
  """Runs the model in ONNX Runtime on random images against JAX.

  Returns the largest probability difference; raises errors.ExportError
  above TOLERANCE or if the top class differs (a converter bug).
  """
  _, _, onnxruntime = _onnx_modules()
  session = onnxruntime.InferenceSession(
      model_bytes, providers=['CPUExecutionProvider'])
  images = np.random.default_rng(0).integers(
      0, run.pixel_max + 1, (5, *run.info.image_shape)).astype(np.uint8)
  (got,) = session.run(['probabilities'], {'images': images})
  expected = np.asarray(run.probabilities(images))
  difference = float(np.abs(got - expected).max()) if (
      got.shape == expected.shape) else float('inf')
  if difference > TOLERANCE or not np.array_equal(got.argmax(-1),
                                                  expected.argmax(-1)):
    raise errors.ExportError(
        f'The ONNX conversion does not compute the trained model: '
        f'probabilities differ by {difference:.3g} (shape {got.shape}, '
        f'expected {expected.shape}), over the {TOLERANCE} allowed; nothing '
        'was written. Export --format=stablehlo or savedmodel instead, or '
        'try another jax2onnx version.')
  return difference


def metadata(run: trained_run.TrainedRun, export_format: str,
             platforms: tuple[str, ...]) -> dict[str, Any]:
  return {
      'format': export_format,
      'input': {'dtype': 'uint8',
                'shape': ['batch', *run.info.image_shape],
                'pixel_max': run.pixel_max},
      'output': {'dtype': 'float32', 'shape': ['batch', run.info.num_classes],
                 'meaning': 'class probabilities (softmax)'},
      'class_names': list(run.info.class_names),
      'dataset': run.info.name,
      'checkpoint_step': run.step,
      'workdir': run.workdir,
      'published_model': run.published,  # Then `workdir` is its directory.
      'platforms': list(platforms),
  }


def portable(run: trained_run.TrainedRun) -> trained_run.TrainedRun:
  """The run with XLA's own convolutions and pools, the same function.

  The CPU training kernels (conv.py, winograd.py, pooling.py) are there for
  training speed; an exported model runs on other backends and converters,
  which know the plain operations best.
  """
  return dataclasses.replace(
      run, model=run.model.clone(conv_fn=None, max_pool_fn=None))


def _check_savedmodel_target(out: str) -> None:
  """A SavedModel is a directory: never written over a file, nor mixed into
  a directory that holds something else."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise errors.WorkdirError(
        f'--out={out} is a file; a SavedModel is a directory: give a new '
        'path (or that of an earlier SavedModel export, to replace it).')
  if os.path.isdir(out) and os.listdir(out) and not os.path.exists(
      os.path.join(out, 'saved_model.pb')):
    raise errors.WorkdirError(
        f'--out={out} is a directory that holds other files, not a '
        'SavedModel: give a new path for the SavedModel.')


def _write_savedmodel_safely(run: trained_run.TrainedRun, out: str,
                             platforms: tuple[str, ...]) -> None:
  """write_savedmodel, with a failure to write one WorkdirError, and a
  directory it made removed again."""
  made = not os.path.exists(out)
  try:
    write_savedmodel(run, out, platforms)
  except Exception as e:  # pylint: disable=broad-except
    if made and os.path.isdir(out):
      shutil.rmtree(out, ignore_errors=True)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if isinstance(e, errors.UserError) or not isinstance(
        e, (OSError, tf.errors.OpError)):
      raise
    reason = (e.message if isinstance(e, tf.errors.OpError)
              else e.strerror or str(e))
    raise errors.WorkdirError(
        f'Cannot write the SavedModel to {out} ({reason}): give a writable '
        '--out (or free some disk space).') from None


def write(run: trained_run.TrainedRun, out: str, export_format: str = 'stablehlo',
          platforms: tuple[str, ...] = ('cpu', 'cuda', 'tpu')) -> int:
  """Writes `out` (a file, or a SavedModel directory) and `out`.json;
  returns the size of `out` in bytes.

  An unusable `out` (a directory where a file goes, an unwritable place) is
  a WorkdirError before any work, or at the latest when it is written; a
  failed write leaves no temporary file, nor directories it made. A URL
  (gs://...) is written locally first, then uploaded.
  """
  if storage.is_remote(out):
    out = storage.location(out, '--out')
    if '/' not in out.split('://', 1)[1]:
      raise errors.WorkdirError(
          f'--out={out} is a bucket; the export is a file: give its path in '
          f'the bucket, e.g. --out={out}/nin.export.')
    with cli.output_directory(os.path.dirname(out)) as staging:
      return write(run, os.path.join(staging, os.path.basename(out)),
                   export_format, platforms)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise errors.ConfigError(f'Unknown platforms {unknown}; choose from '
                             f'{PLATFORMS}.')
  if export_format not in FORMATS:
    raise errors.ConfigError(f'Unknown export format {export_format!r}; '
                             f'choose from {FORMATS}.')
  if export_format == 'onnx':
    _onnx_modules()  # Missing converter: say so before any work.
  if export_format == 'savedmodel':
    _check_savedmodel_target(out)
  cli.check_output_file(out, directory_ok=export_format == 'savedmodel')
  run = portable(run)
  with cli.output_directory(os.path.dirname(os.path.abspath(out))):
    if export_format == 'stablehlo':
      cli.write_output(out, export_stablehlo(run, platforms).serialize())
    elif export_format == 'onnx':
      platforms = ()  # Whatever runs ONNX.
      model_bytes = export_onnx(run).SerializeToString()
      check_onnx(run, model_bytes)
      cli.write_output(out, model_bytes)
    else:
      _write_savedmodel_safely(run, out, platforms)
    cli.write_output(out + '.json', json.dumps(
        metadata(run, export_format, platforms), indent=2))
  return _size(out)


def _size(path: str) -> int:
  """Bytes in a file, or in all files below a directory."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_run_flags(reads_data=False)
  flags.DEFINE_enum('format', 'stablehlo', list(FORMATS), 'Export format.')
  flags.DEFINE_string('out', None, 'The file to write (and OUT.json).',
                      required=True)
  flags.DEFINE_list('platforms', ['cpu', 'cuda', 'tpu'],
                    'Platforms the exported function can run on (StableHLO '
                    'and SavedModel; ONNX runs wherever ONNX Runtime does).')


def main(argv: list[str]) -> None:
  cli.check_command_line(argv)
  run = cli.load_run()
  replaced = (storage.exists(FLAGS.out)
              if storage.is_remote(FLAGS.out)
              else os.path.lexists(FLAGS.out))
  size = write(run, FLAGS.out, FLAGS.format, tuple(FLAGS.platforms))
  where = ('ONNX Runtime' if FLAGS.format == 'onnx'
           else ', '.join(FLAGS.platforms))
  print(f'Wrote {FLAGS.out} ({size / 2**20:.1f} MB, '
        f'step {run.step}, {where}) and {FLAGS.out}.json'
        + (', replacing what was there' if replaced else ''))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
