"""Trains and evaluates a Network in Network.

  python -m nin_jax.main --workdir=/tmp/nin [--config=nin_jax/configs/NAME.py]
      [--config.FIELD=VALUE ...]

Running the same command again on the same workdir resumes from its latest
checkpoint. Everything below this file reads the config, never flags.
"""

import os
import sys

if __name__ == '__main__':
  # Before the imports (seconds): a stop signal from now on is noted, and
  # honoured once the run listens, instead of killing the process.
  from nin_jax.training import stop_signals  # pylint: disable=g-import-not-at-top
  stop_signals.listen_early()

from absl import app
from absl import flags
from absl import logging
import jax

from nin_jax import cli
from nin_jax import errors


_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and the config.',
    required=True)
_CONFIG = cli.define_config_flag('Training configuration file.')
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


def main(argv):
  cli.check_command_line(argv)  # No stray arguments: one error line.
  cli.quiet_console()  # Also when called without cli.parse_flags.
  # Imported after flag parsing so that --help stays fast. TensorFlow is
  # imported (and kept off the accelerators) only where TFDS data or the
  # streaming input pipeline need it: input_pipeline.tensorflow.
  from nin_jax.training import train  # pylint: disable=g-import-not-at-top

  initialize_distributed()
  if jax.process_count() > 1:
    from nin_jax.training import stop_signals  # pylint: disable=g-import-not-at-top
    stop_signals.hand_to_jax()
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
  except errors.UserError as e:
    cli.exit_with(e, errors.EXIT_USER_ERROR)
  except errors.TrainingDiverged as e:
    cli.exit_with(e, errors.EXIT_DIVERGED)
  except KeyboardInterrupt:  # A second Ctrl-C: stopped at once.
    cli.exit_with(KeyboardInterrupt(
        'interrupted at once by a second SIGINT; the last checkpoint is '
        'intact: rerun the same command to resume.'), errors.EXIT_INTERRUPTED)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
