// npm run bench:gpu-route [-- --long 131072 --concurrent 32 --short 4096 --max-tokens 64]
//   (on the GPU machine: kernels-cuda/run-gpu.sh route)
// The full path at full size: Kimi-Linear-48B-A3B (its config, a vocabulary of its size from
// bench/kimi-vocab.ts, BF16 weights synthesized on the GPU) served by the GPU node command
// (src/gpu-node/main.ts --synthetic-weights) in its own process, and the router (the same server on
// the native CPU engine with the default model, GPU_NODES pointing at the node, EDGE_MAX_TOKENS
// 1024 so these jobs leave the edge) in this one, both on loopback. Through the router: each
// --long prompt alone, then --concurrent requests of --short tokens at once. Time to first token
// and decode tokens/s as the client sees them (SSE over two HTTP hops), the route the router
// chose (x-kle-route), the node's batch sizes from its /metrics. Writes
// bench/results/gpu-route-<gpu>.json.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startNodeServer } from '../src/host/node.js';
import { routerConfigFromEnv } from '../src/router/config.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { tokenizerFromTiktoken } from '../src/tokenizer/tiktoken.js';
import { promptOf, streamChat, type ChatRun } from './chat-client.js';
import { writeKimiSizeModelDir } from './kimi-vocab.js';
import { gpuTag, machine, median, table, writeResultAs } from './lib.js';

const { values } = parseArgs({
  options: {
    long: { type: 'string', default: '131072' }, concurrent: { type: 'string', default: '32' }, short: { type: 'string', default: '4096' },
    'max-tokens': { type: 'string', default: '64' },
  },
});
const longs = values.long.split(',').filter(Boolean).map(Number), N = Number(values.concurrent), short = Number(values.short);
const maxTokens = Number(values['max-tokens']);

// the model directory: config, tokenizer, no weights; the client counts tokens with its tokenizer
const dir = mkdtempSync(join(tmpdir(), 'kle-48b-'));
writeKimiSizeModelDir(dir);
const tk = tokenizerFromTiktoken(readFileSync(join(dir, 'tiktoken.model'), 'utf8'), JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>);
const tok = new Tokenizer(tk.tokenizerJson, tk.tokenizerConfig);

// the GPU node, as an operator starts it: the bundled command beside this bundle, or the source
const here = dirname(fileURLToPath(import.meta.url));
const bundled = join(here, '../src/gpu-node/main.mjs');
const nodeArgs = existsSync(bundled) ? [bundled] : ['--import', 'tsx', join(here, '../src/gpu-node/main.ts')];
const tLoad = performance.now();
const child = spawn(process.execPath, [...nodeArgs, '--model', dir, '--synthetic-weights', '7', '--port', '0', '--max-concurrent', String(Math.max(N, 4)), '--max-prompt-tokens', String(1 << 21)], { stdio: ['ignore', 'pipe', 'inherit'] });
const nodeUrl = await new Promise<string>((resolve, reject) => {
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    const m = /^(http:\/\/\S+)$/m.exec(out);
    if (m) resolve(m[1]!);
  });
  child.on('exit', (code) => reject(new Error(`the GPU node exited (${code}) before serving`)));
});
const nodeStartS = (performance.now() - tLoad) / 1000;
console.error(`GPU node at ${nodeUrl} in ${nodeStartS.toFixed(1)} s`);

// the router: every job over 1,024 tokens goes to the node; a generous first-byte wait (the node
// answers a 128K prompt's headers only once the prompt is in)
const router = await startNodeServer({
  port: 0,
  backend: 'native',
  router: routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'h200', url: nodeUrl, maxContext: 1 << 22 }]), EDGE_MAX_TOKENS: '1024', FIRST_BYTE_TIMEOUT_MS: '1800000' }),
  limits: { maxPromptTokens: 1 << 22, maxBodyBytes: 64 << 20, maxConcurrent: 4 * N },
});

