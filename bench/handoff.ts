// npm run bench:handoff
// Session hand-off, measured: a conversation of P tokens runs at the edge (wasm, in process),
// then its next turn outgrows the edge budget and the router forwards it to a GPU-node process
// (native engine here) with the saved state. Compares the node's time to first token with the
// hand-off against the same request on a fresh node that prefills everything, and reports the
// bytes moved. Writes bench/results/handoff-<machine>.json.
import { createRouter } from '../src/router/router.js';
import { routerConfigFromEnv } from '../src/router/config.js';
import { sessionBytes } from '../src/router/policy.js';
import { createApp, LoadTracker } from '../src/server/app.js';
import { PrefixCache } from '../src/server/prefix-cache.js';
import { parseKimiConfig } from '../src/engine/config.js';
import { KIMI_LINEAR_48B_CONFIG } from '../src/weights/synthetic.js';
import { loadModelFromDirectory } from '../src/node.js';
import { startServeProcess } from '../test/helpers/processes.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { lineChart } from './svg.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/node.js';
import type { ChatMessage } from '../src/tokenizer/tokenizer.js';

const SIZES = [512, 2048, 8192];
// the secret the router signs hand-offs with, and the node checks them with
const HANDOFF_KEY = 'bench-handoff-key-0123456789';
const node = await startServeProcess(['--backend', 'native', '--accept-handoff', '--max-prompt-tokens', '100000'], { KLE_HANDOFF_KEYS: HANDOFF_KEY });
const model = await loadModelFromDirectory();
const tok = model.tokenizer!;
const words = 'the sea and the ships and the storms at night, ';

async function ttft(res: Response): Promise<{ ms: number; text: string }> {
  const t0 = performance.now();
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let first = 0, text = '';
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    const s = dec.decode(r.value);
    if (!first && s.includes('"content":"') && !s.includes('"role"')) first = performance.now() - t0;
    text += s;
  }
  return { ms: first || performance.now() - t0, text };
}

const rows: Record<string, number | string>[] = [];
for (const P of SIZES) {
  // a first user message of about P tokens
  let content = '';
  while (tok.encode(tok.applyChatTemplate([{ role: 'user', content: content + words }])).length < P) content += words;
  const first: ChatMessage[] = [{ role: 'user', content }];
  const p1 = tok.encode(tok.applyChatTemplate(first)).length;
  const load = new LoadTracker();
  const prefixCache = new PrefixCache(1 << 30);
  const edge = createApp({ model, modelId: 'kimi-linear-default', load, prefixCache, limits: { maxPromptTokens: 100000, maxBodyBytes: 1 << 28 } });
  const router = createRouter({ config: routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'gpu', url: node.url, maxContext: 1 << 20, handoff: true }]), EDGE_MAX_TOKENS: String(p1 + 16), HANDOFF_KEY }), local: { app: edge, model: async () => model, load, prefixCache } });
  const body = (messages: ChatMessage[]) => ({ model: 'kimi-linear-default', messages, max_tokens: 8, temperature: 0, stream: true });
  const r1 = await router.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body(first), stream: false }) });
  const reply = ((await r1.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
  const second: ChatMessage[] = [...first, { role: 'assistant', content: reply }, { role: 'user', content: `And then? ${words}${words}` }];
  const p2 = tok.encode(tok.applyChatTemplate(second)).length;
  const t0 = performance.now();
  const viaRouter = await router.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body(second)) });
  const handoffHeadersMs = performance.now() - t0;
  if (viaRouter.status !== 200) throw new Error(`P=${P}: the router answered ${viaRouter.status}: ${await viaRouter.text()} ${JSON.stringify(router.pool.status())}`);
  const bytes = Number(viaRouter.headers.get('x-kle-handoff-bytes'));
  const reused = Number(viaRouter.headers.get('x-kle-prefix-reused'));
  const h = await ttft(viaRouter);
  // the same request on a node that prefills it all: a differently worded system prompt would
  // miss its cache too, but the cleanest is a fresh process
  const fresh = await startServeProcess(['--backend', 'native', '--max-prompt-tokens', '100000']);
  const t1 = performance.now();
  const direct = await fetch(`${fresh.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body(second)) });
  const directHeadersMs = performance.now() - t1;
  const d = await ttft(direct);
  fresh.kill();
  rows.push({
    prefixTokens: reused, promptTokens: p2, route: viaRouter.headers.get('x-kle-route') ?? '', handoffBytes: bytes,
    ttftHandoffMs: handoffHeadersMs + h.ms, ttftReprefillMs: directHeadersMs + d.ms, sameText: String(h.text.replace(/"id":"[^"]+"|"created":\d+/g, '') === d.text.replace(/"id":"[^"]+"|"created":\d+/g, '')),
  });
}
node.kill();
const cfg48 = parseKimiConfig(KIMI_LINEAR_48B_CONFIG);
const at = (t: number) => (sessionBytes(cfg48, t) / 2 ** 20).toFixed(1);
console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log('Session hand-off: edge (wasm, default model) -> node process (native) vs the node prefilling everything (time to first token, ms)\n');
console.log(table(['prefix tokens', 'prompt tokens', 'route', 'state moved (KiB)', 'TTFT with hand-off', 'TTFT re-prefill', 'saved', 'same output'], rows.map((r) => [
  r.prefixTokens!, r.promptTokens!, r.route!, (Number(r.handoffBytes) / 1024).toFixed(0), Number(r.ttftHandoffMs).toFixed(1), Number(r.ttftReprefillMs).toFixed(1), `${(Number(r.ttftReprefillMs) / Number(r.ttftHandoffMs)).toFixed(2)}x`, r.sameText!,
])));
console.log(`\nKimi-Linear-48B state at the same sizes (f32, 20 KDA layers constant + 7 MLA layers x 576 floats/token): ${SIZES.map((s) => `${s}: ${at(s)} MiB`).join(', ')}; 128K: ${at(131072)} MiB`);
writeFileSync(join(packageRoot(), 'bench', 'results', `handoff-${machineTag()}.svg`), lineChart(`Time to first token on the node, by prefix length (${machine().cpu})`, 'prefix tokens (log scale)', 'ms (log scale)', [
  { name: 'with hand-off', points: rows.map((r) => [Number(r.prefixTokens), Number(r.ttftHandoffMs)] as [number, number]) },
  { name: 're-prefill', points: rows.map((r) => [Number(r.prefixTokens), Number(r.ttftReprefillMs)] as [number, number]) },
], { logY: true }));
console.log(`wrote ${writeResult('handoff', { date: new Date().toISOString(), machine: machine(), rows, kimi48bStateMiB: Object.fromEntries([...SIZES, 131072].map((s) => [s, sessionBytes(cfg48, s) / 2 ** 20])) })}`);
