"""A trained run, loaded back: the model as it was trained.

Everything inference needs is in the workdir: `config.json` (the model),
`dataset.json` (class names and image shape), `preprocessing.npz` (the
fitted pixel transform) and the Orbax checkpoints (the weights). A published
model (python -m nin_jax.publish) holds the same three files and one
checkpoint's weights, without the optimizer state, in `variables.msgpack`.
The evaluate, predict, visualize and export commands all start here; a run
with config.init_from reads its source's weights here too
(training/init_from.py).
"""

import dataclasses
import functools
import os
import re
from typing import Any

from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import nin_jax
from nin_jax.data import image_folder
from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import workdir_files
from nin_jax.model import nin
from nin_jax.training import checkpointing
from nin_jax.training import config_checks

VARIABLES_FILE = 'variables.msgpack'
INFO_FILE = 'info.json'
# Where published models are looked up by name: nin_jax/pretrained/, unless
# this variable names another directory (the tests use one of their own).
PRETRAINED_ROOT_ENV = 'NIN_JAX_PRETRAINED_ROOT'
# A published model's name: a directory name, never a path.
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


@dataclasses.dataclass
class TrainedRun:
  """A checkpoint of a run with what it takes to feed it raw images."""
  workdir: str  # Where it was loaded from: a workdir or a published model.
  step: int
  config: ml_collections.ConfigDict
  info: input_pipeline.DatasetInfo
  prep: preprocessing.Preprocessing
  model: nin.NiN
  variables: dict[str, Any]
  # A published model's directory is read, never written (it may be the
  # package's own): outputs go where the user says.
  published: bool = False

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
    is left as it is).

    For a run trained on a folder of images, `data_dir` is that folder
    (ROOT, holding train/ and test/) wherever it is now, e.g. on another
    machine than the one a published model was trained on; its decoded
    images are then cached in the default place.
    """
    fields = self.config.to_dict()
    if data_dir is not None and image_folder.is_folder(fields['dataset']):
      fields['dataset'] = image_folder.dataset_name(data_dir)
      fields['data_dir'] = None
    elif data_dir is not None:
      fields['data_dir'] = data_dir
    return input_pipeline.Dataset(ml_collections.ConfigDict(fields))

  def logits_and_class_maps(self, images: Any) -> tuple[jax.Array, jax.Array]:
    """Logits and the last mlpconv's class maps (batch, h, w, classes)."""
    return _apply_with_maps(self.model, self.variables, jnp.asarray(images))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nin.NiN, variables: Any, images: jax.Array) -> jax.Array:
  return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_maps(model: nin.NiN, variables: Any, images: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  logits, state = model.apply(variables, images, train=False,
                              mutable=['intermediates'])
  (maps,) = state['intermediates']['class_maps']
  return logits, maps


def pretrained_root() -> str:
  """The directory that published models are looked up in by name."""
  return (os.environ.get(PRETRAINED_ROOT_ENV)
          or os.path.join(os.path.dirname(os.path.abspath(nin_jax.__file__)),
                          'pretrained'))


def is_published(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, VARIABLES_FILE))


def published_names() -> list[str]:
  """Names of the published models in pretrained_root()."""
  root = pretrained_root()
  if not os.path.isdir(root):
    return []
  return sorted(name for name in os.listdir(root)
                if NAME_PATTERN.fullmatch(name)
                and is_published(os.path.join(root, name)))


def by_name(name: str) -> str | None:
  """The published model called `name` in pretrained_root(), if there is one."""
  path = os.path.join(pretrained_root(), name)
  return path if NAME_PATTERN.fullmatch(name) and is_published(path) else None


