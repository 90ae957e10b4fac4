"""serve: the JSON API and the page, against `python -m nin_jax.serve`
started once for this file (the published cifar10 model, a gallery of a
small folder), and the page in headless Chromium."""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
from PIL import Image
import pytest

from nin_jax import plots
from nin_jax import predict
from nin_jax import serve
from nin_jax.training import trained_run
from tests import main_runner

pytest.importorskip('starlette', reason='the serve extra is not installed')
pytest.importorskip('uvicorn', reason='the serve extra is not installed')
pytest.importorskip('python_multipart',
                    reason='the serve extra is not installed')

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')
START_TIMEOUT = 180


def _cifar_like(seed: int, size: int = 32) -> np.ndarray:
  """A CIFAR-10-like picture: sky above, ground below, a blob in between."""
  rng = np.random.default_rng(seed)
  rows = np.linspace(0, 1, size)[:, None, None]
  sky, ground = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  image = (1 - rows) * sky + rows * ground + np.zeros((size, size, 3))
  y, x = np.ogrid[:size, :size]
  centre = rng.uniform(size * 0.3, size * 0.7, 2)
  blob = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 < (size * 0.2) ** 2
  image[blob] = rng.uniform(0, 255, 3)
  image += rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


def _bomb() -> bytes:
  """A 40-byte-IDAT PNG whose header says 100000x100000 pixels."""
  png = bytearray(_encoded(np.zeros((1, 1), np.uint8)))
  png[16:24] = struct.pack('>II', 100_000, 100_000)  # IHDR width, height.
  png[29:33] = struct.pack('>I', zlib.crc32(bytes(png[12:29])))
  return bytes(png)


def _request(url, body=None, content_type=None, method=None, timeout=60):
  """(status, parsed JSON or raw bytes) of one HTTP request."""
  request = urllib.request.Request(url, data=body, method=method)
  if content_type:
    request.add_header('Content-Type', content_type)
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      status, data, kind = (response.status, response.read(),
                            response.headers.get('content-type', ''))
  except urllib.error.HTTPError as e:
    status, data, kind = e.code, e.read(), e.headers.get('content-type', '')
  return status, json.loads(data) if 'json' in kind else data


def _announced_too_large(url, size=1_100_000):
  """(status, answer) of a request whose header announces `size` bytes: the
  server answers from the header, without reading the body."""
  host, port = url.split('//')[1].split(':')
  connection = http.client.HTTPConnection(host, int(port), timeout=60)
  connection.putrequest('POST', '/predict')
  connection.putheader('Content-Type', 'multipart/form-data; boundary=b')
  connection.putheader('Content-Length', str(size))
  connection.endheaders()
  response = connection.getresponse()
  answer = json.loads(response.read())
  connection.close()
  return response.status, answer


def _predict(url, files, query='k=5'):
  body, content_type = serve.encode_form(files)
  return _request(f'{url}/predict?{query}', body, content_type)


class Server:
  """`python -m nin_jax.serve` in a subprocess; `url` waits for its line."""

  def __init__(self, args):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'nin_jax.serve', '--port=0', *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
    self.lines, self._url, self._ready = [], None, threading.Event()
    self._started = time.perf_counter()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)
      if line.startswith('Serving') and not self._ready.is_set():
        self._url = line.split(' on ')[1].split()[0].rstrip('/')
        print(f'started in {time.perf_counter() - self._started:.1f} s')
        self._ready.set()
    self._ready.set()  # It ended.

  @property
  def url(self) -> str:
    self._ready.wait(START_TIMEOUT)
    assert self._url, 'the server did not start:\n' + ''.join(self.lines)
    return self._url

  def stop(self) -> int:
    self.process.send_signal(signal.SIGINT)
    try:
      return self.process.wait(30)
    except subprocess.TimeoutExpired:
      self.process.kill()
      return self.process.wait()


