#!/usr/bin/env bash
# GPU checks in one go: the IFE-op tests on the device, cuDNN kernels in the compiled UNet
# gradient (the CPU-only convolution gradient must not reach the GPU), the op timings, and the
# train-step throughput of UNet / UNet+C / UNet+E / DeepLabV3+ (+E) at batch 32, 224 x 224.
# Usage on a GPU machine with jax, flax and optax installed: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-.}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_entropy.py tests/test_golden.py \
  2>&1 | tail -n 4
python3 benchmarks/conv_backend_check.py 2>&1 | tee "$out/gpu_conv_backend.txt"
python3 benchmarks/ife_ops.py --shape 32,112,112,64 2>&1 | tee "$out/gpu_ops.txt"
# H100 SXM dense peaks: 989 TFLOP/s bf16; float32 matmuls run as TF32 by default (494).
python3 benchmarks/train.py --device-only --batch-size 32 --precision bfloat16 \
  --peak-tflops 989 2>&1 | tee "$out/gpu_train_bf16.txt"
python3 benchmarks/train.py --device-only --batch-size 32 --precision float32 \
  --models UNet,UNet+E --peak-tflops 494 2>&1 | tee "$out/gpu_train_fp32.txt"
