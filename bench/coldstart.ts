// npm run bench:coldstart
// Cold start of the Worker under wrangler dev (workerd): from process start to ready, then the
// first request (wasm instantiation, model load from the bundle, prefill, first token) and a
// second one for contrast; the wasm module's compile time in Node's V8; workerd's peak memory.
// Median of 3 cold starts. Writes bench/results/coldstart-<machine>.json.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/engine/node-kernels.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { barChart } from './svg.js';
import { startWranglerDev, workerdPeakMiB } from './wrangler.js';
import { writeFileSync } from 'node:fs';

async function firstToken(url: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 4, stream: true, temperature: 0 }) });
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let ms = 0;
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    if (!ms && /"content":"[^"]/.test(dec.decode(r.value))) ms = performance.now() - t0;
  }
  return ms || performance.now() - t0;
}

const runs: { readyMs: number; firstRequestMs: number; secondRequestMs: number; peakMiB: number | null }[] = [];
for (let i = 0; i < 3; i++) {
  // /v1/models does not load the model: the Worker is up, nothing more
  const { url, readyMs, stop } = await startWranglerDev({ readyPath: '/v1/models' });
  const first = await firstToken(url);
  const second = await firstToken(url);
  runs.push({ readyMs, firstRequestMs: first, secondRequestMs: second, peakMiB: workerdPeakMiB() });
  stop();
  await new Promise((r) => setTimeout(r, 1000));
}
const wasm = readFileSync(join(packageRoot(), 'wasm', 'dist', 'kle-simd.wasm'));
const compile: number[] = [];
for (let i = 0; i < 7; i++) {
  const t = performance.now();
  await WebAssembly.compile(wasm);
  compile.push(performance.now() - t);
}
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const summary = {
  readyMs: med(runs.map((r) => r.readyMs)), firstTokenColdMs: med(runs.map((r) => r.firstRequestMs)), firstTokenWarmMs: med(runs.map((r) => r.secondRequestMs)),
  wasmBytes: wasm.length, wasmCompileMs: med(compile), workerdPeakMiB: Math.max(...runs.map((r) => r.peakMiB ?? 0)), runs,
};
console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log('Cold start of the Worker under wrangler dev (medians of 3 cold starts):\n');
console.log(table(['wrangler dev to ready', 'first request: to first token', 'second request: to first token', 'kle-simd.wasm', 'wasm compile (V8, Node)', 'workerd peak RSS'], [[
  `${summary.readyMs.toFixed(0)} ms`, `${summary.firstTokenColdMs.toFixed(1)} ms`, `${summary.firstTokenWarmMs.toFixed(1)} ms`, `${(wasm.length / 1024).toFixed(0)} KiB`, `${summary.wasmCompileMs.toFixed(2)} ms`, `${summary.workerdPeakMiB.toFixed(0)} MiB`,
]]));
writeFileSync(join(packageRoot(), 'bench', 'results', `coldstart-${machineTag()}.svg`), barChart('Worker cold start (ms)', 'ms', ['to ready', 'first token (cold)', 'first token (warm)', 'wasm compile'], [{ name: 'median of 3', values: [summary.readyMs, summary.firstTokenColdMs, summary.firstTokenWarmMs, summary.wasmCompileMs] }]));
console.log(`wrote ${writeResult('coldstart', { date: new Date().toISOString(), machine: machine(), ...summary })}`);
process.exit(0);
