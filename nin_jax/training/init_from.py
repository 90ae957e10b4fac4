"""config.init_from: a new run that starts from trained parameters.

The source is a training workdir or a published model, read as
trained_run.py reads it for inference. Every parameter must have the
shape this config's model gives it, except in the layers whose shapes
follow the class count (class_layers): those start fresh when the source's
classes are others (another count, or other names). A resumed run ignores
config.init_from: its checkpoint holds the parameters.
"""

import os
import re
from typing import Any

from absl import logging
from flax import traverse_util
import numpy as np

from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.training import checkpointing
from nin_jax.training import steps
from nin_jax.training import trained_run


def initialized(init_from: str, state: steps.TrainState,
                class_names: tuple[str, ...]) -> steps.TrainState:
  """`state` with the parameters (and BatchNorm statistics) of config.init_from;
  the optimizer state fits them as it is (it depends on shapes only). The
  class layers start fresh where the source's classes are not
  `class_names`."""
  variables = initial_variables(
      init_from, steps.model_variables(state, state.params), class_names)
  return state.replace(params=variables['params'],
                       batch_stats=variables.get('batch_stats', {}))


def class_layers(params: dict[str, Any]) -> tuple[str, ...]:
  """Layers whose shapes follow the class count, found in the tree.

  The class-map layer is the last 1x1 layer (mlpK) of the last mlpconv block
  (`mlpconv3/mlp2` at the default depth), with its BatchNorm (bnK) if any;
  the 'fc' heads add `fc`.
  """
  def last(names, prefix):
    return max((n for n in names if re.fullmatch(prefix + r'\d+', n)),
               key=lambda n: int(n[len(prefix):]))
  block = last(params, 'mlpconv')
  layer = last(params[block], 'mlp')
  layers = [f'{block}/{layer}']
  norm = 'bn' + layer[len('mlp'):]
  if norm in params[block]:
    layers.append(f'{block}/{norm}')
  if 'fc' in params:
    layers.append('fc')
  return tuple(layers)


def transfer(loaded: dict[str, Any], fresh: dict[str, Any], source: str,
             other_classes: bool = False
             ) -> tuple[dict[str, Any], tuple[str, ...]]:
  """`loaded` variables in place of `fresh` ones, and the layers kept fresh.

  Every array must have its fresh shape, except in the class layers
  (class_layers): a class layer whose shapes differ (another class count)
  keeps its fresh initialization, as do all of them for `other_classes`
  (as many classes, but others). Anything else is another architecture: a
  ConfigError naming the first array (in path order) that differs.
  """
  fresh_flat = traverse_util.flatten_dict(fresh, sep='/')
  loaded_flat = traverse_util.flatten_dict(loaded, sep='/')
  per_class = set(class_layers(fresh['params']))

  def layer(path: str) -> str:  # params/mlpconv3/mlp2/kernel: mlpconv3/mlp2
    return path.split('/', 1)[1].rsplit('/', 1)[0]

  def mismatch(detail: str) -> errors.ConfigError:
    return errors.ConfigError(
        f'config.init_from={source!r} does not fit this config\'s model: '
        f'{detail}. Only the class count may differ (its layers then start '
        'fresh): use the config.model of the source (in its config.json) '
        'and images of the same channels.')

  kept_fresh = set(per_class) if other_classes else set()
  # In path order: the same first difference whatever order the trees were
  # built in.
  for path, shape, wanted in checkpointing.shape_differences(loaded, fresh):
    if shape is None:
      raise mismatch(f'{path} {wanted} is not in the source')
    if wanted is None:
      raise mismatch(f'the source has {path} {shape}, this model not')
    if layer(path) not in per_class:
      raise mismatch(f'{path} is {shape} there and {wanted} here')
    kept_fresh.add(layer(path))
  merged = {path: value if layer(path) in kept_fresh
            else np.asarray(loaded_flat[path], value.dtype)
            for path, value in fresh_flat.items()}
  return (traverse_util.unflatten_dict(merged, sep='/'),
          tuple(sorted(kept_fresh)))


def find_source(init_from: str) -> str:
  """config.init_from's directory: a workdir, or a published model's."""
  if storage.is_remote(init_from):
    return storage.location(init_from, 'config.init_from')
  if not trained_run.by_name(init_from) and os.path.isdir(
      workdir_files.checkpoints_dir(init_from)):
    return os.path.abspath(init_from)
  try:
    return trained_run.find_published(init_from)
  except errors.WorkdirError as e:
    raise errors.ConfigError(
        f'config.init_from={init_from!r} is neither a training workdir nor a '
        f'published model. {e}') from None


def _same_classes(there: tuple[str, ...], here: tuple[str, ...]) -> bool:
  """The same classes in the same order, by name ('Cat' is 'cat')."""
  return [n.strip().casefold() for n in there] == [
      n.strip().casefold() for n in here]


def _some(names: tuple[str, ...], shown: int = 5) -> str:
  return ', '.join(names[:shown]) + (', ...' if len(names) > shown else '')


def initial_variables(init_from: str, fresh: dict[str, Any],
                      class_names: tuple[str, ...]) -> dict[str, Any]:
  """The variables a run with config.init_from starts with (fresh: the
  model's initialization, for the shapes and the class layers; class_names:
  the new run's classes). The class layers start fresh where the source's
  classes (its dataset.json) are others: another count, or other names."""
  directory = find_source(init_from)
  step, loaded = trained_run.read_variables(directory)
  there = trained_run.dataset_info(
      workdir_files.Workdir(directory), trained_run.DAMAGED_PUBLISHED if trained_run.is_published(
          directory) else workdir_files.DAMAGED_RUN_FILE).class_names
  renamed = (len(there) == len(class_names)
             and not _same_classes(there, class_names))
  variables, kept_fresh = transfer(loaded, fresh, init_from,
                                   other_classes=renamed)
  where = init_from if directory == init_from else f'{init_from} ({directory})'
  if renamed:
    logging.info('Initialized from %s, step %d, except %s, whose classes '
                 'are others (there: %s; here: %s): they start fresh.',
                 where, step, ', '.join(kept_fresh), _some(there),
                 _some(class_names))
  elif kept_fresh:
    kernel = f'params/{class_layers(fresh["params"])[0]}/kernel'
    classes = [np.shape(traverse_util.flatten_dict(v, sep='/')[kernel])[-1]
               for v in (loaded, fresh)]
    logging.info('Initialized from %s, step %d, except %s, whose shapes '
                 'differ (%d classes there, %d here): they start fresh.',
                 where, step, ', '.join(kept_fresh), *classes)
  else:
    logging.info('Initialized from %s, step %d: every parameter (the same '
                 'classes).', where, step)
  return variables
