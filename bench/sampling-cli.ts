// Entry for Bun and Deno (bundled by bench/sampling.ts): runs bench/sampling-run.ts with the
// committed wasm and prints the rows as one JSON line.
import { readFileSync } from 'node:fs';
import { runSampling } from './sampling-run.js';

const [root, sizes, runs, refUpTo] = [process.argv[2]!, process.argv[3]!, process.argv[4]!, process.argv[5]!];
const mod = (f: string) => new WebAssembly.Module(readFileSync(`${root}/wasm/dist/${f}`));
const rows = await runSampling(mod('kle-simd.wasm'), mod('kle-as.wasm'), sizes.split(',').map(Number), { runs: Number(runs), referenceUpTo: Number(refUpTo), clock: () => performance.now() });
console.log(JSON.stringify(rows));
