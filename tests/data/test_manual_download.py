"""A manual download with the right content but other bytes (repackaged):
TFDS refuses it, and the error names the files and the public routes."""

import gzip
import io
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums

from nin_jax.data import input_pipeline
from nin_jax import errors

URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
FILENAME = 'cifar-10-binary.tar.gz'
LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
          'horse', 'ship', 'truck')


def _tar() -> bytes:
  """A tiny CIFAR-10 binary tar: one record per training batch, two test."""
  rng = np.random.default_rng(0)

  def records(count):
    return b''.join(bytes([i % 10]) + rng.integers(
        0, 256, 3072, dtype=np.uint8).tobytes() for i in range(count))

  members = {'batches.meta.txt': '\n'.join(LABELS).encode() + b'\n',
             'test_batch.bin': records(2)}
  members.update({f'data_batch_{i}.bin': records(1) for i in range(1, 6)})
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode='w') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


@pytest.fixture
def manual(tmp_path, monkeypatch):
  """TFDS's record points at an 'original' gzip of the tiny tar; the manual
  dir holds a re-gzipped copy (other level and mtime): same content."""
  monkeypatch.setattr(input_pipeline, '_host_reachable',
                      lambda url: pytest.fail('must not touch the network'))
  tar = _tar()
  original = tmp_path / 'original' / FILENAME
  original.parent.mkdir()
  original.write_bytes(gzip.compress(tar, compresslevel=9, mtime=0))
  expected = checksums.compute_url_info(original)
  builder_cls = type(tfds.builder('cifar10', data_dir=str(tmp_path)))
  monkeypatch.setattr(builder_cls, 'url_infos', {URL: expected})
  directory = tmp_path / 'downloads' / 'manual'
  directory.mkdir(parents=True)
  repackaged = directory / FILENAME
  repackaged.write_bytes(gzip.compress(tar, compresslevel=6, mtime=1234567890))
  assert checksums.compute_url_info(repackaged) != expected
  return tmp_path, repackaged, expected


def test_repackaged_file_gets_a_clear_checksum_error(manual):
  data_dir, repackaged, expected = manual
  before = repackaged.read_bytes()
  with pytest.raises(errors.DatasetUnavailableError) as raised:
    input_pipeline._prepare_tfds('cifar10', str(data_dir))
  message = str(raised.value)
  actual = checksums.compute_url_info(repackaged)
  assert str(repackaged) in message
  assert 'Checksum mismatch' in message and 'repackaged' in message
  assert f'{int(actual.size)} bytes, sha256 {actual.checksum}' in message
  assert f'{int(expected.size)} bytes, sha256 {expected.checksum}' in message
  assert 'place the original file' in message
  assert 'ROOT/train/<class>/<image>' in message
  assert '--config.dataset=folder:ROOT' in message
  assert raised.value.__cause__ is None  # One message, no TFDS traceback.
  assert repackaged.read_bytes() == before  # Not deleted, not changed.
  assert not input_pipeline._builder('cifar10', str(data_dir)).is_prepared()


def test_the_original_file_in_its_place_prepares_the_dataset(manual):
  """The route the error names first, with the fixture's files."""
  data_dir, repackaged, _ = manual
  repackaged.write_bytes((data_dir / 'original' / FILENAME).read_bytes())
  builder = input_pipeline._prepare_tfds('cifar10', str(data_dir))
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == 5
  assert builder.info.splits['test'].num_examples == 2
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='test'))))
  assert example['image'].shape == (32, 32, 3)
  assert builder.info.features['label'].names == list(LABELS)
