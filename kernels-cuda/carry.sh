#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for a device call on a GPU machine without Node: this machine's
# Node binary (xz-compressed, to fit the carry limit), the four N-API headers the CUDA addon
# compiles against, vitest and what it needs (for the parity test), and the GPU node and its
# benchmarks bundled by esbuild into single files (no node_modules there).
# kernels-cuda/run-gpu.sh engine unpacks and runs them.
#   bash kernels-cuda/carry.sh [BEFORE_REV]   BEFORE_REV: also that commit's engine sources, whose
#                                            addon the engine bench then times beside this one
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_BIN=$(readlink -f "$(command -v node)")
INC=$(dirname "$NODE_BIN")/../include/node
[ -f "$INC/node_api.h" ] || INC=/usr/include/node
rm -rf .gpu/dist
mkdir -p .gpu/node/bin .gpu/node/include/node .gpu/dist
if [ ! -f .gpu/node/bin/node.xz ] || [ "$NODE_BIN" -nt .gpu/node/bin/node.xz ]; then
  xz -T0 -6 -c "$NODE_BIN" > .gpu/node/bin/node.xz
fi
for h in node_api.h node_api_types.h js_native_api.h js_native_api_types.h; do cp "$INC/$h" .gpu/node/include/node/; done
npx esbuild --bundle --platform=node --format=esm --target=node20 --log-level=warning \
  --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" \
  --outdir=.gpu/dist --out-extension:.js=.mjs \
  src/gpu-node/main.ts bench/cuda-engine.ts bench/gpu-node.ts bench/arch.ts bench/kv-long.ts bench/gpu-48b.ts bench/gpu-load.ts bench/gpu-batch.ts bench/gpu-route.ts bench/gpu-sampling.ts
# compressed: the checkout and .gpu travel within 64 MiB (gpu-route's bundle holds a 163,840-rank vocabulary)
tar -cJf .gpu/dist.tar.xz -C .gpu dist && rm -rf .gpu/dist
if [ ! -f .gpu/vitest.tar.xz ] || [ package-lock.json -nt .gpu/vitest.tar.xz ]; then
  (cd node_modules && tar -cJf ../.gpu/vitest.tar.xz $(node ../kernels-cuda/vitest-closure.mjs))
fi
rm -rf .gpu/before
if [ -n "${1:-}" ]; then
  mkdir -p .gpu/before
  # the engine's sources in that commit's layout (engine/ now; wasm/ before the move)
  git archive "$1" $(git ls-tree --name-only "$1" | grep -xE 'engine|wasm|kernels-cuda|package.json') | tar -x -C .gpu/before
fi
du -sh .gpu
