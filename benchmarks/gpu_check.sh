#!/usr/bin/env bash
# GPU checks in one go, about 6-8 minutes (2-3 more with part 7), each part under its own limit:
#   1. the IFE-op tests on the device, the compiled Pallas entropy kernel included (its
#      interpret-mode tests are left to CPU CI) (75 s);
#   2. the compiled UNet gradient holds cuDNN convolutions (the CPU-only weight gradient of
#      ife_jax.nn.conv must not reach the GPU) (45 s);
#   3. paper entropy: the Pallas kernel against the XLA path, the shapes (60 s);
#   4. the IFE op timings at (32, 112, 112, 64) (45 s);
#   5. PyTorch (eager, torch.compile) against ife-jax UNet / UNet+C / UNet+E, batch 32, 224 x 224,
#      bf16, then the IFE cost split (extra FLOPs and remainder) (180 s, torch.compile 90 s of it);
#   6. UNet+C and UNet+E's extra step time split into widening, selection and scoring, by
#      ablated steps timed in interleaved rounds (120 s).
#   7. the UNet step fed by the grain input pipeline (12 workers, the synthetic dataset built
#      first), then the same step device-only, bf16, batch 32 at 224 x 224 (150 s); skipped with
#      a note where grain or tensorflow_datasets is not installed.
# Tables go to OUTDIR (default: $OUT if set, else .). A part that runs out of time leaves what it
# printed and the line "TIMED OUT" in its table; the next part still runs.
# Usage on a GPU machine with jax, flax, optax and torch: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# H100 / H200 SXM dense bf16 peak.
peak=${PEAK_TFLOPS:-989}

part() {  # part SECONDS FILE COMMAND...: run with a limit, tee to FILE, note a time-out
  local limit=$1 file=$2
  shift 2
  echo "== $* (limit ${limit}s)" | tee "$out/$file"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$file"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "TIMED OUT" | tee -a "$out/$file"; fi
}

start=$SECONDS
{ nvidia-smi -L; date -u; python3 -c "import jax, torch; print('jax', jax.__version__, \
jax.devices(), 'torch', torch.__version__)"; } 2>&1 | tee "$out/gpu_machine.txt"
# XLA's default optimisation level (3), which tests/conftest.py would otherwise lower to 0.
part 75 gpu_tests.txt env XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=3" \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  -k "compiled or not test_entropy_pallas" \
  tests/test_entropy_pallas.py tests/test_entropy.py tests/test_golden.py
part 45 gpu_conv_backend.txt python3 benchmarks/conv_backend_check.py
part 60 gpu_entropy_kernel.txt env IFE_JAX_PALLAS_ENTROPY=1 python3 benchmarks/entropy_kernel.py
part 45 gpu_ops.txt python3 benchmarks/ife_ops.py --shape 32,112,112,64
part 180 gpu_vs_torch.txt python3 benchmarks/vs_torch.py --batch-size 32 --size 224 \
  --peak-tflops "$peak" --compile-timeout 90 --runs 10 --warmup 3
part 120 gpu_ife_in_step.txt python3 benchmarks/ife_in_step.py --batch-size 32 --size 224 \
  --precision bfloat16 --runs 10 --warmup 2
if python3 -c "import grain, tensorflow_datasets" 2>/dev/null; then
  common="--models UNet --batch-size 32 --size 224 --precision bfloat16 --runs 10 --warmup 3"
  part 150 gpu_pipeline.txt bash -c "python3 benchmarks/train.py $common --num-workers 12 \
    --data-dir ${TMPDIR:-/tmp}/ife_jax_tfds && python3 benchmarks/train.py $common --device-only"
else
  echo "pipeline: skipped (grain or tensorflow_datasets is not installed)" | tee "$out/gpu_pipeline.txt"
fi
echo "gpu_check: $((SECONDS - start)) s" | tee -a "$out/gpu_machine.txt"
