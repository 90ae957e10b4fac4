"""Published models: the same answers as the run, and a new run's start."""

import json
import logging as std_logging
import os

from absl import logging
from flax import serialization
from flax import traverse_util
import jax
import numpy as np
from PIL import Image
import pytest

from nin_jax.configs import test as test_config
from nin_jax.data import input_pipeline
from nin_jax import errors
from nin_jax import evaluate
from nin_jax import export
from nin_jax.model import nin
from nin_jax import predict
from nin_jax import publish
from nin_jax.training import init_from
from nin_jax.training import train
from nin_jax.training import trained_run
from nin_jax import visualize
from tests import main_runner

# `python -m nin_jax.<command> ARGS` in this process; its exit status.
_run = main_runner.run_command


@pytest.fixture(scope='module')
def published(trained_workdir, tmp_path_factory):
  """The tiny run published as 'tiny' in a root of its own."""
  root = tmp_path_factory.mktemp('pretrained')
  directory, _ = publish.publish(trained_workdir, 'tiny', root=str(root))
  return directory


def _size(directory) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, names in os.walk(directory) for f in names)


def test_published_model_computes_what_its_checkpoint_does(trained_workdir,
                                                           published):
  assert sorted(os.listdir(published)) == [
      'config.json', 'dataset.json', 'info.json', 'metrics.jsonl',
      'preprocessing.npz', 'variables.msgpack']
  run, source = trained_run.load(published), trained_run.load(trained_workdir)
  assert run.published and not source.published and run.step == 4
  assert run.info == source.info
  images, _ = input_pipeline._digits_arrays('test')
  np.testing.assert_array_equal(
      np.asarray(run.logits(run.preprocess(images))),
      np.asarray(source.logits(source.preprocess(images))))

  # The weights only: no optimizer state, step or dropout key.
  weights = os.path.join(published, trained_run.VARIABLES_FILE)
  with open(weights, 'rb') as f:
    stored = serialization.msgpack_restore(f.read())
  assert list(stored) == ['params']  # The tiny model has no BatchNorm.
  leaves = jax.tree.leaves(stored)
  assert all(leaf.dtype == np.float32 for leaf in leaves)
  jax.tree.map(np.testing.assert_array_equal, stored,
               jax.device_get(source.variables))
  payload = 4 * sum(leaf.size for leaf in leaves)
  assert payload < os.path.getsize(weights) < payload + 1024
  checkpoint = os.path.join(trained_workdir, 'checkpoints', '4')
  assert os.path.getsize(weights) < _size(checkpoint) / 3

  # info.json repeats what metrics.jsonl logged for the final evaluation.
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  info = trained_run.read_info(published)
  assert info['step'] == 4 and info['source_workdir'] == trained_workdir
  final = logged[-1]
  assert final['split'] == 'test' and final['step'] == 4
  assert info['evaluations'] == {'test': {
      k: v for k, v in final.items() if k not in ('step', 'split')}}
  with open(os.path.join(published, 'metrics.jsonl')) as f:
    assert [json.loads(line) for line in f] == logged


def test_publish_replaces_only_when_asked_and_leaves_nothing_half_done(
    trained_workdir, published, tmp_path, monkeypatch):
  root = str(tmp_path)
  publish.publish(trained_workdir, 'tiny', step=2, root=root)
  with pytest.raises(errors.WorkdirError, match='--overwrite'):
    publish.publish(trained_workdir, 'tiny', root=root)
  target, _ = publish.publish(trained_workdir, 'tiny', root=root,
                              overwrite=True)
  assert trained_run.read_info(target)['step'] == 4
  with pytest.raises(errors.ConfigError, match='not a path'):
    publish.publish(trained_workdir, '../tiny', root=root)
  with pytest.raises(errors.WorkdirError, match='published model already'):
    publish.publish(published, 'again', root=root)

  def fail(variables):
    raise OSError('disk full')
  monkeypatch.setattr(publish.serialization, 'msgpack_serialize', fail)
  with pytest.raises(OSError, match='disk full'):
    publish.publish(trained_workdir, 'other', root=root)
  with pytest.raises(OSError, match='disk full'):
    publish.publish(trained_workdir, 'tiny', root=root, overwrite=True)
  assert os.listdir(root) == ['tiny']  # No temporary directory left either.
  assert trained_run.read_info(target)['step'] == 4


def test_predict_with_a_published_model(published, tmp_path, monkeypatch,
                                        capsys):
  images, _ = input_pipeline._digits_arrays('test')
  path = str(tmp_path / 'digit.png')
  Image.fromarray((images[0, ..., 0] * (255 / 16)).round().astype(
      np.uint8)).save(path)
  run = trained_run.load(published)
  (expected,) = predict.predict_files(run, [path], top_k=2)
  names = [p['name'] for p in expected['top_k']]

  assert _run(predict, f'--pretrained={published}', '--top_k=2', path) == 0
  printed = capsys.readouterr().out
  assert printed.startswith(f'{path}: 1. {names[0]} ')
  assert f' 2. {names[1]} ' in printed

  monkeypatch.setenv(trained_run.PRETRAINED_ROOT_ENV, os.path.dirname(published))
  assert _run(predict, '--pretrained=tiny', path) == 0
  assert capsys.readouterr().out.startswith(f'{path}: 1. {names[0]} ')
  assert _run(predict, '--pretrained=cifar10', path) == 2
  assert 'published ones are tiny' in capsys.readouterr().err


