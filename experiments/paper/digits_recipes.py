"""Which optimizer recipes train a NiN without killing its last ReLU?

Trains a NiN on the bundled digits once per (recipe, seed) and prints a
Markdown table: test accuracy per seed, and how many runs died (the largest
fraction of training examples whose logits were all exactly zero reached 1).
This is the evidence behind the optimizer choices of configs/default.py and
configs/digits.py; experiments/README.md records a run of it.

  python experiments/paper/digits_recipes.py --workdir=/tmp/nin_recipes \
      [--widths=full|digits] [--seeds=0,1,2] [--epochs=30] [--recipes=a,b]

Each run gets its own workdir, so an interrupted study resumes where it
stopped. On 2 CPU cores a full-width run takes about 3.5 minutes, a
digits-width run about 1 minute.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nin_jax.configs import default  # pylint: disable=g-import-not-at-top
from nin_jax.configs import digits  # pylint: disable=g-import-not-at-top
from nin_jax.files import workdir_files  # pylint: disable=g-import-not-at-top
from nin_jax.training import train  # pylint: disable=g-import-not-at-top

CAFFE_MULTIPLIERS = (('mlpconv3/mlp2/', 0.1), ('bias', 2.0))
SGD = dict(optimizer='sgd', weight_decay=5e-4, lr_multipliers=(),
           class_bias_init=0.0)

# name -> config overrides on top of configs/digits.py.
RECIPES = {
    'sgd 0.1': dict(SGD, learning_rate=0.1),
    'sgd 0.05': dict(SGD, learning_rate=0.05),
    'sgd 0.02': dict(SGD, learning_rate=0.02),
    'sgd 0.01': dict(SGD, learning_rate=0.01),
    'sgd 0.05 + Caffe multipliers': dict(
        SGD, learning_rate=0.05, lr_multipliers=CAFFE_MULTIPLIERS),
    'sgd 0.02 + Caffe multipliers': dict(
        SGD, learning_rate=0.02, lr_multipliers=CAFFE_MULTIPLIERS),
    'sgd 0.02 + Caffe multipliers + class bias 1 (CIFAR default)': dict(
        SGD, learning_rate=0.02, lr_multipliers=CAFFE_MULTIPLIERS,
        class_bias_init=1.0),
    'Caffe: sgd 0.1, N(0, 0.05) init, multipliers': dict(
        SGD, learning_rate=0.1, weight_decay=1e-4, nesterov=False,
        lr_multipliers=CAFFE_MULTIPLIERS, kernel_init='normal'),
    'adamw 2e-3 (digits default)': {},
    'sgd 0.1 + BatchNorm': dict(SGD, learning_rate=0.1, use_batchnorm=True),
}
MODEL_FIELDS = ('use_batchnorm', 'class_bias_init', 'kernel_init')

_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Root of the per-run workdirs.', required=True)
_WIDTHS = flags.DEFINE_enum('widths', 'full', ['full', 'digits'],
                            'full: the CIFAR-10 NiN widths; digits: those of '
                            'configs/digits.py.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per recipe.')
_EPOCHS = flags.DEFINE_integer('epochs', 30, 'Epochs per run.')
_RECIPES = flags.DEFINE_list('recipes', None,
                             'Recipe numbers (0-based) to run; default all.')


def make_config(overrides: dict, widths: str, epochs: int, seed: int):
  config = digits.get_config()
  if widths == 'full':
    config.model.block_features = default.get_config().model.block_features
  config.num_epochs = epochs
  config.seed = seed
  for key, value in overrides.items():
    if key in MODEL_FIELDS:
      config.model[key] = value
    else:
      config[key] = value
  return config


def _died(workdir: str) -> bool:
  records = workdir_files.read_metrics(workdir)
  return max(r['dead_fraction'] for r in records if r['split'] == 'train') == 1


def main(argv):
  del argv
  chosen = ([int(i) for i in _RECIPES.value] if _RECIPES.value
            else range(len(RECIPES)))
  rows = []
  for i in chosen:
    name, overrides = list(RECIPES.items())[i]
    accuracies, deaths = [], 0
    for seed in (int(s) for s in _SEEDS.value):
      workdir = os.path.join(_WORKDIR.value,
                             f'{_WIDTHS.value}_recipe{i}_seed{seed}')
      config = make_config(overrides, _WIDTHS.value, _EPOCHS.value, seed)
      accuracies.append(train.train_and_evaluate(config, workdir)['accuracy'])
      deaths += _died(workdir)
    cells = ', '.join(f'{100 * a:.1f}%' for a in accuracies)
    rows.append(f'| {name} | {cells} | {deaths} of {len(accuracies)} |')
  print(f'\nNiN ({_WIDTHS.value} widths) on the digits, {_EPOCHS.value} epochs, '
        f'seeds {",".join(_SEEDS.value)}:\n')
  print('| recipe | test accuracy per seed | runs whose logits all died |')
  print('|---|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main)
