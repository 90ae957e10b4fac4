#!/usr/bin/env bash
# The paper's table on a lent GPU machine: no network, a fixed time budget,
# at most 8 files brought back. A thin wrapper around what anyone with an
# accelerator runs directly (experiments/paper/sweeps.py --sweeps=paper, then
# experiments/paper/results.py); this file only adds that machine's constraints.
#
#   bash experiments/paper/gpu_table.sh DATA OUT [DEADLINE_S] [SWEEP_FLAG ...]
#
# DATA holds cifar10-jpeg.tar.xz and mnist-png.tar.xz; OUT receives
# results.md, log.txt, metrics.tar.gz (every run's metrics.jsonl,
# config.json and sweep_done.json) and models.tar.gz (seed 0 of the
# CIFAR-10 recipe and of MNIST, published as cifar10_gpu and mnist_gpu).
# DEADLINE_S (default 480) counts from this script's start: the run in
# progress then gets SIGTERM, saves and exits 75, and the outputs are
# written. SWEEP_FLAGs go to every sweeps.py call, e.g. a tiny CPU test:
#   --set=num_train_steps=20 --set=eval_every_steps=10
#   --set='model.block_features=((32,32,16),(32,32,32),(32,32))'
# Wheels carried in .whl/ (experiments/paper/fetch_gpu_wheels.sh) are
# installed where their module is missing. Environment: PYTHON (python3),
# SEEDS (0; e.g. 0,1,2), ABLATION_EPOCHS (80), TARGET (89.6).
set -uo pipefail
data=$(cd "${1:?DATA: the folder with the two archives}" && pwd)
out=${2:?OUT: the folder for the results}
deadline=${3:-480}
shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-python3}
start=$SECONDS
cd "$(dirname "$0")/../.."
mkdir -p "$out" && out=$(cd "$out" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1

for wheel in .whl/*.whl; do
  [ -e "$wheel" ] || continue
  module=$(basename "$wheel" | cut -d- -f1)
  "$py" -c "import $module" 2>/dev/null || {
    "$py" -m pip install -q --no-index --no-deps --target /tmp/site "$wheel"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; }
done
"$py" -c 'import jax, nin_jax.training.train; print("devices:", jax.devices())' || exit

scratch=$(mktemp -d)
mkdir -p "$scratch/cifar10"
tar xJf "$data/cifar10-jpeg.tar.xz" -C "$scratch/cifar10" &&
  tar xJf "$data/mnist-png.tar.xz" -C "$scratch" || exit
runs=$scratch/runs

sweep() {  # sweeps.py flags; stops at the deadline
  local left=$(( deadline - (SECONDS - start) ))
  (( left > 60 )) || { echo "skipped (deadline): $*"; return; }
  timeout --signal=TERM --kill-after=60 "$left" "$py" experiments/paper/sweeps.py \
    --sweeps=paper --budget=full --root="$runs" \
    --folders="cifar10=$scratch/cifar10,mnist=$scratch/mnist" "$@"
}
# In order of value, so that a deadline cuts the least useful.
sweep --points=cifar10 --seeds="${SEEDS:-0}" "$@"
sweep --points=mnist --seeds="${SEEDS:-0}" "$@"
sweep --points=gap,fc_dropout,fc --seeds=0 \
  --set=num_epochs="${ABLATION_EPOCHS:-80}" "$@"

"$py" experiments/paper/results.py --root="$runs" --sweeps=paper \
  --target="${TARGET:-89.6}" --out="$out/results.md"
(cd "$runs" && find . \( -name metrics.jsonl -o -name config.json \
  -o -name sweep_done.json \) -print0 | tar czf "$out/metrics.tar.gz" --null -T -)
models=$scratch/models
for point in cifar10 mnist; do
  [ -f "$runs/paper/$point/seed0/sweep_done.json" ] &&
    NIN_JAX_PRETRAINED_ROOT=$models "$py" -m nin_jax.publish \
      --workdir="$runs/paper/$point/seed0" --name="${point}_gpu"
done
[ -d "$models" ] && tar czf "$out/models.tar.gz" -C "$models" .
echo "done in $(( SECONDS - start )) s"
