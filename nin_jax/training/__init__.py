"""A run: config checks, compiled steps, the loop, checkpoints, metrics."""
