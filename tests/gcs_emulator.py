"""gs:// without a network: a local GCS emulator for tests.

    from gcs_emulator import gcs_bucket  # the fixture, in a test file

    def test_remote_workdir(gcs_bucket):          # 'gs://test-1a2b3c4d'
      train.train_and_evaluate(config, gcs_bucket + '/run')

or, outside pytest, `with gcs_emulator() as emulator: ...emulator.url...`.

Each use starts gcp-storage-emulator (pip install gcp-storage-emulator
gcsfs) in a subprocess on a free localhost port, in memory (about 0.1-0.3 s
to answer), with one bucket of a random name, and points every client
nin_jax reaches gs:// through at it, by environment variables (inherited by
`python -m nin_jax.main` subprocesses) and, in this process, by clearing
what those clients cached:

    EPATH_USE_TF=false        etils.epath uses fsspec/gcsfs, not tf.io.gfile,
                              whose GCS client always calls googleapis.com
    STORAGE_EMULATOR_HOST     gcsfs and google-cloud-storage (which Orbax
                              asks whether a bucket has a hierarchical
                              namespace, when it lists and deletes steps)
    FSSPEC_GCS_TOKEN=anon     gcsfs sends no credentials (nor refreshes any)
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
                              gcsfs >= 2025.x would otherwise ask the Storage
                              Control API (gRPC, googleapis.com) for each
                              bucket's type and warn on every call
    TENSORSTORE_GCS_HTTP_URL  TensorStore's gcs kvstore (Orbax's arrays)
    GOOGLE_AUTH_TOKEN_FOR_TESTING
                              TensorStore: a fixed token, no credential search

The emulator is patched (see `_serve`, which this file runs as a script)
where it misses what these clients need: the moveTo call gcsfs renames
with (else 501, retried with backoff for ~33 s per file, then copy+delete);
the x-goog-generation header on downloads (without it TensorStore's OCDBT,
Orbax's default format, fails: "Malformed StorageGeneration");
ifGenerationMatch (ignored, so conditional writes never fail); and empty
uploadType=media bodies (the handler crashed; TensorStore retried for
minutes). Still not like GCS: no HEAD requests (501), no paging of lists,
one request at a time, and objects 'a' and 'a/' share their contents.
"""

import contextlib
import dataclasses
import os
import sys


def _serve(argv: list[str]) -> None:
  """`gcp-storage-emulator start ...` with the patches described above."""
  # pylint: disable=g-import-not-at-top
  from http import HTTPStatus
  from http import server as http_server
  from gcp_storage_emulator import server
  from gcp_storage_emulator.__main__ import main
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def generation(storage, bucket, name):
    try:
      return storage.get_file_obj(bucket, name)['generation']
    except NotFound:
      return '0'

  def move(request, response, storage, *_):
    p = request.params
    try:
      obj = objects._copy(request.base_url, storage, p['bucket_name'],  # pylint: disable=protected-access
                          p['object_id'], p['bucket_name'],
                          p['dest_object_id'])
      storage.delete_file(p['bucket_name'], p['object_id'])
      response.json(obj)
    except NotFound:
      response.status = HTTPStatus.NOT_FOUND

  download = objects.download

  def download_with_generation(request, response, storage, *_):
    download(request, response, storage)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params['bucket_name'],
                                 request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']

  def checking_preconditions(handler):
    def checked(request, response, storage, *_):
      if (request.data is None
          and request.query.get('uploadType') == ['media']):
        request._data = b''  # pylint: disable=protected-access
      want = request.query.get('ifGenerationMatch')
      name = (request.params.get('object_id')
              or (request.query.get('name') or [None])[0])
      if want and name and generation(
          storage, request.params['bucket_name'], name) != want[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'Precondition '
                                 f'ifGenerationMatch={want[0]} failed'}})
        return
      handler(request, response, storage)
    return checked

  objects.download = download_with_generation  # Also reached via alt=media.
  replaced = {download: download_with_generation,
              objects.insert: checking_preconditions(objects.insert),
              objects.delete: checking_preconditions(objects.delete)}
  server.HANDLERS = ((
      r'^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
      r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {'POST': move}),) + tuple(
          (regex, {method: replaced.get(f, f) for method, f in fs.items()})
          for regex, fs in server.HANDLERS)
  # One request at a time: let TensorStore's parallel ones queue, not be
  # refused (a full listen queue drops connections: a 1 s+ retry each).
  http_server.HTTPServer.request_queue_size = 128
  main(argv)


if __name__ == '__main__':
  _serve(sys.argv[1:])

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util
import json
import secrets
import socket
import subprocess
import tempfile
import time
from typing import Iterator
import urllib.parse
import urllib.request

import pytest


