#!/usr/bin/env bash
# One device call on the GPU machine, from the repository root. Results go to $OUT and
# bench/results/.
#   bash kernels-cuda/run-gpu.sh kernels [FLA_DIR]
#       builds the kernels for sm_90, checks them under compute-sanitizer against the shared
#       vectors, float64 attention and float64 Q8_0 products, then times them next to fla and PyTorch
#   bash kernels-cuda/run-gpu.sh engine [--quick]
#       needs .gpu/ from kernels-cuda/carry.sh (a Node binary, vitest, the bundled scripts): builds
#       the CUDA engine addon, runs the CPU/GPU parity test (test/unit/cuda-parity.test.ts, also
#       under compute-sanitizer on the small model), times the engine (bench/cuda-engine.ts, next
#       to an older commit's addon if carry.sh was given one); without --quick also serves a
#       >= 128K-token request through the GPU node (bench/gpu-node.ts) and runs the architecture
#       study on the GPU (bench/arch.ts)
#   bash kernels-cuda/run-gpu.sh arch [--quick]
#       the addon, the parity test and the architecture study alone
#   bash kernels-cuda/run-gpu.sh big [--quick]
#       the addon, the parity test (BF16 models included) and its quick part under
#       compute-sanitizer, then the full-size Kimi-Linear-48B-A3B in BF16 and its all-MLA twin:
#       time per token at batch 1 from 4K to 1M tokens of context (bench/gpu-48b.ts)
#   bash kernels-cuda/run-gpu.sh batch [--quick]
#       the addon, the parity test and its quick part under compute-sanitizer, then the 48B
#       model's decode throughput with continuous batching's step (bench/gpu-batch.ts)
#   bash kernels-cuda/run-gpu.sh peer
#       the addon, then Moonshot's modeling_kimi.py with fla in BF16 (from .peer/, carried: see
#       bench/peers/kimi_peer_bench.py) and ours at the 48B shapes, batch 1 and 8 at 4K
#       (bench/gpu-batch.ts --peer)
#   bash kernels-cuda/run-gpu.sh route [--long 131072] [--concurrent 32]
#       the addon, then the 48B model behind the GPU node command and the router, both on loopback:
#       long prompts and concurrent 4K requests through the router (bench/gpu-route.ts); with
#       TTFT=32768,65536 first the time to first token of those prompts, hybrid vs all-MLA
#       (bench/gpu-48b.ts --ttft)
#   bash kernels-cuda/run-gpu.sh load [--layers N]
#       the addon, then a sharded BF16 checkpoint of Kimi-Linear-48B-A3B's shapes written to disk
#       and loaded onto the GPU (bench/gpu-load.ts: GB/s next to a plain read of the files)
#   bash kernels-cuda/run-gpu.sh sampling [--draws N]
#       the addon, the GPU sampler's test (also under compute-sanitizer), then the draw's time at
#       Kimi's vocabulary against copying the logits to the host sampler (bench/gpu-sampling.ts;
#       first with the older commit's addon where carry.sh was given one)
#   bash kernels-cuda/run-gpu.sh kv [--budget N]
#       the addon, then time per token to 1M tokens of context with the full MLA cache and with a
#       budget (bench/kv-long.ts --backend cuda; docs/kv-budget.md)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" kernels-cuda/build bench/results
mode=${1:-kernels}
shift || true
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# "NVIDIA H100 80GB HBM3" -> h100: the tag of cuda-<gpu>.json, where collect.py merges each run
TAG=$(head -n1 "$OUT/gpu.txt" | sed -E 's/^NVIDIA //; s/^([A-Za-z][0-9]+[A-Za-z]*).*/\1/' | tr 'A-Z' 'a-z')
COLLECT="python3 $PWD/kernels-cuda/bench/collect.py $OUT $TAG"