def find_published(name_or_dir: str) -> str:
  """The directory of a published model, given its name or its path.

  A name in pretrained_root() wins over a directory of the same name in the
  current directory (a workdir called `cifar10`, say).
  """
  found = by_name(name_or_dir)
  if found:
    return found
  if os.path.isdir(name_or_dir):
    if is_published(name_or_dir):
      return os.path.abspath(name_or_dir)
    if os.path.isdir(workdir_files.checkpoints_dir(name_or_dir)):
      raise errors.WorkdirError(
          f'{name_or_dir} is a training workdir, not a published model: pass '
          'it as --workdir, or publish it first (python -m nin_jax.publish '
          f'--workdir={name_or_dir} --name=NAME).')
    raise errors.WorkdirError(f'{name_or_dir} is not a published model (it '
                              f'has no {VARIABLES_FILE}).')
  names = published_names()
  listing = (f'the published ones are {", ".join(names)}' if names else
             'none is published there yet (python -m nin_jax.publish)')
  if not NAME_PATTERN.fullmatch(name_or_dir):
    raise errors.WorkdirError(
        f'No directory {name_or_dir}: give the path of a published model, or '
        f'the name of one in {pretrained_root()} ({listing}).')
  raise errors.WorkdirError(
      f'No published model {name_or_dir!r} in {pretrained_root()}; '
      f'{listing}. A published model directory can also be given by its '
      'path.')


# What to do about a damaged file of a published model.
DAMAGED_PUBLISHED = ('publish the model again (python -m nin_jax.publish '
                     '--overwrite) or restore it from a backup.')


def read_info(directory: str) -> dict[str, Any]:
  """A published model's info.json: step, source, final evaluations."""
  info = workdir_files.read_json(
      directory, INFO_FILE, 'it is not a published model (python -m '
      'nin_jax.publish writes one).', DAMAGED_PUBLISHED)
  if not isinstance(info.get('step'), int):
    raise errors.WorkdirError(
        f'{INFO_FILE} in {directory} has no checkpoint step: '
        f'{DAMAGED_PUBLISHED}')
  return info


def read_variables(directory: str, step: int | None = None
                   ) -> tuple[int, dict[str, Any]]:
  """(step, {'params', 'batch_stats' if any}) of a workdir's checkpoint
  (default: the newest readable one) or of a published model, as numpy
  arrays."""
  if is_published(directory):
    published_step = read_info(directory)['step']
    if step is not None and step != published_step:
      raise errors.WorkdirError(
          f'{directory} is a published model of step {published_step} only; '
          'leave out --step.')
    file = os.path.join(directory, VARIABLES_FILE)
    try:
      with open(file, 'rb') as f:
        variables = serialization.msgpack_restore(f.read())
      if not isinstance(variables, dict) or 'params' not in variables:
        raise ValueError('no params in it')
    except Exception as e:  # pylint: disable=broad-except
      # msgpack's errors for damaged bytes have no common base class.
      raise errors.WorkdirError(
          f'{VARIABLES_FILE} in {directory} cannot be read '
          f'({type(e).__name__}: {" ".join(str(e).split())[:200]}): '
          f'{DAMAGED_PUBLISHED}') from None
    return published_step, variables
  step, arrays, _ = checkpointing.read_checkpoint(directory, step)
  saved = arrays['train_state']
  variables = {'params': saved['params']}
  if saved.get('batch_stats'):
    variables['batch_stats'] = saved['batch_stats']
  return step, variables


def dataset_info(workdir: workdir_files.Workdir, if_damaged: str
                 ) -> input_pipeline.DatasetInfo:
  """dataset.json as a DatasetInfo; a damaged one is a WorkdirError."""
  fields = workdir.read_dataset_info(if_damaged)
  try:
    info = input_pipeline.DatasetInfo(**{
        **fields, 'class_names': tuple(fields['class_names']),
        'image_shape': tuple(fields['image_shape'])})
    valid = (len(info.image_shape) == 3
             and all(isinstance(n, int) and n > 0 for n in info.image_shape)
             and len(info.class_names) == info.num_classes > 0
             and all(isinstance(n, str) for n in info.class_names))
  except (KeyError, TypeError) as e:
    valid, detail = False, f' ({type(e).__name__}: {e})'
  else:
    detail = ''
  if not valid:
    raise errors.WorkdirError(
        f'{workdir_files.DATASET} in {workdir} does not describe a dataset '
        f'as nin_jax writes it (name, num_classes, class_names, image_shape, '
        f'...){detail}: {if_damaged}')
  return info


