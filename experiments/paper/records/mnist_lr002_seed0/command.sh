#!/bin/bash
# MNIST (the 70,000 PNG digits, byte-exact) with configs/mnist.py as of
# commit 383daf2 (half-width NiN, no BatchNorm, no augmentation, peak lr
# 0.02, 15 epochs), seed 0, from a git worktree at that commit; run by
# experiments/paper/cpu_runs.sh, whose driver was stopped by hand after this
# run (the next seeds were not run with this learning rate).
cd /work/wt_paper  # git worktree add --detach /work/wt_paper 383daf2
/usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/paper/mnist_seed0 \
  --config=mnist --config.dataset=folder:/work/data/mnist --config.seed=0
