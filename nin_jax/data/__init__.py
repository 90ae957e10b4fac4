"""Datasets to batches: TFDS, image folders, digits; preprocessing."""
