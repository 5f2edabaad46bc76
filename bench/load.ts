// npm run bench:load [-- --clients 8 --seconds 20 --max-tokens 64]
// Load test of the Worker under `wrangler dev` (workerd, started here on a free port): N clients
// each send streaming chat completions back to back for a bounded time. Reports completed
// requests, errors (must be zero), p50/p99 time to first token, tokens/s, and the memory of the
// workerd process and the engine's wasm memory. Writes bench/results/load-<machine>.json.
import { parseArgs } from 'node:util';
import { machine, machineTag, table, writeResult } from './lib.js';
import { barChart } from './svg.js';
import { startWranglerDev, workerdPeakMiB } from './wrangler.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/engine/node-kernels.js';

const { values } = parseArgs({ options: { clients: { type: 'string', default: '8' }, seconds: { type: 'string', default: '20' }, 'max-tokens': { type: 'string', default: '64' } } });
const clients = Number(values.clients), seconds = Number(values.seconds), maxTokens = Number(values['max-tokens']);

// /health loads the model: the clients start against a warm Worker
const { url, stop } = await startWranglerDev();

interface Req { ok: boolean; status: number; ttftMs: number; totalMs: number; tokens: number; error?: string }
const reqs: Req[] = [];
const deadline = Date.now() + seconds * 1000;
const prompts = ['Tell me a story about the sea.', 'What is linear attention?', 'Hello!', 'Write a poem about the edge.'];

async function one(i: number): Promise<Req> {
  const t0 = performance.now();
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content: prompts[i % prompts.length] }], max_tokens: maxTokens, temperature: 0.8, seed: i, stream: true, stream_options: { include_usage: true } }),
    });
    if (res.status !== 200 || !res.body) return { ok: false, status: res.status, ttftMs: 0, totalMs: performance.now() - t0, tokens: 0, error: await res.text() };
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '', ttft = 0, tokens = 0, done = false;
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      buf += dec.decode(r.value, { stream: true });
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const line = buf.slice(0, k);
        buf = buf.slice(k + 2);
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') done = true;
        else {
          const j = JSON.parse(data) as { choices: { delta?: { content?: string } }[]; usage?: { completion_tokens: number }; error?: unknown };
          if (j.error) return { ok: false, status: 200, ttftMs: ttft, totalMs: performance.now() - t0, tokens, error: JSON.stringify(j.error) };
          if (j.choices[0]?.delta?.content && !ttft) ttft = performance.now() - t0;
          if (j.usage) tokens = j.usage.completion_tokens;
        }
      }
    }
    return { ok: done, status: 200, ttftMs: ttft, totalMs: performance.now() - t0, tokens, ...(done ? {} : { error: 'stream ended without [DONE]' }) };
  } catch (e) {
    return { ok: false, status: 0, ttftMs: 0, totalMs: performance.now() - t0, tokens: 0, error: (e as Error).message };
  }
}

const t0 = performance.now();
await Promise.all(
  Array.from({ length: clients }, async (_, c) => {
    for (let i = c; Date.now() < deadline; i += clients) reqs.push(await one(i));
  }),
);
const wall = (performance.now() - t0) / 1e3;
// /health is the router's: the edge engine's figures are under .edge
const healthJson = (await (await fetch(`${url}/health`)).json()) as { edge?: { engineMemoryBytes: number | null }; engineMemoryBytes?: number | null };
const health = { engineMemoryBytes: healthJson.edge?.engineMemoryBytes ?? healthJson.engineMemoryBytes ?? null };
const metricsText = await (await fetch(`${url}/metrics`)).text();
const peak = workerdPeakMiB();
stop();

const ok = reqs.filter((r) => r.ok);
const errors = reqs.filter((r) => !r.ok);
const q = (a: number[], p: number) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : NaN;
};
const ttfts = ok.map((r) => r.ttftMs);
const tokens = ok.reduce((a, r) => a + r.tokens, 0);
const perStream = ok.map((r) => (r.tokens - 1) / ((r.totalMs - r.ttftMs) / 1e3)).filter(Number.isFinite);
const summary = {
  clients, seconds, maxTokens, wallSeconds: wall,
  completed: ok.length, errors: errors.length, errorSamples: errors.slice(0, 3).map((e) => `${e.status}: ${e.error}`),
  ttftP50Ms: q(ttfts, 0.5), ttftP99Ms: q(ttfts, 0.99),
  tokensPerSecondTotal: tokens / wall, tokensPerSecondPerStreamP50: q(perStream, 0.5),
  workerdPeakRssMiB: peak, engineWasmMemoryMiB: health.engineMemoryBytes ? health.engineMemoryBytes / 2 ** 20 : null,
  serverCountedCompletionTokens: Number(/kle_tokens_total\{kind="completion"\} (\d+)/.exec(metricsText)?.[1] ?? NaN),
};
console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log(`Load test: ${clients} concurrent streaming clients against wrangler dev (workerd, wasm SIMD, default model), ${seconds} s, max_tokens ${maxTokens}\n`);
console.log(table(['completed', 'errors', 'TTFT p50 ms', 'TTFT p99 ms', 'tokens/s total', 'tokens/s per stream p50', 'workerd peak RSS MiB', 'engine wasm MiB'], [[
  summary.completed, summary.errors, summary.ttftP50Ms.toFixed(1), summary.ttftP99Ms.toFixed(1), summary.tokensPerSecondTotal.toFixed(0), summary.tokensPerSecondPerStreamP50.toFixed(0), summary.workerdPeakRssMiB?.toFixed(0) ?? '-', summary.engineWasmMemoryMiB?.toFixed(0) ?? '-',
]]));
if (errors.length) console.log(`\nerrors: ${summary.errorSamples.join('\n')}`);
writeFileSync(join(packageRoot(), 'bench', 'results', `load-${machineTag()}.svg`), barChart(`wrangler dev, ${clients} streaming clients: time to first token (ms)`, 'ms', ['p50', 'p99'], [{ name: 'TTFT', values: [summary.ttftP50Ms, summary.ttftP99Ms] }]));
console.log(`wrote ${writeResult('load', { date: new Date().toISOString(), machine: machine(), ...summary })}`);
process.exit(errors.length ? 1 : 0);
