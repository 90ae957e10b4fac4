#!/bin/bash
# MNIST (the 70,000 PNG digits, byte-exact) with configs/mnist.py as of
# commit 41fb8e7 (half-width NiN, no BatchNorm, no augmentation, peak lr
# 0.05, 15 epochs), seed 1, from a git worktree at that commit, by
# experiments/paper/cpu_runs.sh:
cd /work/wt_paper2  # git worktree add --detach /work/wt_paper2 41fb8e7
MNIST_SEEDS="1 2" experiments/paper/cpu_runs.sh /work/data /work/runs/paper_v2 all
# which ran:
# (paused twice by SIGSTOP for test-suite timings, 19 min in all)
#   /usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/paper_v2/mnist_seed1 \
#     --config=mnist --config.dataset=folder:/work/data/mnist --config.seed=1
