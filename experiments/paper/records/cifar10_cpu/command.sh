#!/bin/bash
# The 60-minute CPU run of nin_jax/configs/cifar10_cpu.py on CIFAR-10 (JPEG).
cd /work/main
date -u +"start %FT%TZ"
/usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/cifar10_cpu \
  --config=nin_jax/configs/cifar10_cpu.py --config.dataset=folder:/work/data \
  --config.data_dir=/work/cache
echo "exit $?"
date -u +"end %FT%TZ"