if [ "$mode" = kernels ]; then
  cd kernels-cuda
  NVCC_FLAGS=$(cat nvcc.flags)  # the recipe engine/build/build.mjs builds the engine addon with
  nvcc $NVCC_FLAGS -shared -Xcompiler -fPIC src/kda_step.cu src/kda_chunk.cu src/mla_decode.cu src/mla_attend.cu src/ops.cu src/gemm16.cu src/sgemm.cu src/probe.cu src/sample.cu -o build/libklecuda.so
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/kda_step.py build/libklecuda.so --check-only 2>&1 | tee "$OUT/sanitizer.log" | tail -12
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/mla_decode.py build/libklecuda.so --check-only 2>&1 | tee -a "$OUT/sanitizer.log" | tail -14
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/kda_layer.py build/libklecuda.so --check-only 2>&1 | tee -a "$OUT/sanitizer.log" | tail -8
  # the Q8_0 matmuls against float64 on the host (test/q8_check.cu), under compute-sanitizer
  nvcc $NVCC_FLAGS test/q8_check.cu src/gemm_q8.cu src/gemm16.cu src/sgemm.cu src/ops.cu -o build/q8_check
  compute-sanitizer --tool memcheck --error-exitcode 9 build/q8_check 2>&1 | tee -a "$OUT/sanitizer.log" | tail -4
  # the batched step's f32 and BF16 matmuls against float64, then timed beside the kernels they replaced
  nvcc $NVCC_FLAGS test/matmul_check.cu src/sgemm.cu src/gemm16.cu src/ops.cu -o build/matmul_check
  compute-sanitizer --tool memcheck --error-exitcode 9 build/matmul_check --check-only 2>&1 | tee -a "$OUT/sanitizer.log" | tail -3
  for v in 0 1; do KLE_CUDA_SGEMM=$v KLE_CUDA_GEMM_X16=$v build/matmul_check 2>&1 | tee -a "$OUT/matmul.log"; done
  PYTHONUNBUFFERED=1 python3 bench/kda_step.py build/libklecuda.so ${1:+--fla "$1"} --probe build/libklecuda.so --out "$OUT/cuda-kda-step.json" 2>&1 | tee "$OUT/bench.log"
  PYTHONUNBUFFERED=1 python3 bench/mla_decode.py build/libklecuda.so --out "$OUT/cuda-mla-decode.json" 2>&1 | tee -a "$OUT/bench.log"
  PYTHONUNBUFFERED=1 python3 bench/kda_layer.py build/libklecuda.so --out "$OUT/cuda-kda-layer.json" 2>&1 | tee -a "$OUT/bench.log"
  $COLLECT
  exit 0
fi

[ "$mode" = engine ] || [ "$mode" = arch ] || [ "$mode" = kv ] || [ "$mode" = big ] || [ "$mode" = batch ] || [ "$mode" = load ] || [ "$mode" = peer ] || [ "$mode" = route ] || [ "$mode" = sampling ] || { echo "unknown mode $mode (kernels | engine | arch | kv | big | batch | load | peer | route | sampling)" >&2; exit 2; }
[ -f .gpu/node/bin/node.xz ] || { echo ".gpu/ missing: run kernels-cuda/carry.sh here and carry .gpu" >&2; exit 2; }
xz -dc .gpu/node/bin/node.xz > .gpu/node/bin/node
chmod +x .gpu/node/bin/node
export PATH="$PWD/.gpu/node/bin:$PATH"
node --version
mkdir -p node_modules && tar -xJf .gpu/vitest.tar.xz -C node_modules  # vitest alone: no npm there
rm -rf .gpu/dist && tar -xJf .gpu/dist.tar.xz -C .gpu  # the bundled scripts (this call's, never a warm machine's older ones)
node engine/build/build.mjs native cuda 2>&1 | tail -5
if [ "$mode" = load ]; then
  node .gpu/dist/bench/gpu-load.mjs "$@" 2>&1 | tee "$OUT/gpu-load.log"
  cp bench/results/gpu-load-* "$OUT/" 2>/dev/null || true
  exit 0
fi
if [ "$mode" = route ]; then
  if [ -n "${TTFT:-}" ]; then
    node .gpu/dist/bench/gpu-48b.mjs --ttft "$TTFT" --ttft-budget "${TTFT_BUDGET:-200}" 2>&1 | tee "$OUT/gpu-ttft.log"
    cp bench/results/gpu-ttft-* "$OUT/" 2>/dev/null || true
  fi
  node .gpu/dist/bench/gpu-route.mjs "$@" 2>&1 | tee "$OUT/gpu-route.log"
  cp bench/results/gpu-route-* "$OUT/" 2>/dev/null || true
  exit 0
fi
if [ "$mode" = kv ]; then
  node .gpu/dist/bench/kv-long.mjs --backend cuda "$@" 2>&1 | tee "$OUT/kv-long.log"
  cp bench/results/kv-long-cuda-* "$OUT/" 2>/dev/null || true
  exit 0
fi
if [ "$mode" = sampling ]; then
  SAMPLING="node node_modules/vitest/vitest.mjs run test/unit/cuda-sampling.test.ts"
  $SAMPLING 2>&1 | tee "$OUT/sampling-test.log" | tail -12
  KLE_PARITY_QUICK=1 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 $SAMPLING 2>&1 | tee "$OUT/sampling-sanitizer.log" | tail -6
  if [ -d .gpu/before ]; then
    (cd .gpu/before && node engine/build/build.mjs cuda 2>&1 | tail -3)
    node .gpu/dist/bench/gpu-sampling.mjs --addon .gpu/before/build/cuda/kle-cuda.node --label before "$@" 2>&1 | tee "$OUT/gpu-sampling.log"
  fi
  node .gpu/dist/bench/gpu-sampling.mjs "$@" 2>&1 | tee -a "$OUT/gpu-sampling.log"
  cp bench/results/gpu-sampling-* "$OUT/" 2>/dev/null || true
  exit 0
