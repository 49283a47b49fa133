#!/usr/bin/env bash
# One device call, nothing installed: the grid-speed benchmark on an accelerator (larger grids)
# and the ResNet training throughput of ufm.nets. Output also under $OUT when set.
#   bash benchmarks/gpu_check.sh [grid_speed.py arguments]
set -u
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH=$PWD
python -c "import jax, optax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout ${GRID_SECONDS:-420} python benchmarks/grid_speed.py "$@" 2>&1 | tee "$OUT/grid_speed_gpu.txt"
timeout ${RESNET_SECONDS:-150} python benchmarks/resnet_throughput.py 2>&1 | tee "$OUT/resnet_gpu.txt"
