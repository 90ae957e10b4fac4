"""Schedules, weight decay on kernels only, and per-layer multipliers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nin_jax import errors
from nin_jax.training import config_checks
from nin_jax.training import optimizer


def test_warmup_then_cosine(tiny_config):
  tiny_config.learning_rate = 0.1
  tiny_config.warmup_epochs = 2
  lr = optimizer.create_learning_rate_fn(tiny_config, steps_per_epoch=10,
                                         num_train_steps=100)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(10)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(lr(20)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(lr(60)), 0.05, rtol=1e-5)  # Half-way down.
  np.testing.assert_allclose(float(lr(100)), 0.0, atol=1e-8)


def test_step_schedule_divides_at_the_boundaries(tiny_config):
  tiny_config.learning_rate = 0.1
  tiny_config.warmup_epochs = 0
  tiny_config.lr_schedule = 'step'
  tiny_config.lr_boundaries_epochs = (5, 8)
  tiny_config.lr_decay_factor = 0.1
  lr = optimizer.create_learning_rate_fn(tiny_config, steps_per_epoch=10,
                                         num_train_steps=100)
  values = [float(lr(s)) for s in (0, 49, 50, 79, 80, 99)]
  np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                             rtol=1e-5)


def test_step_boundaries_count_from_the_start_despite_warmup(tiny_config):
  tiny_config.lr_schedule = 'step'
  tiny_config.warmup_epochs = 1
  tiny_config.lr_boundaries_epochs = (5,)
  lr = optimizer.create_learning_rate_fn(tiny_config, 10, 100)
  np.testing.assert_allclose([float(lr(49)), float(lr(50))],
                             [tiny_config.learning_rate,
                              tiny_config.learning_rate * 0.1], rtol=1e-5)


def _params():
  return {'block': {'conv': {'kernel': jnp.ones((3, 3, 2, 4)),
                             'bias': jnp.ones((4,))},
                    'bn0': {'scale': jnp.ones((4,)), 'bias': jnp.ones((4,))}}}


def test_weight_decay_skips_biases_and_batchnorm(tiny_config):
  tiny_config.weight_decay = 0.5
  tiny_config.momentum = 0.0
  params = _params()
  tx = optimizer.create_optimizer(tiny_config, optax.constant_schedule(0.1),
                                  params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['block']['conv']['kernel'], 1 - 0.1 * 0.5)
  np.testing.assert_array_equal(new['block']['conv']['bias'], 1.0)
  np.testing.assert_array_equal(new['block']['bn0']['scale'], 1.0)
  np.testing.assert_array_equal(new['block']['bn0']['bias'], 1.0)


def test_learning_rate_multipliers_scale_matching_parameters(tiny_config):
  tiny_config.weight_decay = 0.0
  tiny_config.momentum = 0.9
  tiny_config.lr_multipliers = (('bias', 2.0), ('conv/kernel', 0.1))
  params = _params()
  tx = optimizer.create_optimizer(tiny_config, optax.constant_schedule(1.0),
                                  params)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(3):  # With momentum too, each layer's step is scaled.
    updates, state = tx.update(grads, state, params)
  # Nesterov SGD after 3 equal gradients: -(0.9 * v3 + g) with v3 = 2.71.
  base = -(0.9 * 2.71 + 1.0)
  np.testing.assert_allclose(updates['block']['conv']['kernel'], 0.1 * base,
                             rtol=1e-5)
  np.testing.assert_allclose(updates['block']['conv']['bias'], 2.0 * base,
                             rtol=1e-5)
  np.testing.assert_allclose(updates['block']['bn0']['scale'], base, rtol=1e-5)


@pytest.mark.parametrize('field,value,message', [
    ('lr_schedule', 'linear', "config.lr_schedule='linear' is not one of "
     "('cosine', 'step')"),
    ('optimizer', 'rmsprop', "config.optimizer='rmsprop' is not one of"),
    ('momentum', 1.0, 'config.momentum=1.0 must be in [0, 1)'),
    ('lr_decay_factor', 0.0, 'config.lr_decay_factor=0.0 must be in (0, 1]'),
    ('lr_boundaries_epochs', (100, -1), 'lr_boundaries_epochs=(100, -1) must '
     'hold epochs of at least 0'),
    ('lr_boundaries_epochs', (100, float('nan')), 'must hold epochs'),
    ('lr_multipliers', (('mlpconv3/mlp2/', 0.1), ('bias[', 2.0)),
     "config.lr_multipliers regex 'bias[' does not compile"),
    ('lr_multipliers', (('bias', -2.0),), "entry ('bias', -2.0) must be a "
     '(regex, factor) pair with a factor of at least 0'),
    ('lr_multipliers', (('bias',),), 'must be a (regex, factor) pair'),
    ('lr_multipliers', ('bias', 2.0), "entry 'bias' must be a (regex, factor)"),
])
def test_bad_optimizer_config_is_one_line_from_validate(
    tiny_config, field, value, message):
  tiny_config[field] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)) as raised:
    config_checks.validate(tiny_config)
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('name', optimizer.OPTIMIZERS)
def test_every_listed_optimizer_builds(tiny_config, name):
  tiny_config.optimizer = name
  tiny_config.lr_schedule = 'step'
  tiny_config.lr_boundaries_epochs = (1,)
  config_checks.validate(tiny_config)
  lr = optimizer.create_learning_rate_fn(tiny_config, 10, 100)
  assert lr(50) == pytest.approx(tiny_config.learning_rate *
                                 tiny_config.lr_decay_factor)
  tx = optimizer.create_optimizer(tiny_config, lr, _params())
  updates, _ = tx.update(_params(), tx.init(_params()), _params())
  assert jax.tree.structure(updates) == jax.tree.structure(_params())
