"""A local web page and JSON API: top-5 classes and class maps of any image.

  pip install -e ".[serve]"
  python -m nin_jax.serve --pretrained=cifar10 [--port=8000] [--host=127.0.0.1]
      [--images=DIR]
  python -m nin_jax.serve --workdir=DIR [--step=N] ...

Prints the address and serves, until Ctrl-C:

  GET  /              the page: drop or choose an image, see its top-5
                      classes as bars and the class map of the selected
                      class drawn over it (a click on a class switches the
                      map); with --images, a gallery of that folder's images
                      with their true class (the folder an image is in, when
                      that is a class name), wrong predictions marked, and a
                      filter for them.
  POST /predict       multipart/form-data, one or more files in fields named
                      `image`; query: k (classes per image, default 5) and
                      maps (none, png or array). Answers
                      {"images": [{"name", "top_k": [{"class", "name",
                      "probability"}, ...], "maps": [...], "map_range"}]}.
  GET  /api/info      the model: its name, classes, image shape.
  GET  /gallery       with --images: the listed images and their predictions
                      (query: offset, limit, wrong=1 for the wrong ones).
  GET  /images/PATH   with --images: one of the listed files, nothing else.

Each image is read as predict reads files (predict.decode_image: any format
Pillow reads, converted to the dataset's channels, resized to its image
size); the maps are those of visualize (the last mlpconv's maps, upsampled
bilinearly), drawn by plots.map_overlay as class_maps.png draws them, on one
colour scale per image from 0 to the largest value of its returned maps. As
arrays they are the maps at the network's resolution (8x8 for CIFAR-10).

Requests are batched: what arrives while the model is busy goes into its
next batch, padded to one of BATCH_SIZES, all compiled before the server
starts listening, so no request waits for a compile. Uploads are read into
memory (never written to disk), at most --max_upload_mb a request; a
request that is not a well-formed upload, or an image that cannot be read,
is answered 4xx with {"error": "one line"}, and the server keeps serving.

The web library (Starlette, served by uvicorn; python-multipart parses the
uploads) is the optional `serve` extra: the trainer does not need it.
"""

import asyncio
import base64
import concurrent.futures
import dataclasses
import importlib.resources
import io
import itertools
import os
import queue
import socket
import threading
from typing import Any, Sequence

from absl import flags
import numpy as np

from nin_jax import cli
from nin_jax.data import image_folder
from nin_jax import errors
from nin_jax import plots
from nin_jax import predict
from nin_jax.training import trained_run
from nin_jax import visualize

FLAGS = flags.FLAGS

# The batch sizes the model is compiled for; a batch is padded to the
# smallest that holds it (larger ones are split).
BATCH_SIZES = (1, 8)
# Images in one request, at most.
MAX_IMAGES = 32
# Pixels of one uploaded image, at most (checked from its header, before it
# is decoded): 25 megapixels, about 75 MB decoded.
MAX_PIXELS = 25_000_000
# What ?maps= can ask for.
MAP_KINDS = ('none', 'png', 'array')
# Gallery images listed, at most, and shown per page by default.
MAX_GALLERY = 100_000
GALLERY_PAGE = 120
# Queue priorities: requests go before the gallery's background work.
_REQUEST, _GALLERY = 0, 1


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  cli.define_run_flags(reads_data=False)
  flags.DEFINE_integer('port', 8000, 'Port to listen on (0: any free one; '
                       'the address is printed).')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on: only this '
                      'machine by default; 0.0.0.0 for every network '
                      '(anyone who reaches it can use the model).')
  flags.DEFINE_string('images', None, 'A folder of images for the gallery '
                      '(e.g. a test split, DIR/<class>/<image>): each is '
                      'predicted in the background; its true class is the '
                      'name of the folder it is in, when that is a class.')
  flags.DEFINE_integer('max_upload_mb', 20, 'Largest request body, in MB.')


class RequestError(Exception):
  """A request the server refuses: its HTTP status and one-line message."""

  def __init__(self, status: int, message: str):
    super().__init__(' '.join(message.split()))
    self.status = status


