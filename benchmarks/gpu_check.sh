#!/usr/bin/env bash
# One device call: the grid-speed benchmark on an accelerator (larger grids), nothing installed.
#   bash benchmarks/gpu_check.sh   (writes grid_speed_gpu.txt under $OUT when set)
set -u
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH=$PWD
python -c "import jax, optax; print('jax', jax.__version__, jax.devices())"
timeout 420 python benchmarks/grid_speed.py 2>&1 | tee "$OUT/grid_speed_gpu.txt"
