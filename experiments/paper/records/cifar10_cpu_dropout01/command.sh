#!/bin/bash
# Second CPU recipe: cifar10_cpu.py with dropout 0.1 and 20 epochs.
cd /work/main
date -u +"start %FT%TZ"
/usr/bin/time -v python -m nin_jax.main --workdir=/work/runs/cifar10_cpu_b \
  --config=nin_jax/configs/cifar10_cpu.py --config.dataset=folder:/work/data \
  --config.data_dir=/work/cache --config.model.dropout_rate=0.1 --config.num_epochs=20
echo "exit $?"
date -u +"end %FT%TZ"
