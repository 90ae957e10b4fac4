"""A trained NiN outside the trainer: serialized StableHLO or a SavedModel.

  python -m nin_jax.export --workdir=DIR --out=PATH [--step=N]
      [--format=stablehlo|savedmodel] [--platforms=cpu,cuda,tpu]

The exported function takes a batch of raw images exactly as the dataset
stores them (uint8, (batch, H, W, C), any batch size; pixel values 0-255,
or 0-16 for the digits) and returns class probabilities (float32, (batch,
classes)). The training-time preprocessing and the weights are inside it,
so a consumer needs only `jax` (`jax.export.deserialize`) or only
TensorFlow (`tf.saved_model.load`), not this project. PATH.json, written
beside it, holds the class names, the input shape and the checkpoint step.
ONNX is not offered yet.
"""

import json
import os
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp

from nin_jax import cli
from nin_jax import errors
from nin_jax import trained

FLAGS = flags.FLAGS

FORMATS = ('stablehlo', 'savedmodel')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def export_stablehlo(run: trained.TrainedRun, platforms: tuple[str, ...]
                     ) -> jax.export.Exported:
  """The serving function lowered for `platforms`, batch size symbolic."""
  height, width, channels = run.info.image_shape
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8)
  return jax.export.export(jax.jit(run.probabilities),
                           platforms=platforms)(spec)


def write_savedmodel(run: trained.TrainedRun, out: str,
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


def metadata(run: trained.TrainedRun, export_format: str,
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
      'platforms': list(platforms),
  }


def write(run: trained.TrainedRun, out: str, export_format: str = 'stablehlo',
          platforms: tuple[str, ...] = ('cpu', 'cuda', 'tpu')) -> None:
  """Writes `out` (a file, or a SavedModel directory) and `out`.json."""
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise errors.ConfigError(f'Unknown platforms {unknown}; choose from '
                             f'{PLATFORMS}.')
  if export_format not in FORMATS:
    raise errors.ConfigError(f'Unknown export format {export_format!r}; '
                             f'choose from {FORMATS}.')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if export_format == 'stablehlo':
    exported = export_stablehlo(run, platforms)
    with open(out + '.tmp', 'wb') as f:
      f.write(exported.serialize())
    os.replace(out + '.tmp', out)
  else:
    write_savedmodel(run, out, platforms)
  with open(out + '.json', 'w', encoding='utf-8') as f:
    json.dump(metadata(run, export_format, platforms), f, indent=2)


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
                    'Platforms the exported function can run on.')


def main(argv: list[str]) -> None:
  cli.check_command_line(argv)
  run = trained.load(FLAGS.workdir, FLAGS.step)
  write(run, FLAGS.out, FLAGS.format, tuple(FLAGS.platforms))
  print(f'Wrote {FLAGS.out} ({_size(FLAGS.out) / 2**20:.1f} MB, '
        f'step {run.step}, {", ".join(FLAGS.platforms)}) and {FLAGS.out}.json')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
