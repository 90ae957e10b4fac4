"""A trained NiN as one self-contained file: serialized StableHLO.

  python -m nin_jax.export --workdir=DIR --out=PATH [--step=N]
      [--format=stablehlo] [--platforms=cpu,cuda,tpu]

The exported function takes a batch of raw images exactly as the dataset
stores them (uint8, (batch, H, W, C), any batch size; pixel values 0-255,
or 0-16 for the digits) and returns class probabilities (float32, (batch,
classes)). The training-time preprocessing and the weights are inside it,
so a consumer needs only `jax` (`jax.export.deserialize`), not this
project. PATH.json, written beside it, holds the class names, the input
shape and the checkpoint step. ONNX and SavedModel are not offered yet.
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

FORMATS = ('stablehlo',)
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def serving_function(run: trained.TrainedRun):
  """raw uint8 images -> probabilities, with weights and transform inside."""
  variables = jax.tree.map(jnp.asarray, run.variables)

  def probabilities(raw_images: jax.Array) -> jax.Array:
    logits = run.model.apply(variables, run.preprocess(raw_images),
                             train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probabilities


def export_stablehlo(run: trained.TrainedRun, platforms: tuple[str, ...]
                     ) -> jax.export.Exported:
  """The serving function lowered for `platforms`, batch size symbolic."""
  height, width, channels = run.info.image_shape
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8)
  return jax.export.export(jax.jit(serving_function(run)),
                           platforms=platforms)(spec)


def metadata(run: trained.TrainedRun, platforms: tuple[str, ...]
             ) -> dict[str, Any]:
  return {
      'format': 'stablehlo (jax.export serialized)',
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


def write(run: trained.TrainedRun, out: str,
          platforms: tuple[str, ...] = ('cpu', 'cuda', 'tpu')) -> None:
  """Writes `out` (the serialized function) and `out`.json."""
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise errors.ConfigError(f'Unknown platforms {unknown}; choose from '
                             f'{PLATFORMS}.')
  exported = export_stablehlo(run, platforms)
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  with open(out + '.tmp', 'wb') as f:
    f.write(exported.serialize())
  os.replace(out + '.tmp', out)
  with open(out + '.json', 'w', encoding='utf-8') as f:
    json.dump(metadata(run, platforms), f, indent=2)


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
  write(run, FLAGS.out, tuple(FLAGS.platforms))
  print(f'Wrote {FLAGS.out} ({os.path.getsize(FLAGS.out) / 2**20:.1f} MB, '
        f'step {run.step}, {", ".join(FLAGS.platforms)}) and {FLAGS.out}.json')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