class Model:
  """The trained run behind a queue: one thread runs its batches.

  submit() hands over raw images (n, H, W, C) and returns a future of their
  (probabilities (n, classes), class maps (n, h, w, classes) or None for a
  run without the gap head). What is queued while a batch runs goes into
  the next one, requests first, then the gallery's work.
  """

  def __init__(self, run: trained_run.TrainedRun):
    self.run = run
    self.has_maps = run.config.model.head == 'gap'
    self.drawn_size = visualize.drawn_size(*run.info.image_shape[:2])
    self._queue = queue.PriorityQueue()
    self._order = itertools.count()  # Keeps equal priorities in order.
    self._thread = threading.Thread(target=self._serve, daemon=True,
                                    name='nin_jax.serve model')
    self._thread.start()

  def _forward(self, raw_images: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray | None]:
    if self.has_maps:
      probs, maps = visualize.probabilities_and_class_maps(self.run,
                                                           raw_images)
      return np.asarray(probs), np.asarray(maps)
    return np.asarray(self.run.probabilities(raw_images)), None

  def _padded_forward(self, images: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """The batch through the model at a compiled size; padding dropped."""
    outputs = []
    for start in range(0, len(images), BATCH_SIZES[-1]):
      chunk = images[start:start + BATCH_SIZES[-1]]
      size = min(s for s in BATCH_SIZES if s >= len(chunk))
      padded = np.zeros((size, *chunk.shape[1:]), np.float32)
      padded[:len(chunk)] = chunk
      probs, maps = self._forward(padded)
      outputs.append((probs[:len(chunk)],
                      None if maps is None else maps[:len(chunk)]))
    probs = np.concatenate([p for p, _ in outputs])
    maps = (None if not self.has_maps
            else np.concatenate([m for _, m in outputs]))
    return probs, maps

  def warm_up(self) -> None:
    """Compiles every batch size and runs what a request runs (decoding a
    PNG and a JPEG, drawing a map) now, so that the first requests are as
    fast as the rest."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    shape = self.run.info.image_shape
    for size in BATCH_SIZES:
      probs, maps = self._padded_forward(np.zeros((size, *shape), np.float32))
    for fmt in ('PNG', 'JPEG'):
      encoded = io.BytesIO()
      Image.new('RGB', (4, 4)).save(encoded, format=fmt)
      image = predict.decode_image(encoded, fmt, shape, self.run.pixel_max)
    if maps is not None:
      draw_maps(self, image, maps[0], [0], 'png')

  def submit(self, images: np.ndarray, priority: int = _REQUEST
             ) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    self._queue.put((priority, next(self._order), images, future))
    return future

  def _serve(self) -> None:
    while True:
      jobs = [self._queue.get()]
      count = len(jobs[0][2])
      while count < BATCH_SIZES[-1]:
        try:
          job = self._queue.get_nowait()
        except queue.Empty:
          break
        jobs.append(job)
        count += len(job[2])
      try:
        probs, maps = self._padded_forward(
            np.concatenate([images for _, _, images, _ in jobs]))
      except Exception as e:  # pylint: disable=broad-except
        for *_, future in jobs:
          future.set_exception(e)
        continue
      start = 0
      for _, _, images, future in jobs:
        end = start + len(images)
        future.set_result((probs[start:end],
                           None if maps is None else maps[start:end]))
        start = end


def _png(pixels: np.ndarray) -> str:
  """uint8 pixels as a data: URL of a PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  # Fastest compression: 128x128 pixels are a few kB whichever level.
  Image.fromarray(pixels).save(buffer, format='PNG', compress_level=1)
  return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def draw_maps(model: Model, raw_image: np.ndarray, maps: np.ndarray,
              classes: Sequence[int], kind: str) -> dict[str, Any]:
  """The class maps of one image for these classes: {'maps': [{'class',
  'name', 'png' (a data: URL) or 'values' (h x w)}], 'map_range'}: one
  colour scale for all of them, from 0 (or below, if a map is) to the
  largest value."""
  names = model.run.info.class_names
  picked = maps[..., list(classes)]
  low = min(0.0, float(picked.min()))
  top = max(float(picked.max()), low + 1e-6)
  drawn = []
  for c in classes:
    entry = {'class': int(c), 'name': names[c]}
    if kind == 'array':
      entry['values'] = np.round(maps[..., c].astype(np.float64), 5).tolist()
    else:
      upsampled = np.asarray(visualize.upsample(
          maps[None, ..., c:c + 1], model.drawn_size))[0, ..., 0]
      entry['png'] = _png(plots.map_overlay(
          raw_image / model.run.pixel_max, upsampled, low, top))
    drawn.append(entry)
  return {'maps': drawn, 'map_range': [low, top]}


@dataclasses.dataclass
class Upload:
  name: str
  data: bytes


async def read_uploads(content_type: str, body_chunks: Any, limit: int
                       ) -> list[Upload]:
  """The files in the `image` fields of a multipart/form-data body, whose
  chunks come from `body_chunks` (an async iterator), held in memory only;
  any fault of the request is a RequestError."""
  from python_multipart import multipart  # pylint: disable=g-import-not-at-top
  from python_multipart import exceptions  # pylint: disable=g-import-not-at-top

  kind, options = multipart.parse_options_header(content_type)
  if kind != b'multipart/form-data':
    raise RequestError(415, 'send the images as multipart/form-data, each in '
                       'a field named image (curl -F image=@FILE)')
  boundary = options.get(b'boundary')
  if not boundary:
    raise RequestError(400, 'the multipart/form-data request has no boundary')

  parts, state = [], {'ended': False}
  current = {}

  def on_part_begin():
    current.clear()
    current.update(headers={}, field=b'', value=b'', data=[])

  def on_header_field(data, start, end):
    current['field'] += data[start:end]

  def on_header_value(data, start, end):
    current['value'] += data[start:end]

  def on_header_end():
    current['headers'][current['field'].lower()] = current['value']
    current['field'], current['value'] = b'', b''

  def on_part_data(data, start, end):
    current['data'].append(data[start:end])

  def on_part_end():
    disposition = current['headers'].get(b'content-disposition', b'')
    _, params = multipart.parse_options_header(disposition)
    if params.get(b'name') == b'image':
      if len(parts) == MAX_IMAGES:
        raise RequestError(413, f'more than {MAX_IMAGES} images in one '
                           'request: send them in several')
      # The client's name for the file, shortened: only ever shown.
      name = params.get(b'filename', b'').decode('utf-8', 'replace')[:200]
      parts.append(Upload(name or f'image {len(parts) + 1}',
                          b''.join(current['data'])))

  def on_end():
    state['ended'] = True

  parser = multipart.MultipartParser(boundary, {
      'on_part_begin': on_part_begin, 'on_header_field': on_header_field,
      'on_header_value': on_header_value, 'on_header_end': on_header_end,
      'on_part_data': on_part_data, 'on_part_end': on_part_end,
      'on_end': on_end})

  size = 0
  async for chunk in body_chunks:
    size += len(chunk)
    if size > limit:
      raise RequestError(413, f'the request is over {limit // 2**20} MB '
                         '(--max_upload_mb): send smaller or fewer images')
    try:
      parser.write(chunk)
    except exceptions.FormParserError as e:
      raise RequestError(400, f'malformed multipart/form-data body ({e})'
                         ) from None
  if not state['ended']:
    raise RequestError(400, 'the multipart/form-data body ends before its '
                       'closing boundary (cut short?)')
  if not parts:
    raise RequestError(400, 'no image in the request: send each image in '
                       'a field named image (curl -F image=@FILE)')
  return parts


class Gallery:
  """The images of a folder, predicted in the background, in name order."""

  def __init__(self, root: str, model: Model):
    self.root = os.path.realpath(root)
    self.model = model
    names = model.run.info.class_names
    extensions = image_folder.image_extensions()
    self.items = []
    for folder, dirs, files in os.walk(self.root):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      for file in sorted(files):
        if (file.startswith('.')
            or os.path.splitext(file)[1].lower() not in extensions):
          continue
        truth = os.path.basename(folder) if folder != self.root else None
        self.items.append({
            'path': os.path.relpath(os.path.join(folder, file), self.root),
            'true': truth if truth in names else None})
        if len(self.items) == MAX_GALLERY:
          break
      if len(self.items) == MAX_GALLERY:
        break
    if not self.items:
      raise errors.ImageError(f'--images={root} holds no image files (PNG, '
                              'JPEG, ... in it or its subfolders).')
    # Only these files are ever served, looked up by exact name.
    self.files = {item['path']: os.path.join(self.root, item['path'])
                  for item in self.items}
    self.done = 0
    self._thread = threading.Thread(target=self._predict_all, daemon=True,
                                    name='nin_jax.serve gallery')

  def start(self) -> None:
    self._thread.start()

  def _predict_all(self) -> None:
    """Predicts the items in chunks; each item is replaced by a new dict
    (never changed in place), which requests may be reading meanwhile."""
    run = self.model.run
    for start in range(0, len(self.items), BATCH_SIZES[-1]):
      indices = range(start, min(start + BATCH_SIZES[-1], len(self.items)))
      images, readable = [], []
      for i in indices:
        item = self.items[i]
        try:
          images.append(predict.load_image(self.files[item['path']],
                                           run.info.image_shape, run.pixel_max))
          readable.append(i)
        except errors.ImageError as e:
          self.items[i] = {**item, 'error': str(e)}
      if images:
        probs, _ = self.model.submit(np.stack(images), _GALLERY).result()
        for i, row in zip(readable, probs):
          best = int(np.argmax(row))
          predicted = run.info.class_names[best]
          truth = self.items[i]['true']
          self.items[i] = {**self.items[i], 'predicted': predicted,
                           'probability': float(row[best]),
                           'wrong': truth is not None and predicted != truth}
      self.done = indices[-1] + 1

  def page(self, offset: int, limit: int, wrong_only: bool) -> dict[str, Any]:
    done, items = self.done, list(self.items)
    wrong = [item for item in items[:done] if item.get('wrong')]
    chosen = wrong if wrong_only else items
    return {'root': self.root, 'total': len(items), 'predicted': done,
            'wrong': len(wrong),
            'with_true_class': sum(item['true'] is not None
                                   for item in items),
            'matching': len(chosen),
            'items': chosen[offset:offset + limit]}


def encode_form(files: Sequence[tuple[str, bytes]],
                boundary: str = 'nin-jax-form-boundary', field: str = 'image'
                ) -> tuple[bytes, str]:
  """(body, Content-Type) of a multipart/form-data request that sends these
  (file name, bytes) in fields named `field`: a client of POST /predict
  without a web library (the tests and the load benchmark use it)."""
  parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
           f'filename="{name}"\r\nContent-Type: application/octet-stream'
           '\r\n\r\n'.encode() + data + b'\r\n' for name, data in files]
  return (b''.join(parts) + f'--{boundary}--\r\n'.encode(),
          f'multipart/form-data; boundary={boundary}')


