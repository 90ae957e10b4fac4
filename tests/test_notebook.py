"""experiments/colab_tpu.ipynb runs top to bottom (CPU, test config)."""

import os

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_executes_on_cpu(monkeypatch):
  monkeypatch.setenv('NIN_JAX_NOTEBOOK_SMOKE_TEST', '1')
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  path = os.path.join(REPO, 'experiments', 'colab_tpu.ipynb')
  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(
      notebook, timeout=300, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
             for o in cell.outputs]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'final test accuracy' in text
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # The curves and the class maps.
