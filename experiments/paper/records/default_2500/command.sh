#!/bin/bash
# The default (paper-width, no BatchNorm) recipe on CIFAR-10 (JPEG), with its
# 200-epoch schedule, stopped after 2,500 steps. Waits for the CPU run before.
while pgrep -f "workdir=/work/runs/cifar10_cpu " > /dev/null; do sleep 10; done
cd /work/main
date -u +"start %FT%TZ"
/usr/bin/time -v python experiments/paper/run_until.py --step=2500 -- \
  python -m nin_jax.main --workdir=/work/runs/default_2500 \
  --config.dataset=folder:/work/data --config.data_dir=/work/cache
echo "exit $?"
date -u +"end %FT%TZ"