def _int_parameter(query: Any, name: str, default: int, low: int,
                   high: int) -> int:
  text = query.get(name)
  if text is None:
    return default
  try:
    value = int(text)
  except ValueError:
    raise RequestError(400, f'{name}={text!r:.40} is not a whole number'
                       ) from None
  if not low <= value <= high:
    raise RequestError(400, f'{name} must be from {low} to {high}, got {value}')
  return value


def make_app(model: Model, gallery: Gallery | None, max_upload_bytes: int,
             source: str) -> Any:
  """The Starlette application (pages and API) around the model."""
  # pylint: disable=g-import-not-at-top
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.requests import Request
  from starlette.responses import FileResponse, HTMLResponse, JSONResponse
  from starlette.routing import Route
  # pylint: enable=g-import-not-at-top

  run = model.run
  page_html = importlib.resources.files('nin_jax').joinpath(
      'serve_page.html').read_text(encoding='utf-8')
  info = {'model': source, 'step': run.step,
          'class_names': list(run.info.class_names),
          'image_shape': list(run.info.image_shape),
          'has_maps': model.has_maps, 'gallery': gallery is not None,
          'max_images': MAX_IMAGES, 'max_upload_mb': max_upload_bytes / 2**20}

  def answers(handler):
    """The handler, with a RequestError as a JSON one-line answer."""
    async def wrapped(request: Request):
      try:
        return await handler(request)
      except RequestError as e:
        return JSONResponse({'error': str(e)}, status_code=e.status)
    return wrapped

  async def page(request: Request):
    del request
    return HTMLResponse(page_html)

  async def api_info(request: Request):
    del request
    return JSONResponse(info)

  def decode(uploads: list[Upload]) -> np.ndarray:
    images = []
    for upload in uploads:
      try:
        images.append(predict.decode_image(
            io.BytesIO(upload.data), upload.name, run.info.image_shape,
            run.pixel_max, MAX_PIXELS))
      except errors.ImageError as e:
        too_large = 'too large' in str(e)
        raise RequestError(413 if too_large else 422, str(e)) from None
    return np.stack(images)

  def describe(uploads, images, probs, maps, k, kind) -> dict[str, Any]:
    results = []
    for i, upload in enumerate(uploads):
      top = predict.ranked(run, probs[i], k)
      result = {'name': upload.name, 'top_k': top}
      if kind != 'none':
        result.update(draw_maps(model, images[i], maps[i],
                                [t['class'] for t in top], kind))
      results.append(result)
    return {'model': source, 'step': run.step, 'images': results}

  async def predict_images(request: Request):
    k = _int_parameter(request.query_params, 'k', 5, 1, 10_000)
    kind = request.query_params.get('maps', 'none')
    if kind not in MAP_KINDS:
      raise RequestError(400, f'maps={kind!r:.40} is not one of '
                         f'{", ".join(MAP_KINDS)}')
    if kind != 'none' and not model.has_maps:
      raise RequestError(400, f'this run has the {run.config.model.head!r} '
                         'head: its logits are not averages of class maps, '
                         'so it has none to show; leave out maps')
    declared = request.headers.get('content-length')
    if declared and declared.isdigit() and int(declared) > max_upload_bytes:
      raise RequestError(413, f'the request is over {max_upload_bytes // 2**20}'
                         ' MB (--max_upload_mb): send smaller or fewer images')
    uploads = await read_uploads(request.headers.get('content-type', ''),
                                    request.stream(), max_upload_bytes)
    images = await run_in_threadpool(decode, uploads)
    probs, maps = await asyncio.wrap_future(model.submit(images))
    return JSONResponse(await run_in_threadpool(
        describe, uploads, images, probs, maps, k, kind))

  async def gallery_page(request: Request):
    if gallery is None:
      raise RequestError(404, 'no gallery: start the server with --images=DIR')
    query = request.query_params
    offset = _int_parameter(query, 'offset', 0, 0, MAX_GALLERY)
    limit = _int_parameter(query, 'limit', GALLERY_PAGE, 1, 1000)
    return JSONResponse(gallery.page(offset, limit,
                                     query.get('wrong') in ('1', 'true')))

  async def gallery_file(request: Request):
    path = request.path_params['path']
    if gallery is None or path not in gallery.files:
      raise RequestError(404, 'no such image in the gallery')
    return FileResponse(gallery.files[path])

  return Starlette(routes=[
      Route('/', page),
      Route('/api/info', answers(api_info)),
      Route('/predict', answers(predict_images), methods=['POST']),
      Route('/gallery', answers(gallery_page)),
      Route('/images/{path:path}', answers(gallery_file)),
  ])


