"""Learning-rate schedules and the Optax optimizer, all read from config."""

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from nin_jax import errors
import optax

# The choices of config.lr_schedule and config.optimizer, checked by
# config_checks.validate.
SCHEDULES = ('cosine', 'step')
OPTIMIZERS = ('sgd', 'adam', 'adamw')


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError for lr_boundaries_epochs or lr_multipliers that
  the factories below could not use (config_checks.validate calls it)."""
  for epoch in config.lr_boundaries_epochs:
    if not _is_number(epoch) or epoch < 0:
      raise errors.ConfigError(
          f'config.lr_boundaries_epochs={config.lr_boundaries_epochs!r} must '
          'hold epochs of at least 0, e.g. (100, 150).')
  for rule in config.lr_multipliers:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2
            and isinstance(rule[0], str) and _is_number(rule[1])
            and rule[1] >= 0):
      raise errors.ConfigError(
          f'config.lr_multipliers entry {rule!r} must be a (regex, factor) '
          "pair with a factor of at least 0, e.g. ('bias', 2.0).")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise errors.ConfigError(
          f'config.lr_multipliers regex {rule[0]!r} does not compile ({e}); '
          'escape special characters with a backslash.') from None


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int,
                            num_train_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to config.learning_rate, then cosine or step decay.

  Trusts `config`: config_checks.validate has checked it.
  """
  peak = config.learning_rate
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  warmup_steps = min(warmup_steps, num_train_steps)
  warmup = optax.linear_schedule(0.0, peak, transition_steps=max(warmup_steps, 1))
  if config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
        peak, decay_steps=max(num_train_steps - warmup_steps, 1))
  else:  # 'step'
    # Boundaries count from the start of training, like the paper's "divide
    # by 10 at iteration k"; join_schedules shifts them by the warm-up.
    boundaries = {
        int(round(epoch * steps_per_epoch)) - warmup_steps:
            config.lr_decay_factor
        for epoch in config.lr_boundaries_epochs}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def _path_name(path: tuple[Any, ...]) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def decay_mask(params: Any) -> Any:
  """True for kernels: biases and BatchNorm scales are not decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _path_name(path).endswith('kernel'), params)


def learning_rate_multipliers(params: Any,
                              rules: tuple[tuple[str, float], ...]) -> Any:
  """A tree of per-parameter factors: the first matching (regex, factor) rule."""
  compiled = [(re.compile(pattern), float(factor)) for pattern, factor in rules]

  def factor(path, _):
    name = _path_name(path)
    for pattern, value in compiled:
      if pattern.search(name):
        return value
    return 1.0

  return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_multipliers(multipliers: Any) -> optax.GradientTransformation:
  """Multiplies each update by its parameter's fixed learning-rate factor.

  For SGD with momentum this is exactly Caffe's per-layer `lr_mult`: the
  momentum buffer is linear in the gradients, so scaling the update equals
  scaling the learning rate of that layer.
  """
  def update(updates, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates,
                        multipliers)
  return optax.stateless(update)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule,
                     params: Any) -> optax.GradientTransformation:
  """Gradient clipping, decay of kernels, SGD/Adam(W), per-layer multipliers.

  Trusts `config`: config_checks.validate has checked it.
  """
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0 and config.optimizer != 'adamw':
    # Coupled L2 (added to the gradient), as in the paper and Caffe.
    parts.append(optax.add_decayed_weights(config.weight_decay, decay_mask))
  if config.optimizer == 'sgd':
    parts.append(optax.sgd(learning_rate_fn, momentum=config.momentum or None,
                           nesterov=config.nesterov))
  elif config.optimizer == 'adam':
    parts.append(optax.adam(learning_rate_fn))
  else:  # 'adamw': decoupled decay, scaled by the lr.
    parts.append(optax.adamw(learning_rate_fn, weight_decay=config.weight_decay,
                             mask=decay_mask))
  if config.lr_multipliers:
    parts.append(scale_by_multipliers(
        learning_rate_multipliers(params, tuple(config.lr_multipliers))))
  return optax.chain(*parts)
