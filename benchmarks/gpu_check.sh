#!/usr/bin/env bash
# One device call, nothing installed: the one-pass kernel against the XLA fast step, the
# grid-speed benchmark against the PyTorch arms on the accelerator (>= 1024 configurations), and
# the ResNet training throughput of ufm.nets. Output also under $OUT when set. Sized to fit about
# ten minutes of device time; every part has its own timeout.
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-.}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH=$PWD
python -c "import jax, optax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout ${KERNEL_SECONDS:-120} python benchmarks/kernel_check.py 2>&1 | tee "$OUT/kernel_gpu.txt"
timeout ${GRID_SECONDS:-360} python benchmarks/grid_speed.py --grids 1024 --reps 2 \
  --steps-scale 1 "$@" 2>&1 | tee "$OUT/grid_speed_gpu.txt"
timeout ${RESNET_SECONDS:-90} python benchmarks/resnet_throughput.py 2>&1 | tee "$OUT/resnet_gpu.txt"
