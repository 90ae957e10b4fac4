#!/usr/bin/env bash
# Downloads, here, the wheels that nin_jax needs on the lent GPU machine and
# that its image lacks, into .whl/ at the repository root (ignored by git
# through .git/info/exclude, carried with `carry: [".whl"]`).
#
#   bash experiments/paper/fetch_gpu_wheels.sh
#
# Why only these: everything else nin_jax imports on the folder-data path
# (jax, flax, optax, orbax-checkpoint, absl-py, etils, numpy, pillow,
# tensorboard, tqdm, PyYAML, msgpack, scikit-learn, matplotlib) is in the
# GPU image's package list (JAX's GPU image as lent to this project). ml_collections
# is not; its own needs are absl-py and PyYAML, both there.
# The machine has no network, Python 3.12 and x86-64, hence the platform
# flags (the device README's recipe; pure-Python wheels match any of them).
# experiments/paper/gpu_table.sh installs each wheel there only if its
# module is missing, so an image that gains one later is left alone.
set -euo pipefail

# Pinned to what this project is developed and tested with.
WHEELS=(
  ml_collections==1.1.0
)

repo="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$repo/.whl"
exclude="$(git -C "$repo" rev-parse --git-path info/exclude)"
case "$exclude" in /*) ;; *) exclude="$repo/$exclude" ;; esac
mkdir -p "$(dirname "$exclude")"
for ignored in /.whl/ /.data/; do  # .data/: the archive, carried the same way
  grep -qxF "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >>"$exclude"
done

mkdir -p "$dest"
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 \
  -d "$dest" "${WHEELS[@]}"

# One version of each: two would stop the whole install there.
duplicates="$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 \
  | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
if [ -n "$duplicates" ]; then
  echo "error: several versions in $dest of: $duplicates;" \
    "delete the old ones" >&2
  exit 1
fi
echo "wheels in $dest:"
ls -l "$dest"
