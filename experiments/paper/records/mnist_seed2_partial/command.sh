#!/bin/bash
# MNIST (the 70,000 PNG digits, byte-exact) with configs/mnist.py as of
# commit 41fb8e7 (half-width NiN, no BatchNorm, no augmentation, peak lr
# 0.05, 15 epochs), seed 2 (cut short by the end of the session; resumes), from a git worktree at that commit, by
# experiments/paper/cpu_runs.sh:
cd /work/wt_paper2  # git worktree add --detach /work/wt_paper2 41fb8e7
MNIST_SEEDS="2" experiments/paper/cpu_runs.sh /work/data /work/runs/paper_v2 all
# which ran:
#   /usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/paper_v2/mnist_seed2 \
#     --config=mnist --config.dataset=folder:/work/data/mnist --config.seed=2
# Where it stood when this record was committed (2026-12-03 16:39 UTC):
# step 100 of 7020, no checkpoint yet (the first is at step 468, epoch 1).
# To resume (or start afresh if /work/runs is gone), from that worktree:
#   MNIST_SEEDS="2" experiments/paper/cpu_runs.sh /work/data /work/runs/paper_v2 all
# which then goes on to the CIFAR-10 run (configs/cifar10_paper_cpu.py).
