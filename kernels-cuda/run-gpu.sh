#!/usr/bin/env bash
# One device call: build the CUDA kernels for sm_90, check them under compute-sanitizer against
# the shared vectors, then time them next to fla and the copy bandwidth. Results go to $OUT.
# Usage (from the repository root, on the GPU machine): bash kernels-cuda/run-gpu.sh [FLA_DIR]
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/out}
mkdir -p build "$OUT"
nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC src/kda_step.cu src/mla_decode.cu -o build/libklecuda.so
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/kda_step.py build/libklecuda.so --check-only 2>&1 | tee "$OUT/sanitizer.log" | tail -12
compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/mla_decode.py build/libklecuda.so --check-only 2>&1 | tee -a "$OUT/sanitizer.log" | tail -8
PYTHONUNBUFFERED=1 python3 bench/kda_step.py build/libklecuda.so ${1:+--fla "$1"} --out "$OUT/cuda-kda-step.json" 2>&1 | tee "$OUT/bench.log"
PYTHONUNBUFFERED=1 python3 bench/mla_decode.py build/libklecuda.so --out "$OUT/cuda-mla-decode.json" 2>&1 | tee -a "$OUT/bench.log"
