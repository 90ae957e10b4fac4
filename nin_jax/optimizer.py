"""Learning-rate schedules and the Optax optimizer, all read from config."""

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from nin_jax import errors
import optax

SCHEDULES = ('cosine', 'step')
OPTIMIZERS = ('sgd', 'adam', 'adamw')


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int,
                            num_train_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to config.learning_rate, then cosine or step decay."""
  peak = config.learning_rate
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  warmup_steps = min(warmup_steps, num_train_steps)
  warmup = optax.linear_schedule(0.0, peak, transition_steps=max(warmup_steps, 1))
  if config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
        peak, decay_steps=max(num_train_steps - warmup_steps, 1))
  elif config.lr_schedule == 'step':
    # Boundaries count from the start of training, like the paper's "divide
    # by 10 at iteration k"; join_schedules shifts them by the warm-up.
    boundaries = {
        int(round(epoch * steps_per_epoch)) - warmup_steps:
            config.lr_decay_factor
        for epoch in config.lr_boundaries_epochs}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise errors.ConfigError(f'Unknown config.lr_schedule {config.lr_schedule!r}; use '
                     f'one of {SCHEDULES}.')
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
  """Gradient clipping, decay of kernels, SGD/Adam(W), per-layer multipliers."""
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
  elif config.optimizer == 'adamw':  # Decoupled decay, scaled by the lr.
    parts.append(optax.adamw(learning_rate_fn, weight_decay=config.weight_decay,
                             mask=decay_mask))
  else:
    raise errors.ConfigError(f'Unknown config.optimizer {config.optimizer!r}; use one '
                     f'of {OPTIMIZERS}.')
  if config.lr_multipliers:
    parts.append(scale_by_multipliers(
        learning_rate_multipliers(params, tuple(config.lr_multipliers))))
  return optax.chain(*parts)
