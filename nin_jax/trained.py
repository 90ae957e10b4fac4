"""A trained run, loaded back from its workdir: the model as it was trained.

Everything inference needs is in the workdir: `config.json` (the model),
`dataset.json` (class names and image shape), `preprocessing.npz` (the
fitted pixel transform) and the Orbax checkpoints (the weights). The
evaluate, predict, visualize and export commands all start here.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nin_jax import checkpointing
from nin_jax import config_checks
from nin_jax import errors
from nin_jax import input_pipeline
from nin_jax import models
from nin_jax import preprocessing


@dataclasses.dataclass
class TrainedRun:
  """A checkpoint of a run with what it takes to feed it raw images."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  info: input_pipeline.DatasetInfo
  prep: preprocessing.Preprocessing
  model: models.NiN
  variables: dict[str, Any]

  @property
  def pixel_max(self) -> int:
    """The largest raw pixel value the model was trained on (255 or 16)."""
    return input_pipeline.pixel_max(self.info.name)

  def preprocess(self, raw_images: Any) -> jax.Array:
    """Raw pixels (batch, H, W, C), as the dataset stores them -> model input."""
    return self.prep.apply_jax(jnp.asarray(raw_images))

  def logits(self, images: Any) -> jax.Array:
    """Logits of preprocessed images, in evaluation mode."""
    return _apply(self.model, self.variables, jnp.asarray(images))

  def probabilities(self, raw_images: Any) -> jax.Array:
    """Class probabilities (float32) of raw images; traceable, for export."""
    logits = self.logits(self.preprocess(raw_images))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  def dataset(self, data_dir: str | None = None) -> input_pipeline.Dataset:
    """The run's dataset, read from `data_dir` if given (the run's config
    is left as it is)."""
    config = self.config
    if data_dir is not None:
      config = ml_collections.ConfigDict(config.to_dict())
      config.data_dir = data_dir
    return input_pipeline.Dataset(config)

  def logits_and_class_maps(self, images: Any) -> tuple[jax.Array, jax.Array]:
    """Logits and the last mlpconv's class maps (batch, h, w, classes)."""
    return _apply_with_maps(self.model, self.variables, jnp.asarray(images))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: models.NiN, variables: Any, images: jax.Array) -> jax.Array:
  return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_maps(model: models.NiN, variables: Any, images: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  logits, state = model.apply(variables, images, train=False,
                              mutable=['intermediates'])
  (maps,) = state['intermediates']['class_maps']
  return logits, maps


def _read_json(workdir: str, name: str) -> Any:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise errors.WorkdirError(
        f'{workdir} is not a training workdir (it has no {name}): pass the '
        '--workdir of a run of python -m nin_jax.main.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def load(workdir: str, step: int | None = None) -> TrainedRun:
  """The run in `workdir` at checkpoint `step` (default: the newest)."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.WorkdirError(f'No workdir {workdir}: pass the --workdir of a '
                              'run of python -m nin_jax.main.')
  saved = config_checks.saved_config(workdir)
  if saved is None:
    raise errors.WorkdirError(
        f'{workdir} is not a training workdir (it has no readable '
        'config.json): pass the --workdir of a run of python -m nin_jax.main.')
  config = ml_collections.ConfigDict(saved)
  fields = _read_json(workdir, 'dataset.json')
  info = input_pipeline.DatasetInfo(**{
      **fields, 'class_names': tuple(fields['class_names']),
      'image_shape': tuple(fields['image_shape'])})
  prep = preprocessing.recorded(workdir)
  if prep is None:
    raise errors.WorkdirError(
        f'{workdir} has no {preprocessing.RECORD_FILE}: the run did not get '
        'far enough to record its preprocessing.')
  step, arrays, _ = checkpointing.read_checkpoint(workdir, step)
  saved = arrays['train_state']
  variables = {'params': saved['params']}
  if saved.get('batch_stats'):
    variables['batch_stats'] = saved['batch_stats']
  return TrainedRun(workdir=workdir, step=step, config=config, info=info,
                    prep=prep, model=models.create_model(config),
                    variables=jax.tree.map(jnp.asarray, variables))


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k most probable classes per row, most probable first."""
  k = min(k, probabilities.shape[-1])
  return np.argsort(-probabilities, axis=-1, kind='stable')[..., :k]
