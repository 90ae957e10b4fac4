"""The compiled functions of training: the train state, its steps, metrics.

Pure functions of their arguments, shared by the trainer (train.py), the
experiments and the tests; nothing here reads files or flags. The dropout
randomness of step s is a function of (config.seed, s) alone: `dropout_key`
derives the run's base key from the seed and `train_step` folds in the step
(and, under pmap, the device), so a resumed run needs no saved key.
"""

from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from nin_jax.model import nin
from nin_jax.training import optimizer

Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step; BatchNorm statistics if any."""
  batch_stats: Any = None


def create_train_state(config: ml_collections.ConfigDict, model: nin.NiN,
                       image_shape: tuple[int, ...], key: jax.Array,
                       learning_rate_fn: optax.Schedule) -> TrainState:
  """Initializes parameters and optimizer state (on the default device).

  One compiled program: op by op, every optimizer buffer would be a
  compilation (and a start-up pause) of its own.
  """
  def variables(key):
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return model.init({'params': key}, dummy, train=False)
  # The optimizer needs only the parameters' names and shapes.
  tx = optimizer.create_optimizer(
      config, learning_rate_fn, jax.eval_shape(variables, key)['params'])

  @jax.jit
  def init(key):
    initial = variables(key)
    return TrainState.create(apply_fn=model.apply, params=initial['params'],
                             tx=tx, batch_stats=initial.get('batch_stats', {}))
  return init(key)


def compute_metrics(logits: jax.Array, labels: jax.Array,
                    mask: jax.Array | None = None) -> Metrics:
  """Sums over the batch (so windows and shards add up exactly).

  `dead` counts examples whose logits are all exactly zero: the signature of
  the dead-ReLU failure.
  """
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  dead = jnp.all(logits == 0, axis=-1).astype(jnp.float32)
  return {
      'loss': jnp.sum(losses * mask),
      'correct': jnp.sum(correct * mask),
      'dead': jnp.sum(dead * mask),
      'count': jnp.sum(mask),
  }


def accumulate(total: Metrics | None, metrics: Metrics) -> Metrics:
  """total + metrics, field by field; None is the empty total."""
  return metrics if total is None else jax.tree.map(jnp.add, total, metrics)


def summarize(sums: dict[str, Any]) -> dict[str, float]:
  """Turns summed metrics into means: loss, accuracy, dead_fraction."""
  sums = jax.device_get(sums)
  count = max(float(sums['count']), 1.0)
  return {
      'loss': float(sums['loss']) / count,
      'accuracy': float(sums['correct']) / count,
      'dead_fraction': float(sums['dead']) / count,
  }


def model_variables(state: TrainState, params: Any) -> dict[str, Any]:
  """What the model's apply takes: `params`, and the state's BatchNorm
  statistics if it has any."""
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: dict[str, jax.Array],
               dropout_key: jax.Array,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One SGD step; the dropout key is folded with the step.

  Under jit the batch is the global batch and XLA derives the cross-device
  reductions. Under pmap (`axis_name` set) each device sees its shard, and
  gradients are averaged and metrics summed over `axis_name` here.
  """
  key = jax.random.fold_in(dropout_key, state.step)
  if axis_name is not None:  # Different masks on different devices.
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  mutable = ['batch_stats'] if state.batch_stats else False

  def loss_fn(params):
    out = state.apply_fn(model_variables(state, params), batch['image'],
                         train=True, rngs={'dropout': key}, mutable=mutable)
    logits, updates = out if mutable else (out, {})
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']))
    return loss, (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (logits, updates)), grads = grad_fn(state.params)
  metrics = compute_metrics(logits, batch['label'])
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.psum(metrics, axis_name)
  state = state.apply_gradients(
      grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  return state, metrics


def train_steps(state: TrainState, inputs: Any, dropout_key: jax.Array,
                first_index: jax.Array, num_steps: jax.Array, *,
                draw: Callable[..., dict[str, jax.Array]],
                step_fn: Callable[..., tuple[TrainState, Metrics]] = train_step
                ) -> tuple[TrainState, Metrics]:
  """`num_steps` training steps in one compiled loop; their summed metrics.

  Batch `first_index + i` is `draw(*inputs, first_index + i)`, drawn on the
  devices, so the host dispatches once for all the steps. `num_steps` is a
  traced value: every count shares one compilation.
  """
  def step(state, index):
    return step_fn(state, draw(*inputs, index), dropout_key)

  def body(i, carry):
    state, sums = carry
    state, metrics = step(state, first_index + i)
    return state, accumulate(sums, metrics)

  # Zeros shaped like one step's metrics (traced only, never run).
  shapes = jax.eval_shape(step, state, first_index)[1]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.lax.fori_loop(0, num_steps, body, (state, zeros))


def eval_step(state: TrainState, batch: dict[str, jax.Array],
              axis_name: str | None = None) -> Metrics:
  logits = state.apply_fn(model_variables(state, state.params),
                          batch['image'], train=False)
  metrics = compute_metrics(logits, batch['label'], batch['mask'])
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def _seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter init key, dropout base key): the two streams of a seed."""
  init_key, dropout_base = jax.random.split(jax.random.key(seed))
  return init_key, dropout_base


def dropout_key(seed: int) -> jax.Array:
  """The run's dropout base key; `train_step` folds the step into it."""
  return _seed_keys(seed)[1]


def initial_state(config: ml_collections.ConfigDict,
                  image_shape: tuple[int, ...], steps_per_epoch: int,
                  num_steps: int, axis_name: str | None = None
                  ) -> tuple[TrainState, optax.Schedule]:
  """A fresh run's state and its learning-rate schedule.

  The one path from config to state (model, then schedule, then parameters
  and optimizer state, on the default device) for the trainer, the
  experiments and the tests. `axis_name`: the pmap axis BatchNorm reduces
  over, if any.
  """
  model = nin.create_model(config, axis_name=axis_name)
  learning_rate_fn = optimizer.create_learning_rate_fn(
      config, steps_per_epoch, num_steps)
  state = create_train_state(config, model, image_shape,
                             _seed_keys(config.seed)[0], learning_rate_fn)
  return state, learning_rate_fn
