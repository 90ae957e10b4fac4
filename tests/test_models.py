"""The NiN module: parameter counts, shapes, dropout, and the seed's numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax import errors
from nin_jax import models
from nin_jax.configs import default
import numpy_reference


def _param_count(config, image_shape=(32, 32, 3)):
  model = models.create_model(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1,) + image_shape)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


def test_parameter_count_matches_the_paper_model():
  config = default.get_config()
  assert _param_count(config) == 966_986
  config.num_classes = 100
  assert _param_count(config) == 984_356


def test_maps_shrink_32_16_8_and_logits_have_one_entry_per_class(tiny_config):
  tiny_config.num_classes = 7
  model = models.create_model(tiny_config)
  x = jnp.ones((3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  logits, state = model.apply(variables, x, train=False,
                              mutable=['intermediates'])
  assert logits.shape == (3, 7)
  assert logits.dtype == jnp.float32
  (class_maps,) = state['intermediates']['class_maps']
  assert class_maps.shape == (3, 8, 8, 7)
  # GAP: each logit is the mean of its class map, and maps are post-ReLU.
  np.testing.assert_allclose(logits, class_maps.mean(axis=(1, 2)), rtol=1e-6)
  assert float(class_maps.min()) >= 0.0


def test_dropout_is_active_only_in_training(tiny_config):
  model = models.create_model(tiny_config)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply(variables, x, train=True,
                        rngs={'dropout': jax.random.key(2)})
  train_b = model.apply(variables, x, train=True,
                        rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)
  tiny_config.model.dropout_rate = 0.0
  no_dropout = models.create_model(tiny_config)
  np.testing.assert_allclose(
      no_dropout.apply(variables, x, train=True,
                       rngs={'dropout': jax.random.key(2)}),
      eval_a, rtol=1e-6)


def test_logits_match_an_independent_numpy_seed_network():
  """Same weights in the seed's PyTorch layout -> same logits."""
  rng = np.random.default_rng(0)
  weights = numpy_reference.random_torch_weights(rng)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  expected = numpy_reference.seed_logits(images, weights)
  model = models.create_model(default.get_config())
  params = jax.tree.map(jnp.asarray, numpy_reference.to_flax_params(weights))
  logits = model.apply({'params': params}, images, train=False)
  assert np.abs(expected).max() > 0.1  # Not a vacuous all-zero comparison.
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_config):
  tiny_config.model.dtype = 'bfloat16'
  model = models.create_model(tiny_config)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, x).dtype == jnp.float32


@pytest.mark.parametrize('field,value,message', [
    ('kernel_sizes', (5, 5), 'one kernel size per block'),
    ('pools', ('max', 'sum'), "Unknown pool 'sum'"),
    ('head', 'fc9', 'config.model.head'),
    ('kernel_init', 'zeros', 'Unknown kernel_init'),
    ('dropout_rate', 1.0, 'dropout_rate'),
    ('pool_impl', 'fast', 'config.model.pool_impl'),
])
def test_bad_model_config_names_the_field(tiny_config, field, value, message):
  tiny_config.model[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    models.create_model(tiny_config)
