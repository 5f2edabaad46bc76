// npm run bench:relaxed -- FILE.gguf...   (runs in Deno: Node 20 cannot run relaxed SIMD right)
// The relaxed-SIMD build (wasm/dist/kle-simd-relaxed.wasm: relaxed SIMD's int8 dot in the
// Q4_K/Q5_K matvecs) against the plain SIMD build on the same GGUF files, in one Deno process:
// pp512 and tg128 as llama-bench defines them (bench/lib.ts's enginePpTg, as bench:peers), one
// thread, builds alternated three times, medians. Writes bench/results/relaxed-simd-<machine>.json.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { relaxedSimdWorks } from '../src/engine/relaxed-simd.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { loadModel } from '../src/model/load.js';
import { enginePpTg, machine, machineTag, median, table, writeResult } from './lib.js';

const files = (globalThis as unknown as { Deno?: { args: string[]; version: { deno: string; v8: string } } }).Deno;
if (!files) throw new Error('bench:relaxed runs in Deno (npm run bench:relaxed): Node 20 has no working relaxed SIMD');
if (!relaxedSimdWorks()) throw new Error('this runtime does not run relaxed SIMD right (relaxedSimdWorks() is false)');
const dist = new URL('../wasm/dist/', import.meta.url);
const builds = { simd: readFileSync(new URL('kle-simd.wasm', dist)), relaxed: readFileSync(new URL('kle-simd-relaxed.wasm', dist)) };

async function measure(build: 'simd' | 'relaxed', gguf: Uint8Array): Promise<{ pp: number; tg: number }> {
  const backend = await WasmBackend.instantiate(build === 'simd' ? 'wasm-simd' : 'wasm-relaxed', builds[build]);
  const m = await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend });
  const { ppTokS, tgTokS } = enginePpTg(m.engine, m.config.vocabSize, 512, 128, 1, true);
  m.free();
  return { pp: ppTokS, tg: tgTokS };
}

const rows = [];
for (const path of files.args) {
  const gguf = new Uint8Array(readFileSync(path));
  const runs: Record<'simd' | 'relaxed', { pp: number[]; tg: number[] }> = { simd: { pp: [], tg: [] }, relaxed: { pp: [], tg: [] } };
  for (let r = 0; r < 3; r++)
    for (const b of ['simd', 'relaxed'] as const) {
      const x = await measure(b, gguf);
      runs[b].pp.push(x.pp);
      runs[b].tg.push(x.tg);
    }
  const s = { pp: median(runs.simd.pp), tg: median(runs.simd.tg) }, x = { pp: median(runs.relaxed.pp), tg: median(runs.relaxed.tg) };
  rows.push({ model: basename(path), simd: s, relaxed: x, ppRatio: x.pp / s.pp, tgRatio: x.tg / s.tg, runs });
}
const m = { ...machine(), deno: files.version.deno, v8: files.version.v8 };
console.log(`machine: ${JSON.stringify(m)}`);
console.log(table(['model', 'SIMD pp512', 'relaxed pp512', 'ratio', 'SIMD tg128', 'relaxed tg128', 'ratio'],
  rows.map((r) => [r.model, r.simd.pp.toFixed(0), r.relaxed.pp.toFixed(0), `${r.ppRatio.toFixed(3)}x`, r.simd.tg.toFixed(1), r.relaxed.tg.toFixed(1), `${r.tgRatio.toFixed(3)}x`])));
console.log(`wrote ${writeResult('relaxed-simd', { date: new Date().toISOString(), machine: m, tag: machineTag(), rows })}`);