_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Emulator:
  url: str  # 'gs://<bucket>'
  endpoint: str  # 'http://127.0.0.1:<port>'
  env: dict[str, str]  # What was set in os.environ (merge into a subprocess's env=).
  startup_seconds: float

  def objects(self, prefix: str = '') -> list[str]:
    """Names of all objects under `prefix`, straight from the emulator."""
    bucket = self.url[len('gs://'):]
    query = f'?prefix={urllib.parse.quote(prefix)}' if prefix else ''
    with urllib.request.urlopen(
        f'{self.endpoint}/storage/v1/b/{bucket}/o{query}') as response:
      return sorted(item['name']
                    for item in json.load(response).get('items') or [])


def missing_packages() -> list[str]:
  """Not importlib.import_module: gcsfs reads its environment on import."""
  return [name for name in ('gcp_storage_emulator', 'gcsfs')
          if importlib.util.find_spec(name) is None]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(bucket: str, log) -> tuple[subprocess.Popen, str]:
  """The emulator process and its URL, once it answers (else RuntimeError)."""
  for _ in range(3):  # Another process may take the port before we bind it.
    endpoint = f'http://127.0.0.1:{_free_port()}'
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), 'start',
         f'--port={endpoint.rsplit(":", 1)[1]}', '--host=127.0.0.1',
         '--in-memory', f'--default-bucket={bucket}', '--quiet'],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
      try:
        with urllib.request.urlopen(endpoint + '/', timeout=1):
          return process, endpoint
      except OSError:
        time.sleep(0.02)
    process.kill()
    process.wait()
  log.seek(0)
  raise RuntimeError('The GCS emulator did not start:\n' + log.read()[-3000:])


def _forget_cached_clients() -> None:
  """What this process's clients decided under the previous environment.

  etils caches whether to use TensorFlow (`_is_tf_installed`, decided at
  the first epath.Path of any kind) and its fsspec file system; fsspec
  caches gcsfs instances (with their credentials and listings); gcsfs picks
  its class once, on import; Orbax caches google-cloud-storage buckets.
  """
  from etils.epath import backend, gpath
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  import fsspec
  if 'gcsfs' in sys.modules:
    import gcsfs.core
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    extended = sys.modules.get('gcsfs.extended_gcsfs')
    if extended:
      extended.ExtendedGcsFileSystem.clear_instance_cache()
      plain = os.environ.get('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT') == 'false'
      for protocol in ('gs', 'gcs'):
        fsspec.register_implementation(
            protocol, gcsfs.core.GCSFileSystem if plain
            else extended.ExtendedGcsFileSystem, clobber=True)
  if 'orbax.checkpoint' in sys.modules:
    # Orbax has no public way to forget its buckets. Not guarded: an Orbax
    # that moves this fails every emulator test here, loudly, instead of
    # letting one test's bucket client serve the next emulator.
    from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top
    gcs_utils.get_bucket.cache_clear()


@contextlib.contextmanager
def gcs_emulator(bucket: str | None = None) -> Iterator[Emulator]:
  """An emulator with one empty bucket, os.environ pointed at it (restored
  afterwards, as are the clients' caches); stopped on exit. A bucket of a
  random name by default, so no cache can mistake one emulator's objects
  for another's."""
  missing = missing_packages()
  if missing:
    raise ImportError('pip install ' + ' '.join(
        name.replace('_', '-') for name in missing))
  bucket = bucket or f'test-{secrets.token_hex(4)}'
  with tempfile.TemporaryFile('w+') as log:
    started = time.perf_counter()
    process, endpoint = _start(bucket, log)
    startup = time.perf_counter() - started
    env = {'EPATH_USE_TF': 'false',
           'STORAGE_EMULATOR_HOST': endpoint,
           'FSSPEC_GCS_TOKEN': 'anon',
           'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
           'TENSORSTORE_GCS_HTTP_URL': endpoint,
           'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator'}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    # fsspec read FSSPEC_* when it was imported; its config is live.
    import fsspec  # pylint: disable=g-import-not-at-top
    gcs_config = fsspec.config.conf.setdefault('gcs', {})
    saved_token = gcs_config.get('token', _UNSET)
    gcs_config['token'] = 'anon'
    try:
      _forget_cached_clients()
      yield Emulator(f'gs://{bucket}', endpoint, env, startup)
    finally:
      for name, value in saved.items():
        if value is None:
          os.environ.pop(name, None)
        else:
          os.environ[name] = value
      if saved_token is _UNSET:
        gcs_config.pop('token', None)
      else:
        gcs_config['token'] = saved_token
      _forget_cached_clients()
      process.terminate()
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _started_or_skip() -> contextlib.AbstractContextManager[Emulator]:
  missing = missing_packages()
  if missing:
    pytest.skip('gs:// tests need a local GCS emulator: pip install '
                + ' '.join(name.replace('_', '-') for name in missing))
  return gcs_emulator()


@pytest.fixture
def gcs_bucket() -> Iterator[str]:
  """'gs://<bucket>': a fresh, empty emulated bucket (skips, naming the
  packages to install, without them)."""
  with _started_or_skip() as emulator:
    yield emulator.url


@pytest.fixture
def emulated_gcs() -> Iterator[Emulator]:
  """The same, as the running `Emulator` (.url, .env, .objects())."""
  with _started_or_skip() as emulator:
    yield emulator
