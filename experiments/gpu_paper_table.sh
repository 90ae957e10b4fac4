#!/usr/bin/env bash
# The paper's CIFAR-10 table on one GPU (experiments/gpu_paper_table.py says
# what it runs and writes; experiments/README.md how to run it on a lent
# machine):
#
#   bash experiments/gpu_paper_table.sh ARCHIVE OUT_DIR [--budget=tiny|full]
#
# Paths are taken from the caller's directory. The Python that runs it runs
# every trainer: $PYTHON, else python3 (on the GPU image, the one with JAX).
set -euo pipefail
exec "${PYTHON:-python3}" -u "$(dirname "$0")/gpu_paper_table.py" "$@"