def load(workdir: str, step: int | None = None) -> TrainedRun:
  """The run in `workdir` at checkpoint `step` (default: the newest readable
  one), or the published model in that directory (whose one step `step`
  must then be). A damaged file is one WorkdirError that names it and what
  to do."""
  workdir = workdir_files.Workdir.reached(workdir)
  if not workdir.is_dir():
    raise errors.WorkdirError(f'No workdir {workdir}: pass the --workdir of a '
                              'run of python -m nin_jax.main.')
  published = is_published(str(workdir))
  # What to do about a damaged file: of config.json, of the others.
  if published:
    config_fix = file_fix = DAMAGED_PUBLISHED
  else:
    config_fix = workdir_files.DAMAGED_CONFIG
    file_fix = workdir_files.DAMAGED_RUN_FILE
  saved = config_checks.saved_config(workdir, config_fix)
  if saved is None:
    raise errors.WorkdirError(
        f'{workdir} is not a training workdir (it has no config.json): pass '
        'the --workdir of a run of python -m nin_jax.main.')
  config = _checked_config(saved, workdir, config_fix)
  info = dataset_info(workdir, file_fix)
  try:
    prep = preprocessing.recorded(workdir)
  except errors.WorkdirError as e:
    raise errors.WorkdirError(
        f'{e} It holds the input transform the run trained with: '
        f'{file_fix}') from None
  if prep is None:
    raise errors.WorkdirError(
        f'{workdir} has no {workdir_files.PREPROCESSING}: the run did not get '
        'far enough to record its preprocessing.')
  step, variables = read_variables(str(workdir), step)
  model = nin.create_model(config)
  _check_fits(model, variables, info.image_shape,
              f'{workdir_files.CONFIG} in {workdir}',
              VARIABLES_FILE if published else f'its checkpoint of step {step}',
              config_fix)
  return TrainedRun(workdir=str(workdir), step=step, config=config, info=info,
                    prep=prep, model=model,
                    variables=jax.tree.map(jnp.asarray, variables),
                    published=published)


def _checked_config(saved: dict[str, Any], workdir: workdir_files.Workdir,
                    if_damaged: str) -> ml_collections.ConfigDict:
  """config.json as a ConfigDict that passes config_checks.check_fields: a
  field of the wrong type or value would otherwise fail deep inside the
  model's creation, with a traceback."""
  try:
    config = ml_collections.ConfigDict(saved)  # Refuses dotted keys.
    config_checks.check_fields(config)
  except ValueError as e:  # errors.ConfigError among them.
    raise errors.WorkdirError(
        f'{workdir_files.CONFIG} in {workdir} is not a config this nin_jax '
        f'can use ({e}): {if_damaged}') from None
  return config


def _check_fits(model: nin.NiN, variables: dict[str, Any],
                image_shape: tuple[int, ...], config_file: str, weights: str,
                if_damaged: str) -> None:
  """Refuses weights whose shapes are not those of the model the config
  describes: a config.json edited by hand (another width; a field deleted,
  which then takes its default) fails here, not inside Flax."""
  try:
    wanted = jax.eval_shape(
        functools.partial(model.init, train=False),
        {'params': jax.random.key(0)},
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    # Flax and XLA raise many kinds for a layout these images cannot take.
    raise errors.WorkdirError(
        f'{config_file} describes a model that cannot take '
        f'{"x".join(map(str, image_shape))} images ({errors.describe(e)}): '
        f'{if_damaged}') from None
  differ = checkpointing.shape_differences(variables, wanted)
  if differ:  # The first difference.
    path, saved, described = differ[0]
    if saved is None:
      detail = f'{path} {described}: described, not saved'
    elif described is None:
      detail = f'{path} {saved}: saved, not described'
    else:
      detail = f'{path}: saved {saved}, described {described}'
    raise errors.WorkdirError(
        f'{config_file} does not describe the model of {weights} ({detail}): '
        f'{if_damaged}')


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k most probable classes per row, most probable first."""
  k = min(k, probabilities.shape[-1])
  return np.argsort(-probabilities, axis=-1, kind='stable')[..., :k]
