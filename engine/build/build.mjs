#!/usr/bin/env node
// build.mjs: builds the C sources of wasm/ for every CPU target, from one source set.
//   wasm    emcc -O3 -msimd128 -> wasm/dist/kle-simd.wasm, and emcc -O3 without SIMD ->
//           wasm/dist/kle-scalar.wasm (the same code with the vector extensions lowered to
//           scalars: the baseline the benchmarks compare against), and the SIMD build with wasm
//           threads (atomics, an imported shared memory) -> wasm/dist/kle-simd-mt.wasm, and the
//           SIMD build with relaxed SIMD's int8 dot for the K-quants -> wasm/dist/kle-simd-relaxed.wasm
//           (through relaxed.mjs: loaders take it where the runtime runs that dot right)
//   abi     src/engine/kle-abi.ts from the prototypes of engine/include/kle.h
//   native  gcc -O3 -march=native -> build/native/kle.node (Node addon, N-API wrappers generated)
//   cuda    nvcc (sm_90 + PTX for newer GPUs) + gcc -> build/cuda/kle-cuda.node: the engine of
//           engine/model with the CUDA backend (kernels-cuda/src/backend_cuda.cu) in place of the
//           CPU one (backend_cpu.c); needs nvcc, runs where a GPU is
//   as      asc (AssemblyScript, from npm) -> wasm/dist/kle-as.wasm: the TypeScript side's hot
//           code (as/: the sampler, the BPE encoder), compiled to SIMD wasm that imports its memory
//   check   rebuilds wasm + abi + as into a temporary folder and fails if the committed ones differ
// Usage: node engine/build/build.mjs STEP...   (default: wasm abi native)
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { abiTs, parseHeader } from './abi.mjs';
import { addonC } from './addon-gen.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const header = join(root, 'engine', 'include', 'kle.h');
const abiPath = join(root, 'src', 'engine', 'kle-abi.ts');
const distDir = join(root, 'wasm', 'dist');

function sources() {
  const out = [];
  for (const dir of ['kernels', 'model']) {
    const d = join(root, 'engine', dir);
    if (!existsSync(d)) continue;
    for (const f of readdirSync(d).sort()) if (f.endsWith('.c')) out.push(join(d, f));
  }
  return out;
}

function run(cmd, args, env = process.env) {
  execFileSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: root, env });
}

// Flags shared by both wasm variants. No -ffast-math anywhere: vexp's rounding trick and the
// references' summation order depend on IEEE semantics. STANDALONE_WASM with --no-entry gives
// a reactor module whose only import is the memory-growth notification.
const common = [
  '-O3', '-std=c11', '-Wall', '-Wextra', '-Werror', '-I', join(root, 'engine', 'include'),
  '--no-entry', '-sSTANDALONE_WASM=1', '-sALLOW_MEMORY_GROWTH=1', '-sINITIAL_MEMORY=16MB',
  '-sMAXIMUM_MEMORY=4GB', '-sTOTAL_STACK=1MB', '-sFILESYSTEM=0', '-sERROR_ON_UNDEFINED_SYMBOLS=1',
];

// emcc runs the first wasm-opt on PATH: under `npm run` that is node_modules/.bin's (binaryen
// from npm, which assemblyscript brings), otherwise Debian's, and the two optimize differently.
// The build takes Debian's toolchain whole, however it is started.
const emccEnv = { ...process.env, PATH: (process.env.PATH ?? '').split(':').filter((d) => !d.includes('node_modules')).join(':') };

