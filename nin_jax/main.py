"""Trains and evaluates a Network in Network.

  python -m nin_jax.main --workdir=/tmp/nin [--config=nin_jax/configs/NAME.py]
      [--config.FIELD=VALUE ...]

Running the same command again on the same workdir resumes from its latest
checkpoint. Everything below this file reads the config, never flags.
"""

import logging as std_logging
import os
import sys
import traceback

# Before TensorFlow is imported anywhere: hide its C++ start-up banners.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from nin_jax import errors

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and the config.',
    required=True)
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Training configuration file.',
    lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for a multi-process run outside TPU pods, SLURM '
    'and MPI (which JAX detects by itself).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes, with --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1, with '
    '--coordinator_address.')


def _cluster_detected() -> bool:
  """Whether JAX can find its peers by itself (TPU pod, SLURM, Open MPI)."""
  env = os.environ
  return (',' in env.get('TPU_WORKER_HOSTNAMES', '')
          or int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)


def initialize_distributed() -> None:
  """Connects the processes of a multi-process run; a no-op for one process."""
  if _COORDINATOR.value is None:
    if _cluster_detected():
      jax.distributed.initialize()
    return
  if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
    raise app.UsageError('--coordinator_address needs --num_processes and '
                         '--process_id.')
  # CPU processes exchange gradients over gloo; GPUs and TPUs ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                             _PROCESS_ID.value)


class _QuietLibraries:
  """Drops the INFO chatter of Orbax and TensorFlow; their warnings still show."""

  def filter(self, record) -> bool:
    noisy = any(part in record.pathname for part in ('/orbax/', '/tensorflow'))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_logger().addFilter(_QuietLibraries())
  # Imported after flag parsing so that --help stays fast.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from nin_jax import train  # pylint: disable=g-import-not-at-top

  # TensorFlow only feeds data; keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  initialize_distributed()
  if jax.process_index() != 0:  # Process 0 speaks for the run.
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s on %s: process %d of %d, %d local / %d global devices.',
               jax.__version__, jax.default_backend(), jax.process_index(),
               jax.process_count(), jax.local_device_count(),
               jax.device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.Preempted as e:
    logging.warning('%s', e)
    sys.exit(errors.EXIT_PREEMPTED)
  except (errors.UserError, errors.TrainingDiverged) as e:
    if logging.get_verbosity() >= logging.DEBUG:  # --verbosity=1 or more.
      traceback.print_exc()
    print(f'error: {e}', file=sys.stderr)  # The message is the whole story.
    sys.exit(errors.EXIT_USER_ERROR if isinstance(e, errors.UserError)
             else errors.EXIT_DIVERGED)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error and exit status 2 on failure.

  Bad --config.* values (unknown field, wrong type, unreadable config file)
  otherwise end in a traceback or an absl FATAL message.
  """
  try:
    remaining = flags.FLAGS(argv)
    # An unloadable file gives a placeholder that raises on first use.
    _CONFIG.value.get('dataset')
    return remaining
  except flags.Error as e:
    message = ' '.join(str(e).split())  # One line.
  except (AttributeError, KeyError) as e:  # config_flags: unknown field.
    names = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    message = (f'unknown config field {str(e).strip(chr(34) + chr(39))!r} in '
               f'{" ".join(names)}; every field is listed, with a comment, '
               'in nin_jax/configs/default.py')
  except (OSError, SyntaxError, ImportError) as e:  # The --config file.
    while e.__cause__ is not None:  # The innermost error says why.
      e = e.__cause__
    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    message = f'cannot load the --config file: {reason}'
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_USER_ERROR)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