def test_the_bundled_models_are_found_by_name(monkeypatch):
  # Where the package ships them (nin_jax/pretrained/), whatever module
  # looks them up.
  monkeypatch.delenv(trained_run.PRETRAINED_ROOT_ENV, raising=False)
  root = trained_run.pretrained_root()
  assert root == os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
          __file__)))), 'nin_jax', 'pretrained')
  for name in ('cifar10', 'cifar10_paper', 'mnist'):
    assert trained_run.is_published(trained_run.find_published(name))


@pytest.mark.parametrize('command', [evaluate, predict, visualize, export])
def test_workdir_or_pretrained_exactly_one(command, trained_workdir, published,
                                           tmp_path, capsys):
  # predict takes images and writes nothing; the others write to --out.
  out, *images = (['--top_k=1', 'x.png'] if command is predict
                  else [f'--out={tmp_path / "out"}'])
  assert _run(command, out, *images) == 2
  assert 'error: give --workdir=DIR' in capsys.readouterr().err
  assert _run(command, out, f'--workdir={trained_workdir}',
              f'--pretrained={published}', *images) == 2
  assert 'not both' in capsys.readouterr().err
  assert _run(command, out, f'--pretrained={trained_workdir}', *images) == 2
  assert 'is a training workdir' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


def test_evaluate_never_writes_into_a_published_model(published, capsys):
  files = sorted(os.listdir(published))
  assert _run(evaluate, f'--pretrained={published}') == 0
  printed = capsys.readouterr().out
  assert 'top-1 accuracy: ' in printed and 'No report written' in printed
  with pytest.raises(errors.ConfigError, match='pass --out'):
    evaluate.write_report(trained_run.load(published), 'test', 5)
  assert _run(evaluate, f'--pretrained={published}', '--step=2') == 2
  assert 'of step 4 only' in capsys.readouterr().err
  assert sorted(os.listdir(published)) == files


# --- config.init_from -------------------------------------------------------


def _variables(num_classes=10, seed=0, **model_fields):
  config = test_config.get_config()
  config.num_classes = num_classes
  for name, value in model_fields.items():
    setattr(config.model, name, value)
  model = nin.create_model(config)
  return jax.device_get(model.init(jax.random.key(seed),
                                   np.zeros((1, 8, 8, 1)), train=False))


def _flat(variables):
  return traverse_util.flatten_dict(variables, sep='/')


@pytest.mark.parametrize('model_fields, class_layers', [
    ({}, ('mlpconv3/mlp2',)),
    ({'use_batchnorm': True, 'head': 'fc'},
     ('fc', 'mlpconv3/bn2', 'mlpconv3/mlp2')),
    ({'num_mlp_layers': 0}, ('mlpconv3/mlp1',)),
])
def test_another_class_count_keeps_the_fresh_class_layers(model_fields,
                                                          class_layers):
  loaded = _variables(10, **model_fields)
  fresh = _variables(3, seed=1, **model_fields)
  merged, kept_fresh = init_from.transfer(loaded, fresh, 'source')
  assert kept_fresh == class_layers
  for path, value in _flat(merged).items():
    layer = path.split('/', 1)[1].rsplit('/', 1)[0]
    wanted = fresh if layer in class_layers else loaded
    np.testing.assert_array_equal(value, _flat(wanted)[path], err_msg=path)
  # The same class count: every array comes from the source.
  same_count = _variables(10, seed=1, **model_fields)
  merged, kept_fresh = init_from.transfer(loaded, same_count, 'source')
  assert kept_fresh == ()
  jax.tree.map(np.testing.assert_array_equal, merged, loaded)
  # As many classes, but others: the class layers start fresh all the same.
  merged, kept_fresh = init_from.transfer(loaded, same_count, 'source',
                                            other_classes=True)
  assert kept_fresh == class_layers
  for path, value in _flat(merged).items():
    layer = path.split('/', 1)[1].rsplit('/', 1)[0]
    wanted = same_count if layer in class_layers else loaded
    np.testing.assert_array_equal(value, _flat(wanted)[path], err_msg=path)


