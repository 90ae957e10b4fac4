#!/usr/bin/env bash
# The paper's rows that fit a 2-core CPU, one run at a time: MNIST with
# configs/mnist.py (seeds 0, 1, 2), then the paper's CIFAR-10 net with
# configs/cifar10_paper_cpu.py (seed 0).
#
#   experiments/paper/cpu_runs.sh DATA RUNS [mnist|cifar10|all]
#
# MNIST_SEEDS (default "0 1 2") chooses the MNIST seeds.
# DATA holds mnist/{train,test}/<digit>/ and {train,test}/<class>/ (CIFAR-10);
# RUNS receives one workdir and one log per run. Run it from a checkout at a
# fixed commit (a git worktree), so that edits elsewhere do not change a
# running job. Stopped at any point (SIGTERM: a checkpoint, then exit 75; or
# killed), the same command resumes: finished runs are only evaluated again.
set -u
data=${1:?DATA: the folder holding mnist/ and the CIFAR-10 train/ and test/}
runs=${2:?RUNS: where the workdirs and logs go}
mkdir -p "$runs"

run() {  # NAME, then the trainer's flags
  local name=$1; shift
  local log="$runs/$name.log"
  {
    echo "start $(date -u +%FT%TZ) at commit $(git rev-parse --short HEAD)"
    echo "python -m nin_jax.main --workdir=$runs/$name $*"
  } >> "$log"
  /usr/bin/time -v python -m nin_jax.main --workdir="$runs/$name" "$@" \
      >> "$log" 2>&1
  local status=$?
  echo "exit $status, end $(date -u +%FT%TZ)" >> "$log"
  return $status
}

which=${3:-all}
if [ "$which" != cifar10 ]; then
  for seed in ${MNIST_SEEDS:-0 1 2}; do
    run "mnist_seed$seed" --config=mnist --config.dataset="folder:$data/mnist" \
        --config.seed=$seed || exit
  done
fi
if [ "$which" != mnist ]; then
  run cifar10_paper --config=cifar10_paper_cpu --config.dataset="folder:$data"
fi