fi
# one file at a time: the device-memory checks read the card's free memory, which another file's
# models would move
VITEST="node node_modules/vitest/vitest.mjs run --no-file-parallelism test/unit/cuda-parity.test.ts test/unit/cuda-sampling.test.ts"
# CPU/GPU parity (the test CI skips), then the default model's part of it under compute-sanitizer;
# SKIP_PARITY=1 goes straight to the benches (a call that repeats one already checked)
[ -n "${SKIP_PARITY:-}" ] || $VITEST --pool=forks 2>&1 | tee "$OUT/parity.log" | tail -40
if [ "$mode" = arch ]; then
  node .gpu/dist/bench/arch.mjs --backend cuda "$@" 2>&1 | tee "$OUT/arch.log"
  cp bench/results/arch-cuda-* bench/results/arch-*-h[0-9]*.svg "$OUT/" 2>/dev/null || true
  exit 0
fi
if [ "$mode" = batch ]; then
  [ -n "${SKIP_SANITIZER:-}" ] || KLE_PARITY_QUICK=1 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 $VITEST --pool=forks 2>&1 | tee "$OUT/engine-sanitizer.log" | tail -12
  node .gpu/dist/bench/gpu-batch.mjs "$@" 2>&1 | tee "$OUT/gpu-batch.log"
  cp bench/results/gpu-batch-* "$OUT/" 2>/dev/null || true
  # PROFILE="4096x32 4096x256": where those batches' time goes (per operation, over 10 steps and
  # the sessions' set-up; PROFILE_ARGS="--precision bf16": one precision's steps alone)
  for p in ${PROFILE:-}; do
    KLE_CUDA_PROFILE=1 node .gpu/dist/bench/gpu-batch.mjs --only "$p" ${PROFILE_ARGS:-} 2>&1 | head -45 | tee -a "$OUT/gpu-batch-profile.log"
  done
  exit 0
fi
if [ "$mode" = peer ]; then  # .peer/ holds fla/ and modeling_kimi.py (bench/peers/kimi_peer_bench.py)
  node .gpu/dist/bench/gpu-batch.mjs --peer "$PWD/.peer" "$@" 2>&1 | tee "$OUT/gpu-peer.log"
  cp bench/results/gpu-peer-* "$OUT/" 2>/dev/null || true
  exit 0
fi
if [ "$mode" = big ]; then
  [ -n "${SKIP_SANITIZER:-}" ] || KLE_PARITY_QUICK=1 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 $VITEST --pool=forks 2>&1 | tee "$OUT/engine-sanitizer.log" | tail -12
  node .gpu/dist/bench/gpu-48b.mjs "$@" 2>&1 | tee "$OUT/gpu-48b.log"
  cp bench/results/gpu-48b-* "$OUT/" 2>/dev/null || true
  exit 0
fi
KLE_PARITY_QUICK=1 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 $VITEST --pool=forks 2>&1 | tee "$OUT/engine-sanitizer.log" | tail -12
# each step's results go to $OUT as soon as it ends (a later step may run past the call's limit)
save() { cp bench/results/cuda-engine-* bench/results/cuda-gpu-node-* bench/results/arch-cuda-* bench/results/arch-*-h[0-9]*.svg "$OUT/" 2>/dev/null || true; $COLLECT; }
# speed, and with .gpu/before (carry.sh BEFORE_REV) the same bench on that commit's addon,
# alternating so both see the same machine state
if [ -d .gpu/before ]; then
  (cd .gpu/before && node "$(ls engine/build/build.mjs wasm/build/build.mjs 2>/dev/null | head -1)" cuda 2>&1 | tail -3)
  for i in 1 2; do
    node .gpu/dist/bench/cuda-engine.mjs --label after 2>&1 | tee -a "$OUT/engine.log"
    node .gpu/dist/bench/cuda-engine.mjs --addon .gpu/before/build/cuda/kle-cuda.node --label before 2>&1 | tee -a "$OUT/engine.log"
  done
else
  node .gpu/dist/bench/cuda-engine.mjs 2>&1 | tee "$OUT/engine.log"
fi
save
[ "${1:-}" = --quick ] && exit 0
node .gpu/dist/bench/gpu-node.mjs 2>&1 | tee "$OUT/gpu-node.log"; save
node .gpu/dist/bench/arch.mjs --backend cuda "$@" 2>&1 | tee "$OUT/arch.log"; save
