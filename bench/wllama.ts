// npx tsx bench/wllama.ts FILE.gguf... [--chromium PATH]   (Debian: apt-get install chromium)
// llama.cpp compiled to WebAssembly as people run it in a browser (@wllama/wllama 3.13.0, one
// thread) and this runtime's wasm SIMD engine, in the same headless Chromium page, on the same
// GGUF bytes, one file after the other. wllama: its OpenAI-style completion with timings
// (llama.cpp's prompt and predicted tokens/s), a prompt of about 512 tokens and 128 greedy tokens
// out, the best of 3 (its first runs are slower while V8 tiers up). Ours: as bench:peers measures
// it (a 512-token forward, then 128 one-token forwards from an empty context), after the same
// warm-up, the median of 3. wllama's generation bans token ids 0-255 (raw bytes): with random
// weights the model otherwise emits bytes that are not UTF-8, and wllama's JSON glue fails on them
// ("invalid UTF-8 byte"). Not in `npm test` (CI has no browser): a benchmark run by hand, results
// in bench/results/wllama-<machine>.json.
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/node.js';
import { machine, table, writeResult } from './lib.js';
import { bundlePage, runPageInChromium } from './browser-page.js';

const { values, positionals } = parseArgs({ options: { chromium: { type: 'string', default: 'chromium' } }, allowPositionals: true });
if (!positionals.length) throw new Error('usage: npx tsx bench/wllama.ts FILE.gguf... (bench:peers leaves its files in a kle-peers-* temporary folder)');
const root = packageRoot();
const PP = 512, TG = 128;

const page = `
import { Wllama } from '@wllama/wllama';
import { loadModel, sourceFromFiles, WasmBackend } from ${JSON.stringify(join(root, 'src', 'index.ts'))};
const out = { ua: navigator.userAgent };
const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
try {
  const bytes = new Uint8Array(await (await fetch('/model.gguf')).arrayBuffer());
  // ours
  const backend = await WasmBackend.instantiate('wasm', await (await fetch('/kle-simd.wasm')).arrayBuffer());
  const m = await loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend });
  const V = m.config.vocabSize;
  const prompt = Array.from({ length: ${PP} }, (_, i) => (i * 7919 + 13) % V);
  for (let w = 0; w < 4; w++) {
    const s = m.engine.createSession();
    for (let i = 0; i < ${TG}; i++) s.forward([(i * 31 + 7) % V]);
    s.forward(prompt.slice(0, 64));
    s.free();
  }
  const pp = [], tg = [];
  for (let r = 0; r < 3; r++) {
    let s = m.engine.createSession();
    let t0 = performance.now();
    s.forward(prompt);
    pp.push(performance.now() - t0);
    s.free();
    s = m.engine.createSession();
    t0 = performance.now();
    for (let i = 0; i < ${TG}; i++) s.forward([(i * 31 + 7) % V]);
    tg.push(performance.now() - t0);
    s.free();
  }
  out.ours = { ppTokS: ${PP} / (median(pp) / 1000), tgTokS: ${TG} / (median(tg) / 1000) };
  m.free();
  // wllama
  const w = new Wllama({ default: '/wllama.wasm' }, { suppressNativeLog: true, logger: { debug() {}, log() {}, warn() {}, error() {} } });
  await w.loadModel([new Blob([bytes])], { n_ctx: 2048, n_batch: 512, n_threads: 1 });
  const ban = {};
  for (let i = 0; i < 256; i++) ban[String(i)] = -100;
  const runs = [];
  for (let r = 0; r < 3; r++) {
    let timings = null;
    const text = 'the river runs past the old mill and the children watch the water while the sun goes down over the hills '.repeat(18) + r;
    await w.createCompletion({ prompt: text, max_tokens: ${TG}, temperature: 0, stream: true, cache_prompt: false, logit_bias: ban,
      onData: (c) => { if (c.timings) timings = c.timings; } });
    runs.push(timings);
  }
  await w.exit();
  const best = (k) => Math.max(...runs.map((t) => t[k]));
  out.wllama = { ppTokS: best('prompt_per_second'), tgTokS: best('predicted_per_second'), promptTokens: runs[0].prompt_n, genTokens: runs[0].predicted_n };
} catch (e) { out.error = String(e && e.stack || e); }
await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
`;
const js = await bundlePage(page, root);
const ours = readFileSync(join(root, 'wasm', 'dist', 'kle-simd.wasm'));
const theirs = readFileSync(join(root, 'node_modules', '@wllama', 'wllama', 'esm', 'wasm', 'wllama.wasm'));

interface Side { ppTokS: number; tgTokS: number; promptTokens?: number; genTokens?: number }
interface Result { ua: string; ours?: Side; wllama?: Side; error?: string }
const runPage = (gguf: string) => runPageInChromium<Result>({ chromium: values.chromium!, appJs: js, timeoutMs: 600_000, assets: {
  '/model.gguf': { type: 'application/octet-stream', file: gguf },
  '/kle-simd.wasm': { type: 'application/wasm', data: ours },
  '/wllama.wasm': { type: 'application/wasm', data: theirs },
} });

const rows: { model: string; ours: Side; wllama: Side }[] = [];
let ua = '';
for (const file of positionals) {
  const r = await runPage(file);
  if (r.error || !r.ours || !r.wllama) throw new Error(`${file}: the page failed: ${r.error}`);
  ua = r.ua;
  rows.push({ model: basename(file, '.gguf'), ours: r.ours, wllama: r.wllama });
  console.error(`${basename(file)}: ours ${r.ours.ppTokS.toFixed(0)} / ${r.ours.tgTokS.toFixed(1)}, wllama ${r.wllama.ppTokS.toFixed(0)} / ${r.wllama.tgTokS.toFixed(1)}`);
}
console.log(`machine: ${JSON.stringify(machine())}; ${ua}\n`);
console.log(`One thread each in the same Chromium page: this runtime's wasm SIMD engine and wllama 3.13.0 (llama.cpp in wasm), pp${PP} and tg${TG} tokens/s\n`);
console.log(table(['model', 'ours pp', 'wllama pp', 'pp ratio', 'ours tg', 'wllama tg', 'tg ratio'],
  rows.map((r) => [r.model, r.ours.ppTokS.toFixed(0), r.wllama.ppTokS.toFixed(0), `${(r.ours.ppTokS / r.wllama.ppTokS).toFixed(2)}x`,
    r.ours.tgTokS.toFixed(1), r.wllama.tgTokS.toFixed(1), `${(r.ours.tgTokS / r.wllama.tgTokS).toFixed(2)}x`])));
console.log(`wrote ${writeResult('wllama', { date: new Date().toISOString(), machine: machine(), browser: ua, pp: PP, tg: TG, rows })}`);
