"""Config validation: one clear message before any data is read or compiled.

`validate` checks a config against the default's fields and types, each
value's allowed range or choices, and then calls each module's check of how
its fields fit together; `check_resumable` compares it with the config a
workdir was trained with and refuses changes a checkpoint cannot survive
(another architecture, class count, optimizer or data), while allowing the
rest (more epochs, another learning rate) and saying what changed.
"""

import math
from typing import Any, Callable

import ml_collections

from nin_jax.configs import default
from nin_jax.data import image_folder
from nin_jax.data import input_pipeline
from nin_jax.data import preprocessing
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.model import conv
from nin_jax.model import nin
from nin_jax.model import pooling
from nin_jax.training import metric_writers
from nin_jax.training import optimizer
from nin_jax.training import parallel

_positive = (lambda v: v > 0, 'a positive number')
_non_negative = (lambda v: v >= 0, 'at least 0')
_at_least_one = (lambda v: v >= 1, 'at least 1')
_steps = (lambda v: v == -1 or v >= 1, '-1 (once per epoch) or at least 1')
_fraction = (lambda v: 0 <= v < 1, 'in [0, 1)')

# Each single field's range or choices. How fields fit together is checked
# by the modules that use them (model/nin.py, optimizer and input_pipeline's
# check_config), and the batch sizes by parallel.check_batch_size.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # Data and preprocessing (input_pipeline, preprocessing).
    'validation_size': _non_negative,
    'augment_pad': _non_negative,
    'data_shards': _non_negative,
    'shuffle_buffer': _at_least_one,
    'image_size': _non_negative,
    'gcn_scale': (lambda v: v > 0, 'a positive number (the paper: 55)'),
    'zca_filter_bias': (lambda v: v > 0, 'a positive number (the paper: 0.1)'),
    # The model (model/nin.py).
    'model.num_mlp_layers': (lambda v: v >= -1,
                             '-1 (all) or a count of at least 0'),
    'model.pool_window': _at_least_one,
    'model.pool_stride': _at_least_one,
    'model.dropout_rate': _fraction,
    'model.init_std': _positive,
    # Optimization (optimizer).
    'learning_rate': _positive,
    'momentum': _fraction,
    'weight_decay': _non_negative,
    'warmup_epochs': _non_negative,
    'grad_clip_norm': _non_negative,
    'lr_decay_factor': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    # The training loop (train).
    'num_epochs': _non_negative,
    'log_every_steps': _at_least_one,
    'steps_per_dispatch': _non_negative,
    'eval_every_steps': _steps,
    'checkpoint_every_steps': _steps,
    'keep_checkpoints': _at_least_one,
    'dead_relu_patience': _at_least_one,
    'profile_steps': _non_negative,
    # JAX keeps the low 32 bits of a seed, and the streaming input's shuffle
    # seeds (seed * 4.1e9 + ...) must fit in 64 bits.
    'seed': (lambda v: 0 <= v < 2**31, f'in [0, {2**31 - 1}]'),
}
_CHOICES = {
    'input_pipeline': input_pipeline.INPUT_PIPELINES,
    'image_channels': (0, 1, 3),
    'preprocessing': preprocessing.KINDS,
    'model.head': nin.HEADS,
    'model.kernel_init': nin.KERNEL_INITS,
    'model.conv_impl': conv.CONV_IMPLS,
    'model.pool_impl': pooling.POOL_IMPLS,
    'model.dtype': nin.DTYPES,
    'optimizer': optimizer.OPTIMIZERS,
    'lr_schedule': optimizer.SCHEDULES,
    'parallelism': parallel.STRATEGIES,
}
# Changing these would make the checkpoint meaningless or unloadable.
# The seed fixes the initial parameters, the data order and every dropout
# mask (drawn from the seed and the step), so it is fixed too.
_FIXED_FOR_A_RUN = ('seed', 'dataset', 'num_classes', 'train_split', 'validation_size',
                    'image_channels', 'image_size',
                    'optimizer', 'lr_multipliers', 'preprocessing', 'gcn_scale',
                    'zca_filter_bias', 'model.')
# Free to change on resume, although the trajectory then differs.
_MODEL_FIELDS_FREE = ('model.dtype', 'model.conv_impl', 'model.pool_impl')


def _flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _type_name(value: Any) -> str:
  return type(value).__name__


def _same_type(value: Any, reference: Any) -> bool:
  if reference is None:
    return True  # Placeholders (e.g. data_dir): None or a value.
  if value is None:
    return False  # A number set to None would fail in the range checks.
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, (int, float))
  if isinstance(reference, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(reference))


