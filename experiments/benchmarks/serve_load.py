"""Requests/s and latency of python -m nin_jax.serve on the loopback.

  pip install -e ".[serve]"
  python experiments/benchmarks/serve_load.py [--pretrained=cifar10]
      [--requests=200] [--clients=1,8] [--out=serve_load.json]

Starts the server (the published model, on a free port), then for each
number of clients and each kind of answer (top-5 only; top-5 with its five
class maps as PNGs) sends --requests POST /predict requests of one CIFAR-10
test-like image each (32x32 PNG; --image=FILE for another), each client
sending its next request when the last one is answered; reports requests/s,
the median, p95 and largest latency, and every error (there should be
none). Also times the start-up (imports, loading, the compiles) and the
first request against the next ones: the compiles happen before the server
listens, so the first request is not slower.
"""

import argparse
import concurrent.futures
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, REPO)
from nin_jax import serve  # pylint: disable=g-import-not-at-top,wrong-import-position


def _image(path: str | None) -> bytes:
  if path:
    with open(path, 'rb') as f:
      return f.read()
  rng = np.random.default_rng(0)  # Sky, ground and a blob, like a photo.
  rows = np.linspace(0, 1, 32)[:, None, None]
  pixels = (1 - rows) * [90, 140, 220] + rows * [70, 110, 40] + np.zeros(
      (32, 32, 3))
  pixels[10:22, 8:24] = [200, 160, 120]
  pixels += rng.normal(0, 10, pixels.shape)
  buffer = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


def _post(url: str, body: bytes, content_type: str) -> tuple[float, str]:
  """(seconds, '' or the error) of one request."""
  request = urllib.request.Request(url, data=body,
                                   headers={'Content-Type': content_type})
  started = time.perf_counter()
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      json.loads(response.read())
      error = '' if response.status == 200 else f'status {response.status}'
  except (urllib.error.URLError, OSError, ValueError) as e:
    error = f'{type(e).__name__}: {e}'
  return time.perf_counter() - started, error


def _load(url: str, body: bytes, content_type: str, requests: int,
          clients: int) -> dict[str, float | int | list[str]]:
  per_client = [requests // clients + (i < requests % clients)
                for i in range(clients)]

  def client(count):
    return [_post(url, body, content_type) for _ in range(count)]

  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = sum(pool.map(client, per_client), [])
  elapsed = time.perf_counter() - started
  latencies = np.array([seconds for seconds, _ in results]) * 1000
  errors = [error for _, error in results if error]
  return {'clients': clients, 'requests': requests,
          'requests_per_s': round(requests / elapsed, 1),
          'p50_ms': round(float(np.percentile(latencies, 50)), 1),
          'p95_ms': round(float(np.percentile(latencies, 95)), 1),
          'max_ms': round(float(latencies.max()), 1),
          'errors': len(errors), 'first_errors': errors[:3]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pretrained', default='cifar10')
  parser.add_argument('--workdir', default=None,
                      help='A training run instead of --pretrained.')
  parser.add_argument('--image', default=None)
  parser.add_argument('--requests', type=int, default=200)
  parser.add_argument('--clients', default='1,8')
  parser.add_argument('--out', default=None, help='Also write the JSON here.')
  parser.add_argument('--note', default='', help='What else ran on the '
                      'machine, say; kept in the JSON.')
  args = parser.parse_args()

  source = (f'--workdir={args.workdir}' if args.workdir
            else f'--pretrained={args.pretrained}')
  started = time.perf_counter()
  server = subprocess.Popen(
      [sys.executable, '-m', 'nin_jax.serve', source, '--port=0'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in server.stdout:
    lines.append(line)
    if line.startswith('Serving'):
      break
  else:
    sys.exit('the server did not start:\n' + ''.join(lines))
  start_up = time.perf_counter() - started
  base = line.split(' on ')[1].split()[0].rstrip('/')
  try:
    body, content_type = serve.encode_form([('image.png', _image(args.image))])
    first, error = _post(f'{base}/predict?k=5&maps=png', body, content_type)
    assert not error, error
    next_ones = sorted(_post(f'{base}/predict?k=5&maps=png', body,
                             content_type)[0] for _ in range(20))
    report = {
        'server': ' '.join([source]),
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, '
                   f'{platform.platform()}',
        'note': args.note,
        'batch_sizes': list(serve.BATCH_SIZES),
        'start_up_s': round(start_up, 1),
        'first_request_ms': round(first * 1000, 1),
        'next_20_median_ms': round(next_ones[10] * 1000, 1),
        'load': []}
    for clients in [int(c) for c in args.clients.split(',')]:
      for query in ('k=5', 'k=5&maps=png'):
        row = _load(f'{base}/predict?{query}', body, content_type,
                    args.requests, clients)
        row['query'] = query
        report['load'].append(row)
        print(f'{clients} clients, {query:13}: {row["requests_per_s"]:6.1f} '
              f'requests/s, p50 {row["p50_ms"]:6.1f} ms, p95 '
              f'{row["p95_ms"]:6.1f} ms, max {row["max_ms"]:6.1f} ms, '
              f'{row["errors"]} errors', flush=True)
  finally:
    server.send_signal(signal.SIGINT)
    server.wait(60)
  print(f'start-up {report["start_up_s"]} s; first request '
        f'{report["first_request_ms"]} ms, the next 20: median '
        f'{report["next_20_median_ms"]} ms')
  print(json.dumps(report, indent=1))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()
