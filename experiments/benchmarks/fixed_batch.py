"""The trainer's compiled steps, a fresh state and one random batch.

Shared by the scripts that time or profile whole steps on a fixed batch
(`benchmark.py`, `profile_step.py`, `step_ab.py`): what the trainer
compiles, without data.
"""

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from nin_jax.data import input_pipeline
from nin_jax.training import parallel
from nin_jax.training import steps


@dataclasses.dataclass
class FixedBatch:
  strategy: parallel.Jit
  state: Any
  batch: dict[str, jax.Array]  # image, label, mask: what eval_step takes.
  key: jax.Array
  # A new copy of the initial state (the train step donates the one given).
  fresh_state: Callable[[], Any]

  @property
  def train_batch(self) -> dict[str, jax.Array]:
    return {'image': self.batch['image'], 'label': self.batch['label']}


def setup(config: ml_collections.ConfigDict, seed: int = 0) -> FixedBatch:
  shape = input_pipeline.image_shape(config)
  strategy = parallel.Jit(steps.train_step, steps.eval_step)
  config = config.copy_and_resolve_references()
  config.seed = seed

  def fresh_state():
    # CIFAR-10's schedule at batch 128: 390 steps an epoch, 200 epochs.
    return strategy.put_state(steps.initial_state(
        config, shape, steps_per_epoch=390, num_steps=78_000)[0])

  rng = np.random.default_rng(seed)
  batch = strategy.put_batch({
      'image': rng.normal(size=(config.batch_size,) + shape).astype(
          np.float32),
      'label': rng.integers(0, config.num_classes,
                            config.batch_size).astype(np.int32),
      'mask': np.ones(config.batch_size, np.float32)})
  return FixedBatch(strategy, fresh_state(), batch,
                    strategy.put_key(steps.dropout_key(seed)), fresh_state)