def _web_libraries() -> Any:
  """uvicorn, or a DependencyError naming the extra to install."""
  try:
    # pylint: disable=g-import-not-at-top,unused-import
    import python_multipart
    import starlette
    import uvicorn
    # pylint: enable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise errors.DependencyError(
        f'python -m nin_jax.serve needs the serve extra ({e.name} is not '
        'installed): pip install -e ".[serve]" (from a clone) or pip install '
        '"nin_jax[serve] @ git+URL"') from None
  return uvicorn


def listen(host: str, port: int) -> socket.socket:
  """A listening socket on host:port, or one error line."""
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=128)
  except OSError as e:
    raise errors.UserError(
        f'cannot listen on {host}:{port} ({e.strerror or e}): give another '
        '--port (0: any free one) or --host') from None


def main(argv: list[str]) -> None:
  cli.check_command_line(argv, 'max_upload_mb')
  if not 0 <= FLAGS.port <= 65535:
    cli.fail(f'--port must be from 0 to 65535, got {FLAGS.port}')
  uvicorn = _web_libraries()
  if FLAGS.images and not os.path.isdir(FLAGS.images):
    cli.fail(f'--images={FLAGS.images} is not a folder')
  run = cli.load_run()
  source = (f'published model {os.path.basename(run.workdir)}'
            if run.published else f'{run.workdir}, step {run.step}')
  model = Model(run)
  gallery = Gallery(FLAGS.images, model) if FLAGS.images else None
  model.warm_up()
  sock = listen(FLAGS.host, FLAGS.port)
  host, port = sock.getsockname()[:2]
  shown = f'[{host}]' if ':' in host else host
  app = make_app(model, gallery, FLAGS.max_upload_mb * 2**20, source)
  if gallery:
    gallery.start()
  print(f'Serving the {source} on http://{shown}:{port}/ '
        + (f'(gallery: {len(gallery.items)} images of {gallery.root}) '
           if gallery else '') + '- Ctrl-C stops', flush=True)
  config = uvicorn.Config(app, log_config=None, log_level='warning',
                          access_log=False, lifespan='off')
  try:
    uvicorn.Server(config).run(sockets=[sock])
  except KeyboardInterrupt:  # uvicorn stops, then raises it again.
    pass
  print('Stopped.', flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
