"""`python -m nin_jax.main` with one fault injected at a chosen moment.

  NIN_JAX_FAULT=<fault>:<step> python tests/faulty_main.py --workdir=... ...

Faults (test-only; the trainer has no such hooks):
  kill_after_log:N   SIGKILL right after the training metrics of step N are
                     written (before that step's checkpoint);
  kill_after_save:N  SIGKILL right after the checkpoint of step N is
                     written (before that step's evaluation);
  kill_in_save:N     SIGKILL in the middle of saving step N (files written,
                     not yet finalized and renamed into place by Orbax);
  sigterm_after_log:N  SIGTERM at the same moment as kill_after_log: the
                     trainer should save step N and exit with status 75.
"""

import os
import signal

from absl import app
import orbax.checkpoint as ocp

from nin_jax import cli
from nin_jax import main
from nin_jax.training import checkpointing
from nin_jax.training import metric_writers


def _inject(fault: str, at: int) -> None:
  me = os.getpid()
  if fault in ('kill_after_log', 'sigterm_after_log'):
    signum = signal.SIGKILL if fault == 'kill_after_log' else signal.SIGTERM
    write = metric_writers.MetricWriter.write

    def write_then_die(self, step, split, metrics):
      write(self, step, split, metrics)
      if step == at and split == 'train':
        os.kill(me, signum)
    metric_writers.MetricWriter.write = write_then_die
  elif fault == 'kill_after_save':
    save = checkpointing.Checkpointer.save

    def save_then_die(self, step, *args, **kwargs):
      save(self, step, *args, **kwargs)
      if step == at:
        os.kill(me, signal.SIGKILL)
    checkpointing.Checkpointer.save = save_then_die
  elif fault == 'kill_in_save':
    # The checkpoint manager's handler of the items: Orbax finalizes the
    # step's temporary directory, its files written, then renames it.
    finalize = ocp.CompositeCheckpointHandler.finalize

    def die_before_commit(self, directory):
      if os.path.basename(str(directory)).split('.')[0] == str(at):
        os.kill(me, signal.SIGKILL)
      return finalize(self, directory)
    ocp.CompositeCheckpointHandler.finalize = die_before_commit
  else:
    raise ValueError(f'Unknown fault {fault!r}')


if __name__ == '__main__':
  name, step = os.environ['NIN_JAX_FAULT'].split(':')
  _inject(name, int(step))
  app.run(main.main, flags_parser=cli.parse_flags)
