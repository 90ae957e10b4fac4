"""A checkpoint of a run as a published model: what inference needs, no more.

  python -m nin_jax.publish --workdir=DIR --name=NAME [--step=N] [--overwrite]

Writes nin_jax/pretrained/NAME/ ($NIN_JAX_PRETRAINED_ROOT/NAME/ if that is
set), which evaluate, predict, visualize and export read with
--pretrained=NAME and a new run starts from with --config.init_from=NAME:

  config.json, dataset.json, preprocessing.npz   copied from the workdir
  variables.msgpack   the checkpoint's parameters and BatchNorm statistics
  metrics.jsonl       the run's metrics up to that step (for visualize)
  info.json           the step, the source, and the evaluations that
                      metrics.jsonl holds for that step

The weights are flax.serialization's msgpack of the nested variables: flax's
own format, read back as the same tree (an .npz would need its keys joined
and split again), and reading it runs no code, unlike a pickle. The
optimizer state (as large again as the parameters with momentum, twice with
Adam), the dropout key and Orbax's metadata stay in the workdir.

The directory is assembled beside its final place and renamed into it, so a
publish that fails leaves nothing behind; an existing NAME is replaced only
with --overwrite.
"""

import datetime
import json
import os
import shutil
import tempfile
from typing import Any

from absl import flags
from flax import serialization
import jax
import numpy as np

from nin_jax import cli
from nin_jax import errors
from nin_jax.files import storage
from nin_jax.files import workdir_files
from nin_jax.training import trained_run

FLAGS = flags.FLAGS

COPIED = (workdir_files.CONFIG, workdir_files.DATASET,
          workdir_files.PREPROCESSING)


def _metrics(workdir: str, step: int) -> list[dict[str, Any]]:
  """The rows of the workdir's metrics.jsonl up to `step` (none if absent)."""
  return [row for row in workdir_files.read_metrics(workdir)
          if row.get('step', 0) <= step]


def _size(path: str) -> int:
  """Bytes in a file, or in all files below a directory."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, names in os.walk(path) for f in names)


def publish(workdir: str, name: str, step: int | None = None,
            root: str | None = None, overwrite: bool = False
            ) -> tuple[str, trained_run.TrainedRun]:
  """Publishes checkpoint `step` (default: the newest) of the run in
  `workdir` as ROOT/NAME (ROOT: trained_run.pretrained_root()); returns that
  directory and the run as loaded."""
  if not trained_run.NAME_PATTERN.fullmatch(name):
    raise errors.ConfigError(
        f'--name={name!r}: a model name is letters, digits and _ . - (it '
        'becomes a directory name), not a path.')
  workdir = storage.location(workdir)
  if trained_run.is_published(workdir):
    raise errors.WorkdirError(f'{workdir} is a published model already; copy '
                              'its directory to give it another name.')
  root = root or trained_run.pretrained_root()
  storage.check_local(root, '--root',
                      'published models are looked up there by name')
  root = os.path.abspath(root)
  target = os.path.join(root, name)
  if os.path.exists(target) and not overwrite:
    raise errors.WorkdirError(f'{target} exists: pass --overwrite to replace '
                              'it, or choose another --name.')
  run = trained_run.load(workdir, step)  # Checks every file needed is there.
  os.makedirs(root, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{name}.publishing-', dir=root)
  try:
    os.chmod(staging, 0o755)  # mkdtemp's 0o700 would stay after the rename.
    for file_name in COPIED:  # The workdir may be remote (gs://).
      with open(os.path.join(staging, file_name), 'wb') as f:
        f.write(storage.read_bytes(workdir_files.path(workdir, file_name)))
    variables = jax.tree.map(np.asarray, jax.device_get(run.variables))
    with open(os.path.join(staging, trained_run.VARIABLES_FILE), 'wb') as f:
      f.write(serialization.msgpack_serialize(variables))
    rows = _metrics(workdir, run.step)
    with open(os.path.join(staging, workdir_files.METRICS), 'w',
              encoding='utf-8') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
    info = {
        'name': name,
        'step': run.step,
        'source_workdir': workdir,
        'published_utc': datetime.datetime.now(datetime.timezone.utc)
                         .isoformat(timespec='seconds'),
        'dataset': run.info.name,
        'num_classes': run.info.num_classes,
        'num_parameters': int(sum(np.size(x) for x in
                                  jax.tree.leaves(variables['params']))),
        # As metrics.jsonl logged them at this step (the final evaluation
        # when the step is the run's last), without the step and split.
        'evaluations': {
            row['split']: {k: v for k, v in row.items()
                           if k not in ('step', 'split')}
            for row in rows if row.get('step') == run.step
            and row.get('split') in ('validation', 'test')},
    }
    storage.write_atomically(os.path.join(staging, trained_run.INFO_FILE),
                             json.dumps(info, indent=2) + '\n')
    if os.path.exists(target):  # --overwrite: the old one goes last.
      old = tempfile.mkdtemp(prefix=f'.{name}.replaced-', dir=root)
      os.replace(target, old)
      os.replace(staging, target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target, run


def define_flags() -> None:
  """Defined when the command runs, not on import: the commands share flag
  names, and tests import their modules together."""
  flags.DEFINE_string('workdir', None, 'Workdir of the training run to '
                      'publish (the --workdir given to python -m '
                      'nin_jax.main).', required=True)
  flags.DEFINE_string('name', None, 'Name of the published model: it is '
                      'written to nin_jax/pretrained/NAME/ (or '
                      f'${trained_run.PRETRAINED_ROOT_ENV}/NAME/) and read with '
                      '--pretrained=NAME.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
  flags.DEFINE_bool('overwrite', False, 'Replace a published model of the '
                    'same name.')


def main(argv: list[str]) -> None:
  cli.check_command_line(argv)
  target, run = publish(FLAGS.workdir, FLAGS.name, FLAGS.step,
                        overwrite=FLAGS.overwrite)
  checkpoint = os.path.join(workdir_files.checkpoints_dir(run.workdir),
                            str(run.step))
  weights = os.path.join(target, trained_run.VARIABLES_FILE)
  print(f'Published step {run.step} of {run.workdir} as {target}: '
        f'{len(os.listdir(target))} files, {_size(target):,} bytes (weights '
        f'{_size(weights):,}; the checkpoint has {_size(checkpoint):,}).')
  print(f'Use it: python -m nin_jax.predict --pretrained={FLAGS.name} IMAGE')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
