#!/bin/bash
# The paper's CIFAR-10 NiN (966,986 parameters, no BatchNorm, dropout 0.5,
# translation + flips) on CIFAR-10 (JPEG), configs/cifar10_paper_cpu.py as of
# commit 41fb8e7: 40 epochs (15,600 steps at batch 128), peak lr 0.04 after
# a 3-epoch warm-up, cosine to 0. Seed 0. From a git worktree at that commit,
# by experiments/paper/cpu_runs.sh (after MNIST seed 2 in the same driver):
cd /work/wt_paper2  # git worktree add --detach /work/wt_paper2 41fb8e7
MNIST_SEEDS="2" experiments/paper/cpu_runs.sh /work/data /work/runs/paper_v2 all
# which ran:
#   /usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/paper_v2/cifar10_paper \
#     --config=cifar10_paper_cpu --config.dataset=folder:/work/data
# Started 2026-12-03 17:57 UTC. Paused by SIGSTOP three times for test-suite
# timings (about 50 min in all), and shared the cores with test runs; the
# logged img/s of those windows is no speed measurement (alone: 150-185).
# The end of that session cut it at step 4,200; it resumed at 19:56 UTC from
# its checkpoint at step 3,900 (exact resume: the rows logged after it went
# to metrics.superseded.jsonl) with the command below. In that session it
# shared the cores with two test-suite runs and was paused (SIGSTOP) for a
# third, about 10 min.
# The end of that session cut it after the evaluation at step 14,430 (22:53
# UTC); it resumed at 23:29 UTC from the checkpoint at that step, alone on
# the cores, with:
#   cd /work/wt_paper2 && experiments/paper/cpu_runs.sh /work/data /work/runs/paper_v2 cifar10
# and FINISHED at 23:48:34 UTC (exit 0): step 15,600, test accuracy 83.73%
# (loss 0.4860, 10,000 examples). Wall clock over the three segments: about
# 5 h 5 min, of which about 1 h paused; 300 steps (3,900-4,200) ran twice.
# At 150-185 img/s alone, 40 epochs with their 40 evaluations take about
# 3.5 h on 2 quiet cores of this VM.
# Published as nin_jax/pretrained/cifar10_paper:
#   python -m nin_jax.publish --workdir=/work/runs/paper_v2/cifar10_paper --name=cifar10_paper
#   python -m nin_jax.evaluate --pretrained=cifar10_paper --data_dir=/work/data   # 83.73%