async function buildWasm(outDir) {
  mkdirSync(outDir, { recursive: true });
  const fns = parseHeader(header);
  const exportsList = JSON.stringify(['_malloc', '_free', ...fns.map((f) => `_${f.name}`)]);
  const exp = `-sEXPORTED_FUNCTIONS=${exportsList}`;
  run('emcc', [...common, '-msimd128', exp, ...sources(), '-o', join(outDir, 'kle-simd.wasm')], emccEnv);
  run('emcc', [...common, exp, ...sources(), '-o', join(outDir, 'kle-scalar.wasm')], emccEnv);
  // relaxed SIMD: kle.rdot left undefined (an import) for relaxed.mjs to replace, which checks
  // that nothing else was left undefined
  const pre = mkdtempSync(join(tmpdir(), 'kle-relaxed-'));
  try {
    const preWasm = join(pre, 'pre.wasm');
    run('emcc', [...common.map((f) => (f === '-sERROR_ON_UNDEFINED_SYMBOLS=1' ? '-sERROR_ON_UNDEFINED_SYMBOLS=0' : f)), '-msimd128', '-DKLE_RELAXED_SIMD',
      exp, ...sources(), '-o', preWasm], emccEnv);
    // imported here: wabt is a dev dependency, and the package's users build the native addon only
    const { relaxedModule } = await import('./relaxed.mjs');
    const { bytes } = await relaxedModule(readFileSync(preWasm), readFileSync(join(outDir, 'kle-simd.wasm')));
    writeFileSync(join(outDir, 'kle-simd-relaxed.wasm'), bytes);
  } finally {
    rmSync(pre, { recursive: true, force: true });
  }
  // wasm threads: atomics and one shared memory the host creates (imported), passive data
  // segments (so a second instance on the same memory does not initialize it again), and the
  // engine's allocations through engine/wasm-threads/alloc.c's lock (see there)
  const mt = ['-msimd128', '-matomics', '-mbulk-memory', '-sIMPORTED_MEMORY=1', '-Wl,--shared-memory'];
  const tmp = mkdtempSync(join(tmpdir(), 'kle-mt-'));
  try {
    const alloc = join(tmp, 'alloc.o');
    run('emcc', [...common.filter((f) => f.startsWith('-O') || f.startsWith('-W') || f === '-std=c11'), ...mt.slice(0, 3), '-c',
      join(root, 'engine', 'wasm-threads', 'alloc.c'), '-o', alloc], emccEnv);
    const renamed = ['malloc', 'calloc', 'realloc', 'free'].map((f) => `-D${f}=kle_mt_${f}`);
    const mtExp = `-sEXPORTED_FUNCTIONS=${JSON.stringify(['_kle_mt_malloc', '_kle_mt_free', ...fns.map((f) => `_${f.name}`)])}`;
    run('emcc', [...common, ...mt, ...renamed, mtExp, ...sources(), alloc, '-o', join(outDir, 'kle-simd-mt.wasm')], emccEnv);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function nodeIncludeDir() {
  const candidates = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'];
  const found = candidates.find((d) => existsSync(join(d, 'node_api.h')));
  if (!found) throw new Error(`node_api.h not found in ${candidates.join(', ')}: install Node's headers`);
  return found;
}

function buildNative() {
  const outDir = join(root, 'build', 'native');
  mkdirSync(outDir, { recursive: true });
  const addon = join(outDir, 'addon.c');
  writeFileSync(addon, addonC(parseHeader(header), ['kle.h']));
  const cc = process.env.CC ?? 'gcc';
  run(cc, [
    '-O3', '-march=native', '-std=c11', '-pthread', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared',
    '-DNODE_GYP_MODULE_NAME=kle', '-I', join(root, 'engine', 'include'), '-I', nodeIncludeDir(),
    ...sources(), addon, '-o', join(outDir, 'kle.node'), '-lm',
  ]);
}

function cudaSources() {
  const d = join(root, 'kernels-cuda', 'src');
  return readdirSync(d).sort().filter((f) => f.endsWith('.cu')).map((f) => join(d, f));
}

/**
 * nvcc flags for the CUDA sources (Hopper code, plus PTX that newer GPUs compile at load): one
 * recipe, kernels-cuda/nvcc.flags, which kernels-cuda/run-gpu.sh reads too.
 */
export const nvccFlags = readFileSync(join(root, 'kernels-cuda', 'nvcc.flags'), 'utf8').trim().split(/\s+/);

function buildCuda() {
  const outDir = join(root, 'build', 'cuda');
  mkdirSync(outDir, { recursive: true });
  const nodeHeader = join(root, 'kernels-cuda', 'include', 'kle_cuda_node.h');
  writeFileSync(join(outDir, 'addon.c'), addonC([...parseHeader(header), ...parseHeader(nodeHeader)], ['kle.h', 'kle_cuda_node.h']));
  const cc = process.env.CC ?? 'gcc';
  const nvcc = process.env.NVCC ?? 'nvcc';
  const objs = [];
  // the engine and the CPU kernels (the host side: shape checks, derived weights, the state
  // blob), with the CUDA backend in place of the CPU one
  for (const src of sources().filter((f) => !f.endsWith('backend_cpu.c'))) {
    const obj = join(outDir, `${src.split('/').slice(-2).join('-')}.o`);
    run(cc, ['-O3', '-std=c11', '-pthread', '-Wall', '-Wextra', '-Werror', '-fPIC', '-c', '-I', join(root, 'engine', 'include'), src, '-o', obj]);
    objs.push(obj);
  }
  const addonObj = join(outDir, 'addon.o');
  run(cc, ['-O3', '-std=c11', '-Wall', '-Wextra', '-Werror', '-fPIC', '-c', '-DNODE_GYP_MODULE_NAME=kle_cuda', '-I', join(root, 'engine', 'include'),
    '-I', join(root, 'kernels-cuda', 'include'), '-I', nodeIncludeDir(), join(outDir, 'addon.c'), '-o', addonObj]);
  objs.push(addonObj);
  for (const src of cudaSources()) {
    const obj = join(outDir, `${src.split('/').pop()}.o`);
    run(nvcc, [...nvccFlags, '-Xcompiler', '-fPIC', '-c', src, '-o', obj]);
    objs.push(obj);
  }
  run(nvcc, ['-shared', ...objs, '-o', join(outDir, 'kle-cuda.node'), '-lm']);
}

// The sampler owns no memory and must place no data in the one it borrows (the engine's):
// stub runtime, no abort strings, no static data (a test checks the module has no data segment).
function buildAs(outDir) {
  mkdirSync(outDir, { recursive: true });
  run(process.execPath, [join(root, 'node_modules', 'assemblyscript', 'bin', 'asc.js'), join(root, 'as', 'index.ts'),
    '-o', join(outDir, 'kle-as.wasm'), '-O3', '--runtime', 'stub', '--importMemory', '--noExportMemory', '--use', 'abort=', '--enable', 'simd']);
}

async function check() {
  const tmp = mkdtempSync(join(tmpdir(), 'kle-check-'));
  const stale = [];
  try {
    await buildWasm(tmp);
    buildAs(tmp);
    for (const f of ['kle-simd.wasm', 'kle-simd-relaxed.wasm', 'kle-simd-mt.wasm', 'kle-scalar.wasm', 'kle-as.wasm']) {
      const committed = join(distDir, f);
      if (!existsSync(committed) || !readFileSync(committed).equals(readFileSync(join(tmp, f)))) stale.push(`wasm/dist/${f}`);
    }
    const abi = abiTs(parseHeader(header));
    if (!existsSync(abiPath) || readFileSync(abiPath, 'utf8') !== abi) stale.push('src/engine/kle-abi.ts');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  if (stale.length) {
    console.error(`stale build outputs (run \`npm run build:wasm\` and commit): ${stale.join(', ')}`);
    process.exit(1);
  }
  console.log('wasm/dist and src/engine/kle-abi.ts match the C and AssemblyScript sources');
}

const steps = process.argv.slice(2);
for (const step of steps.length ? steps : ['wasm', 'abi', 'native']) {
  if (step === 'wasm') await buildWasm(distDir);
  else if (step === 'abi') writeFileSync(abiPath, abiTs(parseHeader(header)));
  else if (step === 'native') buildNative();
  else if (step === 'as') buildAs(distDir);
  else if (step === 'cuda') buildCuda();
  else if (step === 'check') await check();
  else {
    console.error(`unknown step "${step}" (wasm | abi | native | cuda | as | check)`);
    process.exit(2);
  }
}
