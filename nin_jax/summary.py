"""Per-layer parameters and multiply-adds, and the NiN-vs-AlexNet table.

  python -m nin_jax.summary [--config=nin_jax/configs/NAME.py]
      [--config.FIELD=VALUE ...] [--json=FILE]

Every number is computed from a real linen module traced with abstract
shapes (nothing is allocated, no data is read): output shapes from the
modules' outputs, parameters from their variables, and multiply-adds of a
convolution or dense layer as (output positions) x (kernel size), which
counts grouped convolutions right. Pooling, ReLU and BatchNorm are not
multiply-adds and count 0. AlexNet (Krizhevsky et al. 2012, the two-GPU
model with grouped conv2/4/5 on 227x227 inputs) is a linen module here too,
so both columns come from the same code.
"""

import dataclasses
import json
import math
from typing import Any, Sequence

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nin_jax import cli
from nin_jax.data import input_pipeline
from nin_jax.model import nin
from nin_jax.training import config_checks

FLAGS = flags.FLAGS


_COUNTED = (nn.Conv, nn.Dense, nn.BatchNorm)


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str  # Module path, e.g. 'mlpconv1/conv'.
  kind: str  # e.g. 'conv 5x5', '1x1 (dense)', 'dense', 'batchnorm'.
  output_shape: tuple[int, ...]  # Without the batch axis.
  params: int
  macs: int  # Multiply-adds for one example.


class AlexNet(nn.Module):
  """AlexNet as published: 227x227x3 in, 5 convs (2, 4, 5 in two groups as
  on the two GPUs), 3 max pools, fully connected 4096-4096-classes."""
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    pool = lambda y: nn.max_pool(y, (3, 3), (2, 2))
    x = pool(nn.relu(nn.Conv(96, (11, 11), 4, 'VALID', name='conv1')(x)))
    x = pool(nn.relu(nn.Conv(256, (5, 5), 1, 2, feature_group_count=2,
                             name='conv2')(x)))
    x = nn.relu(nn.Conv(384, (3, 3), 1, 1, name='conv3')(x))
    x = nn.relu(nn.Conv(384, (3, 3), 1, 1, feature_group_count=2,
                        name='conv4')(x))
    x = pool(nn.relu(nn.Conv(256, (3, 3), 1, 1, feature_group_count=2,
                             name='conv5')(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(4096, name='fc6')(x))
    x = nn.relu(nn.Dense(4096, name='fc7')(x))
    return nn.Dense(self.num_classes, name='fc8')(x)


ALEXNET_INPUT = (227, 227, 3)


def layers(model: nn.Module, image_shape: Sequence[int]) -> list[Layer]:
  """Every conv, dense and BatchNorm layer of `model`, in call order."""
  images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)

  def init(images):
    return model.init({'params': jax.random.key(0)}, images, train=False,
                      capture_intermediates=lambda module, method: (
                          method == '__call__' and isinstance(module, _COUNTED)))

  variables = jax.eval_shape(init, images)
  rows = []

  def visit(intermediates, params, path):
    for name, value in intermediates.items():
      if name == '__call__':
        rows.append(_layer(path, value[0], params))
      elif isinstance(value, dict) or hasattr(value, 'items'):
        visit(value, params.get(name, {}) if params else {}, path + (name,))

  visit(variables['intermediates'], variables['params'], ())
  return rows


def _layer(path: tuple[str, ...], output: Any, params: Any) -> Layer:
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  kernel = params.get('kernel') if params else None
  positions = math.prod(output.shape[1:-1])  # Output pixels (1 for dense).
  if kernel is None:
    kind, macs = 'batchnorm', 0
  else:
    macs = positions * math.prod(kernel.shape)
    if len(kernel.shape) == 4:
      kind = f'conv {kernel.shape[0]}x{kernel.shape[1]}'
    else:
      kind = '1x1 (dense)' if positions > 1 else 'dense'
  return Layer('/'.join(path), kind, tuple(output.shape[1:]), count, macs)


def total_params(model: nn.Module, image_shape: Sequence[int]) -> int:
  """All parameters, counted from the variables themselves (a cross-check)."""
  images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init({'params': jax.random.key(0)}, x, train=False),
      images)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables['params']))


def fc_params(rows: Sequence[Layer]) -> int:
  """Parameters in fully connected layers (dense on flattened features)."""
  return sum(r.params for r in rows if r.kind == 'dense')


def layer_table(rows: Sequence[Layer]) -> str:
  lines = ['| layer | kind | output | parameters | multiply-adds |',
           '|---|---|---|---:|---:|']
  for r in rows:
    lines.append(f'| {r.name} | {r.kind} | {"x".join(map(str, r.output_shape))}'
                 f' | {r.params:,} | {r.macs / 1e6:,.2f} M |')
  lines.append(f'| **total** | | | **{sum(r.params for r in rows):,}** | '
               f'**{sum(r.macs for r in rows) / 1e6:,.2f} M** |')
  return '\n'.join(lines)


def comparison(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The configured NiN, the same NiN with an FC head, and AlexNet."""
  shape = input_pipeline.image_shape(config)
  entries = [(f'NiN, {config.model.head} head (this config)',
              nin.create_model(config), shape)]
  if config.model.head == 'gap':  # Otherwise it already has an FC head.
    fc_config = ml_collections.ConfigDict(config.to_dict())
    fc_config.model.head = 'fc'
    entries.append(('NiN, fully connected head',
                    nin.create_model(fc_config), shape))
  entries.append(('AlexNet (ImageNet, 1000 classes)', AlexNet(), ALEXNET_INPUT))
  result = []
  for name, model, image_shape in entries:
    rows = layers(model, image_shape)
    params = sum(r.params for r in rows)
    result.append({
        'model': name, 'input': 'x'.join(map(str, image_shape)),
        'params': params, 'macs': sum(r.macs for r in rows),
        'fc_params': fc_params(rows),
        'fc_share': fc_params(rows) / params if params else 0.0,
        'layers': [dataclasses.asdict(r) for r in rows]})
  return result


def comparison_table(entries: Sequence[dict[str, Any]]) -> str:
  lines = ['| model | input | parameters | multiply-adds | in fully connected '
           'layers |', '|---|---|---:|---:|---:|']
  for e in entries:
    lines.append(f'| {e["model"]} | {e["input"]} | {e["params"]:,} | '
                 f'{e["macs"] / 1e6:,.2f} M | {e["fc_params"]:,} '
                 f'({100 * e["fc_share"]:.1f}%) |')
  return '\n'.join(lines)


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_config_flag('The NiN to describe (default: CIFAR-10).')
  flags.DEFINE_string('json', None, 'Also write the tables as JSON here.')


def render(config: ml_collections.ConfigDict
           ) -> tuple[str, list[dict[str, Any]]]:
  """The printed report, and the entries it was made from."""
  entries = comparison(config)
  ours = entries[0]
  rows = [Layer(**{**r, 'output_shape': tuple(r['output_shape'])})
          for r in ours['layers']]
  text = '\n'.join([
      f'{config.dataset} NiN, per layer (one {ours["input"]} image):', '',
      layer_table(rows), '', 'Against a fully connected head and AlexNet:', '',
      comparison_table(entries)])
  return text, entries


def main(argv: list[str]) -> None:
  cli.check_command_line(argv)
  config_checks.validate(FLAGS.config)
  text, entries = render(FLAGS.config)
  print(text)
  if FLAGS.json:
    cli.write_output(FLAGS.json, json.dumps(entries, indent=2), flag='json')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