def test_another_architecture_names_the_first_array_that_differs():
  loaded = _variables(10)
  wider = _variables(10, block_features=((8, 6, 4), (8, 12, 8), (8, 8)))
  with pytest.raises(errors.ConfigError,
                     match=r"init_from='src' does not fit .*: params/"
                     r'mlpconv2/mlp1/bias is \(8,\) there and \(12,\) here'):
    init_from.transfer(loaded, wider, 'src')
  with pytest.raises(errors.ConfigError, match='bn0/.* is not in the source'):
    init_from.transfer(loaded, _variables(10, use_batchnorm=True), 'src')
  with pytest.raises(errors.ConfigError, match='the source has .*bn0'):
    init_from.transfer(_variables(10, use_batchnorm=True), loaded, 'src')


def test_a_new_run_starts_from_the_source_and_a_resumed_one_ignores_it(
    published, tmp_path, caplog):
  config = test_config.get_config()
  config.init_from = published
  config.learning_rate = 1e-30  # Two steps leave the start where it was.
  config.num_train_steps = 2
  workdir = str(tmp_path / 'run')
  with caplog.at_level(std_logging.INFO, logger='absl'):
    train.train_and_evaluate(config, workdir)
    assert f'Initialized from {published}, step 4: every parameter' in (
        caplog.text)
    step, started = trained_run.read_variables(workdir)
    _, source = trained_run.read_variables(published)
    assert step == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 started, source)
    # A resumed run continues from its checkpoint: init_from may change,
    # even to nothing that exists.
    config.init_from = str(tmp_path / 'nowhere')
    config.num_train_steps = 4
    train.train_and_evaluate(config, workdir)
    assert 'config.init_from is ignored' in caplog.text
  assert trained_run.read_variables(workdir)[0] == 4


def _assert_fresh_class_maps_and_the_rest_from(published, workdir, config):
  """The run's first parameters: its own fresh init in the class-map layer,
  the published model's everywhere else. Returns them, flat."""
  started = _flat(trained_run.read_variables(workdir)[1])
  source = _flat(trained_run.read_variables(published)[1])
  init_key = jax.random.split(jax.random.key(config.seed))[0]
  fresh = _flat(nin.create_model(config).init(
      {'params': init_key}, np.zeros((1, 8, 8, 1)), train=False))
  for path, value in started.items():
    wanted = fresh if '/mlpconv3/mlp2/' in path else source
    np.testing.assert_allclose(value, wanted[path], rtol=1e-6, atol=1e-7,
                               err_msg=path)
  return started


def test_a_folder_of_three_classes_starts_from_the_ten_digit_model(
    published, tmp_path, caplog):
  # pylint: disable-next=g-import-not-at-top
  from tests.data.test_image_folder import folder_config, make_folder
  root = make_folder(tmp_path / 'data', {'train': 8, 'test': 2}, mode='L')
  config = folder_config(root, init_from=published, learning_rate=1e-30,
                         num_train_steps=2)
  workdir = str(tmp_path / 'run')
  with caplog.at_level(std_logging.INFO, logger='absl'):
    train.train_and_evaluate(config, workdir)
  assert ('except mlpconv3/mlp2, whose shapes differ (10 classes there, 3 '
          'here)') in caplog.text
  started = _assert_fresh_class_maps_and_the_rest_from(published, workdir,
                                                       config)
  assert started['params/mlpconv3/mlp2/kernel'].shape == (8, 3)


def test_ten_other_classes_start_the_class_map_layer_fresh(
    published, tmp_path, caplog):
  # As many classes as the source's digits, but others (say Fashion-MNIST's):
  # the digits' class maps would be kept for unrelated classes.
  # pylint: disable-next=g-import-not-at-top
  from tests.data.test_image_folder import folder_config, make_folder
  classes = ('ankle_boot', 'bag', 'coat', 'dress', 'pullover', 'sandal',
             'shirt', 'sneaker', 'top', 'trouser')
  root = make_folder(tmp_path / 'data', {'train': 2, 'test': 1}, mode='L',
                     classes=classes)
  config = folder_config(root, init_from=published, learning_rate=1e-30,
                         num_train_steps=2, num_classes=10)
  workdir = str(tmp_path / 'run')
  with caplog.at_level(std_logging.INFO, logger='absl'):
    train.train_and_evaluate(config, workdir)
  assert ('except mlpconv3/mlp2, whose classes are others (there: 0, 1, 2, '
          '3, 4, ...; here: ankle_boot, bag, coat, dress, pullover, ...): '
          'they start fresh') in caplog.text
  assert 'every parameter' not in caplog.text
  _assert_fresh_class_maps_and_the_rest_from(published, workdir, config)


def test_bad_init_from_stops_before_the_workdir_is_made(published, tmp_path,
                                                        monkeypatch):
  config = test_config.get_config()
  config.init_from = published
  config.model.block_features = ((8, 6, 4), (8, 8, 8), (8, 9))
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError,
                     match=r'params/mlpconv3/mlp1/bias is \(8,\) there '
                     r'and \(9,\) here'):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.setenv(trained_run.PRETRAINED_ROOT_ENV, os.path.dirname(published))
  config = test_config.get_config()
  config.init_from = 'tinny'
  with pytest.raises(errors.ConfigError, match='published ones are tiny'):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
