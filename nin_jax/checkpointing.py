"""Orbax checkpoints of the train state in `<workdir>/checkpoints`."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves the train state every so often, keeps the newest few, restores.

  Orbax writes each step to a temporary directory and renames it when
  complete, so a half-written checkpoint is never taken for the latest one.
  Saves are synchronous: a NiN's state is a few MB (a fraction of a second to
  write), and Orbax's background save thread was seen to lose its array
  metadata when a TFDS generator pipeline ran beside it.
  """

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, state: Any, step: int | None = None) -> Any:
    """Restores `step` (default: latest) into the structure and sharding of `state`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()
    self._manager.close()
