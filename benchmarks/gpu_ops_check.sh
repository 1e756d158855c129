#!/usr/bin/env bash
# GPU check of the IFE ops: correctness tests on the device, then the timing tables.
# Usage (on a GPU machine with jax installed): bash benchmarks/gpu_ops_check.sh [OUTDIR]
set -uo pipefail
out=${1:-.}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
python3 -m pytest -q -p no:cacheprovider tests/test_golden.py tests/test_entropy.py \
  tests/test_curvature.py tests/test_selection.py tests/test_enhance.py 2>&1 | tail -n 15
python3 benchmarks/ife_ops.py --shape 32,112,112,64 2>&1 | tee "$out/gpu_ops_main.txt"
python3 benchmarks/ife_ops.py 2>&1 | tee "$out/gpu_ops_sweep.txt"
