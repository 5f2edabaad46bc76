#!/usr/bin/env node
// npm run -s check:vectors -- DIR
// Runs every kda_*.safetensors in DIR through the wasm SIMD, wasm scalar and native kernels,
// step by step and chunked (at the CPU default chunk of 16 and the spec's 64), prints one line
// per file and path with the relative errors, and exits 1 if any relative error (of the
// outputs or the final state) exceeds the tolerance.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Kernels } from '../engine/kernels.js';
import { loadNativeBackend, loadWasmBackend } from '../engine/node-kernels.js';
import { readKdaVector, runKdaVector, type KdaPath } from '../verify/kda-vectors.js';

const TOL = 1e-5;

async function main(argv: string[]): Promise<number> {
  const dir = argv[0];
  if (!dir || argv.length > 1) {
    console.error('usage: npm run -s check:vectors -- DIR');
    return 2;
  }
  if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
    console.error(`check:vectors: ${dir} is not a directory`);
    return 2;
  }
  const files = readdirSync(dir).filter((f) => /^kda_.*\.safetensors$/.test(f)).sort();
  if (files.length === 0) {
    console.error(`check:vectors: no kda_*.safetensors in ${dir}`);
    return 2;
  }
  const kernels = [new Kernels(await loadWasmBackend('simd')), new Kernels(await loadWasmBackend('scalar')), new Kernels(loadNativeBackend())];
  const paths: KdaPath[] = ['step', 'chunk16', 'chunk64'];
  let failures = 0;
  console.log(`${'file'.padEnd(34)} ${'backend'.padEnd(12)} ${'path'.padEnd(8)} ${'rel err o'.padStart(10)} ${'rel err S'.padStart(10)}  verdict`);
  for (const file of files) {
    let vec;
    try {
      vec = readKdaVector(new Uint8Array(readFileSync(join(dir, file))), file);
    } catch (e) {
      console.log(`${file.padEnd(34)} unreadable: ${(e as Error).message}`);
      failures++;
      continue;
    }
    for (const k of kernels)
      for (const path of paths) {
        let line: string;
        try {
          const r = runKdaVector(vec, k, path);
          const ok = r.relErrO <= TOL && r.relErrState <= TOL;
          if (!ok) failures++;
          line = `${r.relErrO.toExponential(2).padStart(10)} ${r.relErrState.toExponential(2).padStart(10)}  ${ok ? 'ok' : 'FAIL'}`;
        } catch (e) {
          failures++;
          line = `error: ${(e as Error).message}`;
        }
        console.log(`${file.padEnd(34)} ${k.name.padEnd(12)} ${path.padEnd(8)} ${line}`);
      }
  }
  console.log(failures ? `${failures} check(s) above ${TOL} or failed` : `all ${files.length * kernels.length * paths.length} checks within ${TOL}`);
  return failures ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`check:vectors: ${(e as Error).message}`);
    process.exit(2);
  },
);