def _image_side(config: ml_collections.ConfigDict) -> int | None:
  """The side of the dataset's square images, if known without reading it."""
  if config.dataset in input_pipeline.KNOWN_IMAGE_SHAPES:
    return input_pipeline.KNOWN_IMAGE_SHAPES[config.dataset][0]
  if image_folder.is_folder(config.dataset) and config.image_size:
    return config.image_size
  return None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError naming the first bad field and how to fix it.

  Every check of a config alone is here or called from here, so a bad
  value fails before any data is read or anything compiled, and the
  factories (nin.create_model, optimizer, parallel.create, ...) trust
  their input. Runs after JAX (and jax.distributed) has started: batch
  sizes and data shards are checked against the devices and processes.
  """
  check_fields(config)
  # What depends on this machine too, so not for a saved run's config
  # (check_fields), which may be read where it was not trained.
  parallel.check_batch_size('batch_size', config.batch_size)
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size)
  metric_writers.check_wandb(config)
  if config.get('cache_dir'):
    storage.check_local(config.cache_dir, '--config.cache_dir')


def check_fields(config: ml_collections.ConfigDict) -> None:
  """validate's checks of the config alone, as the factories need them.

  trained_run.load runs these on a saved config.json: its machine (devices,
  installed packages) may differ from the one the run was trained on.
  """
  reference = _flatten(default.get_config())
  values = _flatten(config)
  groups = {name.rsplit('.', 1)[0] for name in reference if '.' in name}
  replaced = sorted(groups & set(values))  # E.g. "model": "abc".
  if replaced:
    name = replaced[0]
    raise errors.ConfigError(
        f'config.{name}={values[name]!r} is a {_type_name(values[name])}; it '
        f'must be a group of fields (config.{name}.*) like the default.')
  unknown = sorted(set(values) - set(reference))
  if unknown:
    raise errors.ConfigError(
        f'Unknown config field(s) {", ".join(unknown)}: not in '
        'nin_jax/configs/default.py, which lists every field with a comment.')
  missing = sorted(set(reference) - set(values))
  if missing:
    raise errors.ConfigError(
        f'The config has no field(s) {", ".join(missing)}: build it from '
        'nin_jax/configs/default.py\'s get_config(), as the bundled configs '
        'do, and change what differs.')
  for name, value in values.items():
    if not _same_type(value, reference[name]):
      raise errors.ConfigError(
          f'config.{name}={value!r} is a {_type_name(value)}; it must be a '
          f'{_type_name(reference[name])} like the default '
          f'{reference[name]!r}.')
  for name, (ok, wanted) in _RANGES.items():
    value = values[name]
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
      raise errors.ConfigError(f'config.{name}={value!r} must be {wanted}.')
  for name, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise errors.ConfigError(f'config.{name}={value!r} must be finite.')
  for name, choices in _CHOICES.items():
    if values[name] not in choices:
      raise errors.ConfigError(
          f'config.{name}={values[name]!r} is not one of {choices}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise errors.ConfigError('Set config.num_epochs or config.num_train_steps '
                             'to a positive value.')
  input_pipeline.check_config(config)
  nin.check_config(config, _image_side(config))
  optimizer.check_config(config)


# Fields that configs saved before their removal hold, and that no longer
# change what a saved run is: dropped when a config.json is read, so that
# such a run or published model (nin_jax/pretrained/cifar10 holds
# accept_manual_checksums) still loads and resumes. Any other unknown field
# is still an error.
_REMOVED_FIELDS = ('accept_manual_checksums',)


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]
                   ) -> dict[str, Any]:
  """Fields added to default.py after a run was saved take their defaults
  (which keep the behaviour the run had)."""
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def saved_config(workdir: workdir_files.Workdir,
                 if_damaged: str | None = None) -> dict[str, Any] | None:
  """The config.json of a run in `workdir`, completed with today's defaults.

  A damaged one counts as none (with a warning), unless `if_damaged` is
  given: then it is Workdir.read_config's error.
  """
  saved = workdir.read_config(if_damaged)
  if saved is None:
    return None
  saved = {key: value for key, value in saved.items()
           if key not in _REMOVED_FIELDS}
  return _with_defaults(saved, default.get_config().to_dict())


def _normalize(value: Any) -> Any:
  """JSON turns tuples into lists; compare them alike."""
  if isinstance(value, (tuple, list)):
    return [_normalize(v) for v in value]
  return value


def check_resumable(config: ml_collections.ConfigDict,
                    workdir: workdir_files.Workdir) -> list[str]:
  """Refuses changes a resumed run cannot take; returns the allowed ones."""
  saved = saved_config(workdir)
  if saved is None:
    return []
  before, now = _flatten(saved), _flatten(config.to_dict())
  changed = sorted(name for name in before.keys() | now.keys()
                   if _normalize(before.get(name)) != _normalize(now.get(name)))
  fixed = [name for name in changed
           if name.startswith(_FIXED_FOR_A_RUN)
           and name not in _MODEL_FIELDS_FREE]
  if fixed:
    details = '; '.join(f'{name}: {before.get(name)!r} -> {now.get(name)!r}'
                        for name in fixed)
    raise errors.ConfigError(
        f'{workdir} holds a run with a different {", ".join(fixed)} ({details}).'
        ' Its checkpoints cannot continue under this config: pass the '
        'original values, or start a new --workdir.')
  return changed
