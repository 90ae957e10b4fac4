"""evaluate: the whole split, exactly, against a direct computation."""

import json
import os

import numpy as np
import pytest

from nin_jax.data import input_pipeline
from nin_jax import evaluate
from nin_jax.training import trained_run


def test_report_against_hand_counts():
  logits = np.array([[3., 2., 1.], [1., 3., 2.], [1., 2., 3.], [3., 2., 1.]])
  labels = np.array([0, 2, 2, 2])
  result = evaluate.report(logits, labels, ('a', 'b', 'c'), top_k=2)
  assert result['accuracy'] == 0.5
  assert result['top_k_accuracy'] == {'1': 0.5, '2': 0.75}
  assert result['confusion_matrix'] == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]
  assert [c['accuracy'] for c in result['per_class']] == [1.0, None, 1 / 3]
  expected_loss = np.mean([-np.log(np.exp(l[t]) / np.exp(l).sum())
                           for l, t in zip(logits, labels)])
  np.testing.assert_allclose(result['loss'], expected_loss, rtol=1e-6)


def test_digits_split_equals_a_direct_computation(trained_workdir):
  run = trained_run.load(trained_workdir)
  logits, labels = evaluate.predictions(run, 'test')
  images, expected_labels = input_pipeline._digits_arrays('test')
  np.testing.assert_array_equal(labels, expected_labels)  # All 360, in order.
  direct = np.asarray(run.logits(run.preprocess(images)))
  np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
  # And the trainer's own final evaluation agrees.
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    final = [json.loads(line) for line in f][-1]
  assert final['split'] == 'test' and final['num_examples'] == 360
  np.testing.assert_allclose(np.mean(direct.argmax(-1) == labels),
                             final['accuracy'], atol=1e-6)


def test_report_json_and_confusion_png(trained_workdir, tmp_path):
  out = tmp_path / 'eval'
  result, directory = evaluate.write_report(trained_run.load(trained_workdir),
                                            'test', 3, str(out))
  assert directory == str(out) and '3' in result['top_k_accuracy']
  report = json.loads((out / 'report.json').read_text())
  assert report['num_examples'] == 360 and report['step'] == 4
  assert np.sum(report['confusion_matrix']) == 360
  assert (out / 'confusion.png').stat().st_size > 10_000


def test_missing_workdir_and_step_are_clear_errors(trained_workdir, tmp_path):
  with pytest.raises(trained_run.errors.WorkdirError, match='not a training'):
    os.makedirs(tmp_path / 'empty')
    trained_run.load(str(tmp_path / 'empty'))
  with pytest.raises(trained_run.errors.WorkdirError, match='saved steps are 2, 4'):
    trained_run.load(trained_workdir, step=3)
  with pytest.raises(trained_run.errors.ConfigError, match='no validation'):
    evaluate.predictions(trained_run.load(trained_workdir), 'validation')
