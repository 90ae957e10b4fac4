"""The NiN module: parameter counts, shapes, dropout, and the seed's numerics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nin_jax.configs import default
from nin_jax import errors
from nin_jax.model import nin
from nin_jax.training import config_checks
import numpy_reference


def _param_count(config, image_shape=(32, 32, 3)):
  model = nin.create_model(config)
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
  model = nin.create_model(tiny_config)
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
  model = nin.create_model(tiny_config)
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
  no_dropout = nin.create_model(tiny_config)
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
  model = nin.create_model(default.get_config())
  params = jax.tree.map(jnp.asarray, numpy_reference.to_flax_params(weights))
  logits = model.apply({'params': params}, images, train=False)
  assert np.abs(expected).max() > 0.1  # Not a vacuous all-zero comparison.
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_config):
  tiny_config.model.dtype = 'bfloat16'
  model = nin.create_model(tiny_config)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, x).dtype == jnp.float32


@pytest.mark.parametrize('field,value,message', [
    ('kernel_sizes', (5, 5), 'has 2 entries but config.model.block_features '
     'has 3 blocks; give one kernel size per block'),
    ('kernel_sizes', (5, 0, 3), 'kernel_sizes=(5, 0, 3) must be positive'),
    ('pools', ('max',), 'pools needs 2 entries'),
    ('pools', ('max', 'sum'), "Unknown pool 'sum' in config.model.pools"),
    ('block_features', (8, 6, 4), 'block_features=(8, 6, 4) must be a tuple '
     'of blocks, each a tuple of positive widths'),
    ('block_features', ((8, 6), (8, 0), (8,)), 'must be a tuple of blocks'),
    ('block_features', (), 'must be a tuple of blocks'),
    ('head', 'fc9', "config.model.head='fc9' is not one of ('gap', 'fc', "
     "'fc_dropout')"),
    ('kernel_init', 'zeros', "config.model.kernel_init='zeros' is not one of"),
    ('dropout_rate', 1.0, 'config.model.dropout_rate=1.0 must be in [0, 1)'),
    ('num_mlp_layers', -2, 'num_mlp_layers=-2 must be -1 (all) or a count'),
    ('pool_impl', 'fast', "config.model.pool_impl='fast' is not one of"),
    ('conv_impl', 'fft', "config.model.conv_impl='fft' is not one of"),
    ('dtype', 'float16', "config.model.dtype='float16' is not one of"),
    ('pool_window', 0, 'config.model.pool_window=0 must be at least 1'),
    # The digits are 8x8: larger kernels and pools see only padding.
    ('pool_window', 9, 'config.model.pool_window=9 is larger than the 8x8 '
     'images of digits; use at most 8'),
    ('pool_stride', 9, 'config.model.pool_stride=9 is larger than the 8x8'),
    ('kernel_sizes', (5, 9, 3), 'kernel_sizes=(5, 9, 3) has a kernel larger '
     'than the 8x8 images of digits'),
])
def test_bad_model_config_is_one_line_from_validate(tiny_config, field, value,
                                                    message):
  tiny_config.model[field] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)) as raised:
    config_checks.validate(tiny_config)
  assert '\n' not in str(raised.value)


def test_image_size_bounds_the_pools_of_a_folder_dataset(tiny_config):
  tiny_config.dataset = 'folder:/nowhere'
  tiny_config.model.pool_window = 9
  config_checks.validate(tiny_config)  # Unknown size: the data will tell.
  tiny_config.image_size = 8
  with pytest.raises(errors.ConfigError, match='images of folder:/nowhere'):
    config_checks.validate(tiny_config)


def test_every_listed_choice_builds(tiny_config):
  for name in nin.KERNEL_INITS:
    assert callable(nin.kernel_initializer(name))
  for head in nin.HEADS:
    tiny_config.model.head = head
    config_checks.validate(tiny_config)
    shapes = jax.eval_shape(nin.create_model(tiny_config).init,
                            jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert ('fc' in shapes['params']) == (head != 'gap')