async function nodeMetrics(): Promise<Record<string, number>> {
  const text = await (await fetch(`${nodeUrl}/metrics`)).text();
  return Object.fromEntries([...text.matchAll(/^(kle_[a-z_]+) ([0-9.e+-]+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
}

interface Row {
  case: string; requests: number; promptTokens: number; ttftMs: number; ttftP90Ms: number; perStreamTokPerS: number; totalTokPerS: number;
  /** content events a second over all streams once every stream had its first (no prompt left to prefill) */
  allInTokPerS: number | null; route: string; batchMax: number;
}
const rows: Row[] = [];
const p90 = (a: number[]) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * 0.9))]!;
function summarize(name: string, runs: ChatRun[], batchMax: number): Row {
  // aggregate decode: every completion token after its stream's first, over the span in which streams decoded
  const first = Math.min(...runs.map((r) => r.first)), last = Math.max(...runs.map((r) => r.last));
  const after = runs.reduce((a, r) => a + r.completionTokens - 1, 0);
  const routes = [...new Set(runs.map((r) => r.route ?? 'none'))].join(',');
  // the window in which every prompt was in and the streams only decoded
  const allIn = Math.max(...runs.map((r) => r.first)), end = Math.min(...runs.map((r) => r.last));
  const inWindow = runs.reduce((a, r) => a + r.times.filter((t) => t > allIn && t <= end).length, 0);
  return {
    case: name, requests: runs.length, promptTokens: median(runs.map((r) => r.promptTokens)), ttftMs: median(runs.map((r) => r.ttftMs)), ttftP90Ms: p90(runs.map((r) => r.ttftMs)),
    perStreamTokPerS: median(runs.map((r) => r.decodeTokPerS)), totalTokPerS: after / ((last - first) / 1000),
    allInTokPerS: runs.length > 1 && end > allIn ? inWindow / ((end - allIn) / 1000) : null, route: routes, batchMax,
  };
}

try {
  // warm-up: the node's first request (graph capture, first launches)
  await streamChat(router.url, 'warm-up', promptOf(tok, 2048).text, { maxTokens: 8 });
  for (const n of longs) {
    const p = promptOf(tok, n);
    console.error(`long prompt: ${p.tokens} tokens, ${p.text.length} chars`);
    const r = await streamChat(router.url, `${n}`, p.text, { maxTokens });
    rows.push(summarize(`1 x ${Math.round(n / 1024)}K`, [r], (await nodeMetrics()).kle_batch_size_max ?? 0));
    console.error(`${n}: TTFT ${(r.ttftMs / 1000).toFixed(2)} s, ${r.decodeTokPerS.toFixed(1)} tok/s, route ${r.route}`);
  }
  const prompts = Array.from({ length: N }, (_, i) => promptOf(tok, short, i + 1).text);
  const runs = await Promise.all(prompts.map((t, i) => streamChat(router.url, `c${i}`, t, { maxTokens })));
  rows.push(summarize(`${N} x ${Math.round(short / 1024)}K at once`, runs, (await nodeMetrics()).kle_batch_size_max ?? 0));
} finally {
  await router.close();
  child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}

let gpu = 'unknown GPU';
try {
  gpu = execFileSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' }).split('\n')[0]!.trim() || gpu;
} catch { /* no nvidia-smi: the name stays unknown */ }
console.log(`machine: ${JSON.stringify(machine())}, GPU node: ${gpu}, started (weights synthesized) in ${nodeStartS.toFixed(1)} s\n`);
console.log(`Through the router (native CPU, default model at the edge) to the GPU node (Kimi-Linear-48B-A3B, BF16), loopback, ${maxTokens} tokens out, greedy\n`);
console.log(table(['requests', 'prompt tokens (median)', 'TTFT s (median)', 'TTFT s (p90)', 'decode tok/s a stream', 'decode tok/s total', 'total, all prompts in', 'route', 'node batch max'],
  rows.map((r) => [r.case, r.promptTokens, (r.ttftMs / 1000).toFixed(2), (r.ttftP90Ms / 1000).toFixed(2), r.perStreamTokPerS.toFixed(1), r.totalTokPerS.toFixed(1), r.allInTokPerS?.toFixed(1) ?? '-', r.route, r.batchMax])));
console.log('(decode tok/s: completion tokens after each stream\'s first over the span of decoding; "all prompts in": content events a second once every stream had its first token and before the first stream ended)');
for (const r of rows) if (!r.route.startsWith('gpu:')) throw new Error(`${r.case}: routed to ${r.route}, not the GPU node`);
console.log(`wrote ${writeResultAs(`gpu-route-${gpuTag(gpu)}`, { date: new Date().toISOString(), machine: machine(), gpu, nodeStartS, maxTokens, rows })}`);
process.exit(0);
