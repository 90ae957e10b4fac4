"""summary: counts from the real modules against independent numbers."""

import subprocess
import sys

from nin_jax.configs import cifar100
from nin_jax.configs import default
from nin_jax import summary


def test_cifar10_nin_totals_and_layers():
  rows = summary.layers(summary.nin.create_model(default.get_config()),
                        (32, 32, 3))
  assert sum(r.params for r in rows) == 966_986  # The paper's CIFAR-10 NiN.
  assert round(sum(r.macs for r in rows) / 1e6, 2) == 222.49
  assert [r.name for r in rows][:3] == ['mlpconv1/conv', 'mlpconv1/mlp1',
                                        'mlpconv1/mlp2']
  first = rows[0]  # 5x5 conv 3->192 on 32x32: counted by hand.
  assert first.output_shape == (32, 32, 192)
  assert first.params == 5 * 5 * 3 * 192 + 192
  assert first.macs == 32 * 32 * 5 * 5 * 3 * 192
  # The seed's claim that the 1x1 layers save work: the first one costs
  # more than the 5x5 conv before it (192x160 vs 3x192x25 per pixel).
  assert rows[1].macs == 32 * 32 * 192 * 160 > first.macs
  model = summary.nin.create_model(default.get_config())
  assert summary.total_params(model, (32, 32, 3)) == 966_986


def test_comparison_with_fc_head_and_alexnet():
  entries = summary.comparison(default.get_config())
  nin, fc, alexnet = entries  # This config, its FC-head twin, AlexNet.
  assert 'fully connected' in fc['model'] and 'AlexNet' in alexnet['model']
  assert nin['params'] == 966_986 and nin['fc_params'] == 0
  assert fc['params'] == 966_986 + 8 * 8 * 10 * 10 + 10  # Flattened maps -> 10.
  # AlexNet (Krizhevsky et al. 2012): 60,965,224 parameters, 96% of them in
  # fc6-fc8; about 724 M multiply-adds on a 227x227 image.
  assert alexnet['params'] == 60_965_224
  assert alexnet['fc_params'] == (9216 * 4096 + 4096 + 4096 * 4096 + 4096
                                  + 4096 * 1000 + 1000)
  assert 720e6 < alexnet['macs'] < 730e6
  assert '966,986' in summary.comparison_table(entries)


def test_cifar100_count():
  rows = summary.layers(summary.nin.create_model(cifar100.get_config()),
                        (32, 32, 3))
  assert sum(r.params for r in rows) == 984_356


def test_report_text():
  text, _ = summary.render(default.get_config())
  assert '| **total** | | | **966,986** | **222.49 M** |' in text
  assert '| mlpconv2/conv | conv 5x5 | 16x16x192 | 460,992 | 117.96 M |' in text
  assert '60,965,224' in text


def test_command_rejects_unknown_fields_in_one_line():
  # Without --config, ml_collections reads overrides while defining the
  # flag, before any of our code runs: only a fresh process shows this.
  bad = subprocess.run([sys.executable, '-m', 'nin_jax.summary',
                        '--config.no_such_field=1'], capture_output=True,
                       text=True)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "error: unknown config field 'no_such_field'")
