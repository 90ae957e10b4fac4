"""Each paper dataset's config trains a few steps on TFDS mock data."""

import importlib
import json
import os

import pytest
import tensorflow_datasets as tfds

from nin_jax.configs import test as test_config
from nin_jax.data import input_pipeline
from nin_jax.model import nin
from nin_jax.training import train


@pytest.mark.parametrize('name', sorted(set(input_pipeline.KNOWN_IMAGE_SHAPES)
                                         - {input_pipeline.DIGITS}))
def test_known_image_shapes_are_those_of_tfds(name):
  builder = tfds.builder(name)
  shape = tuple(builder.info.features['image'].shape)
  assert input_pipeline.KNOWN_IMAGE_SHAPES[name] == shape


@pytest.mark.parametrize('name,image_shape,num_classes', [
    ('cifar100', [32, 32, 3], 100),
    ('svhn', [32, 32, 3], 10),
    ('mnist', [28, 28, 1], 10),
])
def test_config_runs_under_mock_data(name, image_shape, num_classes, tmp_path,
                                     monkeypatch):
  monkeypatch.setattr(input_pipeline, '_host_reachable', lambda url: True)
  config = importlib.import_module(f'nin_jax.configs.{name}').get_config()
  tiny = test_config.get_config()
  config.model.block_features = tiny.model.block_features
  config.batch_size, config.eval_batch_size = 8, 8
  config.num_train_steps, config.log_every_steps = 2, 1
  config.data_shards = 1
  with tfds.testing.mock_data(num_examples=16):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert result['num_examples'] == 16
  with open(os.path.join(tmp_path, 'dataset.json'), encoding='utf-8') as f:
    info = json.load(f)
  assert info['image_shape'] == image_shape
  assert info['num_classes'] == num_classes == nin.create_model(
      config).num_classes