@pytest.fixture(scope='module')
def gallery(tmp_path_factory):
  """A small folder: one picture under two class names (so that one of the
  two is a wrong prediction), one in no class folder, a damaged file."""
  root = tmp_path_factory.mktemp('gallery')
  for name in ('airplane', 'frog'):
    (root / name).mkdir()
    Image.fromarray(_cifar_like(1)).save(root / name / 'picture.png')
  Image.fromarray(_cifar_like(2)).save(root / 'loose.jpg')
  (root / 'frog' / 'damaged.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 9)
  (root / 'notes.txt').write_text('not listed')
  return root


@pytest.fixture(scope='module')
def server(gallery):
  started = Server(['--pretrained=cifar10', f'--images={gallery}',
                    '--max_upload_mb=1'])
  yield started
  assert started.stop() == 0, ''.join(started.lines)


def test_answers_are_predicts(server, tmp_path):
  """Several images in one request: predict's top-k, and (k = all classes)
  maps whose means are the logits, as the gap head computes them."""
  files = []
  for i, fmt in enumerate(('PNG', 'JPEG', 'BMP')):
    path = tmp_path / f'image{i}.{fmt.lower()}'
    size = (32, 45, 200)[i]  # Any size: resized as predict resizes.
    path.write_bytes(_encoded(_cifar_like(10 + i, size), fmt))
    files.append(str(path))
  run = trained_run.load(trained_run.find_published('cifar10'))
  expected = predict.predict_files(run, files, top_k=3)  # Compiles here ...
  url = server.url  # ... while the server starts.
  status, answer = _predict(
      url, [(os.path.basename(f), open(f, 'rb').read()) for f in files], 'k=3')
  assert status == 200, answer
  assert [image['name'] for image in answer['images']] == [
      os.path.basename(f) for f in files]
  for got, wanted in zip(answer['images'], expected):
    assert [t['name'] for t in got['top_k']] == [
        t['name'] for t in wanted['top_k']]
    np.testing.assert_allclose([t['probability'] for t in got['top_k']],
                               [t['probability'] for t in wanted['top_k']],
                               rtol=1e-4, atol=1e-6)  # Other batch sizes.
    assert 'maps' not in got

  status, answer = _predict(url, [('a.png', open(files[0], 'rb').read())],
                            'k=10&maps=array')
  assert status == 200, answer
  (image,) = answer['images']
  maps = np.array([m['values'] for m in image['maps']])  # (10, 8, 8)
  assert maps.shape == (10, 8, 8)
  logits = maps.mean(axis=(1, 2))
  probabilities = np.exp(logits - logits.max())
  np.testing.assert_allclose(probabilities / probabilities.sum(),
                             [t['probability'] for t in image['top_k']],
                             rtol=1e-4, atol=1e-6)

  status, answer = _predict(url, [('a.png', open(files[0], 'rb').read())],
                            'k=2&maps=png')
  (image,) = answer['images']
  assert [m['class'] for m in image['maps']] == [
      t['class'] for t in image['top_k']]
  drawn = Image.open(io.BytesIO(base64.b64decode(
      image['maps'][0]['png'].split(',', 1)[1])))
  assert drawn.size == (128, 128) and drawn.mode == 'RGB'
  low, top = image['map_range']
  assert low <= 0 < top


def test_bad_input_is_a_4xx_line_and_the_server_keeps_serving(server):
  good = _encoded(_cifar_like(3))
  url = server.url
  body, multipart = serve.encode_form([('x.png', good)])
  cut_body = body[:len(body) // 2]
  bad = {
      # 3 of the issue: a non-image, a truncated file, a decompression
      # bomb, an image over the size limit, malformed requests.
      'not an image': _predict(url, [('notes.txt', b'hello, not an image')]),
      'truncated': _predict(url, [('cut.png', good[:len(good) // 2])]),
      'bomb': _predict(url, [('bomb.png', _bomb())]),
      'over the size limit': _announced_too_large(url),
      'too many images': _predict(url, [('x.png', good)] * 33),
      'not multipart': _request(f'{url}/predict', b'{"image": 1}',
                                'application/json'),
      'no boundary': _request(f'{url}/predict', body, 'multipart/form-data'),
      'cut short': _request(f'{url}/predict', cut_body, multipart),
      'garbage': _request(f'{url}/predict', b'\0\1\2' * 100, multipart),
      'no image field': _request(f'{url}/predict', *serve.encode_form(
          [('x.png', good)], field='picture')),
      'k not a number': _predict(url, [('x.png', good)], 'k=five'),
      'k of 0': _predict(url, [('x.png', good)], 'k=0'),
      'unknown maps': _predict(url, [('x.png', good)], 'maps=svg'),
      'GET /predict': _request(f'{url}/predict'),
      'a path out of the gallery': _request(
          f'{url}/images/..%2F..%2F..%2Fetc%2Fpasswd'),
      'an unlisted file': _request(f'{url}/images/notes.txt'),
  }
  for what, (status, answer) in bad.items():
    assert 400 <= status < 500, (what, status, answer)
    if isinstance(answer, dict):
      assert '\n' not in answer['error'] and answer['error'], (what, answer)
    status, answer = _predict(url, [('x.png', good)], 'k=2')
    assert status == 200, (what, answer)
  assert bad['bomb'][0] == bad['over the size limit'][0] == 413
  assert 'too large to decode safely' in bad['bomb'][1]['error']
  assert 'not an image' in bad['not an image'][1]['error']


def test_load_of_200_requests_from_8_clients(server):
  images = [_encoded(_cifar_like(20 + i)) for i in range(8)]
  url = server.url

  def client(index):
    statuses = []
    for j in range(25):
      query = 'k=5&maps=png' if j % 5 == 0 else 'k=5'
      status, answer = _predict(url, [(f'{index}.png', images[index])], query)
      statuses.append(status)
      assert status == 200, answer
    return statuses

  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    statuses = sum(pool.map(client, range(8)), [])
  assert statuses == [200] * 200
  print(f'200 requests in {time.perf_counter() - started:.1f} s')


def _gallery_page(url, wrong=0):
  for _ in range(300):  # Predicted in the background, seconds at most.
    status, page = _request(f'{url}/gallery?wrong={wrong}')
    assert status == 200, page
    if page['predicted'] == page['total']:
      return page
    time.sleep(0.1)
  raise AssertionError(f'the gallery was not predicted: {page}')


def test_gallery_lists_marks_and_serves_only_its_files(server, gallery):
  page = _gallery_page(server.url)
  assert [item['path'] for item in page['items']] == [
      'loose.jpg', 'airplane/picture.png', 'frog/damaged.png',
      'frog/picture.png']
  loose, airplane, damaged, frog = page['items']
  assert loose['true'] is None and not loose['wrong']
  assert 'error' in damaged
  assert airplane['predicted'] == frog['predicted']  # The same picture ...
  assert airplane['wrong'] or frog['wrong']  # ... is wrong in one of them.
  wrong = _gallery_page(server.url, wrong=1)
  assert [item['path'] for item in wrong['items']] == [
      item['path'] for item in (airplane, frog) if item['wrong']]
  status, data = _request(f'{server.url}/images/frog/picture.png')
  assert status == 200
  assert data == (gallery / 'frog' / 'picture.png').read_bytes()


def test_command_line_mistakes_are_one_line(monkeypatch, tmp_path, capsys):
  assert main_runner.run_command(serve, '--pretrained=cifar10',
                                 '--port=70000') == 2
  assert main_runner.run_command(serve, '--pretrained=cifar10',
                                 f'--images={tmp_path / "none"}') == 2
  monkeypatch.setitem(sys.modules, 'uvicorn', None)  # Not installed.
  assert main_runner.run_command(serve, '--pretrained=cifar10') == 2
  errors = capsys.readouterr().err.strip().splitlines()
  assert len(errors) == 3
  assert 'from 0 to 65535' in errors[0] and 'not a folder' in errors[1]
  assert 'pip install -e ".[serve]"' in errors[2]


def test_map_overlay_is_class_maps_figures_look():
  """Over a white image, a map at its low end is inferno's black at 60% over
  78% grey; at its top, inferno's pale yellow."""
  image = np.ones((2, 2, 3))
  class_map = np.zeros((4, 4))
  class_map[:2] = 1.0
  drawn = plots.map_overlay(image, class_map, 0.0, 1.0).astype(float) / 255
  assert drawn.shape == (4, 4, 3)
  grey = (1 + 0.4) / 1.8
  np.testing.assert_allclose(drawn[3, 3], 0.4 * grey + 0.6 * np.array(
      [0.001462, 0.000466, 0.013866]), atol=1 / 255)
  np.testing.assert_allclose(drawn[0, 0], 0.4 * grey + 0.6 * np.array(
      [0.988362, 0.998364, 0.644924]), atol=1 / 255)


# The page, in a real browser.

@pytest.fixture(scope='module')
def browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip('needs Debian\'s chromium and chromium-driver (apt-get '
                'install chromium chromium-driver; .ci/run installs them)')
  webdriver = pytest.importorskip('selenium.webdriver')
  from selenium.webdriver.chrome import service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-gpu',
                   '--disable-dev-shm-usage', '--window-size=1000,1000'):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=service.Service(CHROMEDRIVER),
                            options=options)
  yield driver
  driver.quit()


def _wait(driver, condition, timeout=60):
  from selenium.webdriver.support import ui  # pylint: disable=g-import-not-at-top
  return ui.WebDriverWait(driver, timeout).until(lambda _: condition())


def test_page_shows_top5_and_switches_maps(server, browser, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'upload.png'
  Image.fromarray(_cifar_like(8, 64)).save(path)
  browser.get(server.url + '/')
  _wait(browser, lambda: 'cifar10' in browser.find_element(By.ID, 'model').text)
  browser.find_element(By.ID, 'file').send_keys(str(path))
  _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, '.bar'))
        == 5)
  bars = browser.find_elements(By.CSS_SELECTOR, '.bar')
  shown = [float(bar.get_attribute('data-p')) for bar in bars]
  assert shown == sorted(shown, reverse=True)
  assert 0.95 < sum(shown) <= 1 + 1e-6  # The top 5 of 10 classes: 0.997.
  widths = [bar.find_element(By.CSS_SELECTOR, '.fill').size['width']
            for bar in bars]
  assert widths[0] > widths[-1]
  overlay = browser.find_element(By.ID, 'overlay')
  first = overlay.get_attribute('src')
  assert first.startswith('data:image/png') and 'selected' in bars[0].get_attribute('class')
  bars[2].click()
  _wait(browser, lambda: overlay.get_attribute('src') != first)
  assert 'selected' in bars[2].get_attribute('class')
  assert overlay.get_attribute('data-class') == bars[2].find_element(
      By.CSS_SELECTOR, '.name').text
  browser.save_screenshot(str(tmp_path / 'page.png'))
  print('screenshot:', tmp_path / 'page.png')


def test_page_gallery_marks_wrong_predictions(server, browser):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  _gallery_page(server.url)
  browser.get(server.url + '/')
  _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, '.item'))
        == 4)
  wrong = browser.find_elements(By.CSS_SELECTOR, '.item.wrong')
  assert 1 <= len(wrong) <= 2
  assert {item.get_attribute('data-path') for item in wrong} <= {
      'airplane/picture.png', 'frog/picture.png'}
  browser.find_element(By.ID, 'only-wrong').click()
  _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, '.item'))
        == len(wrong))
  # A click on a thumbnail explores it.
  browser.find_element(By.CSS_SELECTOR, '.item.wrong').click()
  _wait(browser, lambda: browser.find_element(By.ID, 'photo-name').text
        .endswith('picture.png'))
