// npm run bench:route
// What routing a 1M-token request costs the Worker: the Worker under `wrangler dev` (workerd)
// with a GPU node on loopback (a stand-in that reads the body and answers at once), a
// 4 MB completion prompt (about 1M tokens of English) and smaller ones, wall time per request
// (workerd runs a request's JavaScript on one thread, so this is its CPU time plus loopback
// I/O), medians of 5. Beside it, in this process: what the router did with the same prompt
// before it routed by text length (tokenize it whole with @huggingface/tokenizers), and what
// tokenizing it costs now. Writes bench/results/route-<machine>.json.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { defaultModelDir, loadModelFromDirectory } from '../src/node.js';
import { brownDocuments } from '../train/prepare.js';
import { startWranglerDev } from './wrangler.js';
import { machine, table, writeResult } from './lib.js';

const brown = brownDocuments().map((d) => d.text).join('\n');
const textOf = (bytes: number) => brown.repeat(Math.ceil(bytes / brown.length)).slice(0, bytes);

let received = 0;
const node = createServer((req, res) => {
  if (req.url === '/health') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
  let n = 0;
  req.on('data', (d: Buffer) => (n += d.length));
  req.on('end', () => {
    received = n;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'ok', finish_reason: 'stop' }], usage: { prompt_tokens: 0, completion_tokens: 1, total_tokens: 1 } }));
  });
});
await new Promise<void>((r) => node.listen(0, '127.0.0.1', r));
const nodeUrl = `http://127.0.0.1:${(node.address() as { port: number }).port}`;
const rows: { node: string; prompt: string; bytes: number; route: string; reason: string; workerdMs: number; forwardedBytes: number }[] = [];
// a node of 8M tokens takes a 4 MB prompt on its byte count alone; one of 2M needs it counted
for (const maxContext of [8_000_000, 2_000_000]) {
const nodes = JSON.stringify([{ name: 'gpu', url: nodeUrl, maxContext }]);
const wr = await startWranglerDev({ args: ['--var', `GPU_NODES:${nodes}`, '--var', 'MAX_BODY_BYTES:8388608', '--var', 'EDGE_MAX_TOKENS:8192'], timeoutMs: 120_000 });
try {
  for (const [name, bytes] of [['1M tokens (4 MB)', 4_000_000], ['64K tokens (256 KB)', 256_000], ['10K tokens (32 KB)', 32_000]] as const) {
    const body = JSON.stringify({ model: 'kimi-linear-default', prompt: textOf(bytes), max_tokens: 16, temperature: 0 });
    const t: number[] = [];
    let route = '', reason = '';
    for (let i = 0; i < 6; i++) {
      const t0 = performance.now();
      const r = await fetch(`${wr.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      await r.text();
      if (i) t.push(performance.now() - t0); // the first warms the isolate up
      route = r.headers.get('x-kle-route') ?? String(r.status);
      reason = r.headers.get('x-kle-route-reason') ?? '';
    }
    t.sort((a, b) => a - b);
    rows.push({ node: `${maxContext / 1e6}M-token node`, prompt: name, bytes, route, reason, workerdMs: t[2]!, forwardedBytes: received });
    console.error(`${maxContext} ${name}: ${route} ${reason} ${t[2]!.toFixed(0)} ms`);
  }
} finally {
  wr.stop();
}
}
node.close();

// the same 4 MB prompt tokenized whole, as the router did for every request before
const dir = defaultModelDir();
const hf = new HfTokenizer(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')));
const tok = (await loadModelFromDirectory(dir)).tokenizer!;
const big = textOf(4_000_000);
let t0 = performance.now();
const hfIds = hf.encode(big, { add_special_tokens: false }).ids.length;
const hfMs = performance.now() - t0;
t0 = performance.now();
const asIds = tok.encode(big).length;
const asMs = performance.now() - t0;

console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log(table(['GPU node', 'prompt', 'route', 'reason', 'workerd ms per request (median)', 'bytes the node got (ids along when counted)'], rows.map((r) => [r.node, r.prompt, r.route, r.reason, r.workerdMs.toFixed(0), r.forwardedBytes])));
console.log(`\nthe 4 MB prompt tokenized whole in Node (what routing it cost before): @huggingface/tokenizers ${hfMs.toFixed(0)} ms (${hfIds} tokens); the AssemblyScript encoder ${asMs.toFixed(0)} ms (${asIds} tokens)`);
writeResult('route', { date: new Date().toISOString(), machine: machine(), rows, tokenize4MB: { huggingfaceMs: hfMs, assemblyScriptMs: asMs, tokens: hfIds } });
