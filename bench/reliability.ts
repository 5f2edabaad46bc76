// npm run bench:reliability
// The server under abuse, over real HTTP on loopback (the Node server on the native engine, at
// most 4 generations at once), each case bounded in count and time:
//   streams over the limit: 12 concurrent streamed completions; the ones past the limit get 429
//     with Retry-After, every admitted one ends with [DONE]
//   disconnects: 8 streams cancelled after their first event; the server frees every session
//   slow clients: a stream read one chunk per 200 ms, then cancelled: the pull-based stream is
//     pulled as the socket drains, so what is generated ahead of the client is what the socket
//     buffers hold, and generation stops when the client goes
//   oversized chunked bodies: 4 concurrent 100 MB bodies without Content-Length: 413 each, and
//     the server's memory barely moves (it stops reading at the limit)
// and the fuzzers' last runs (build/fuzz/*.log from fuzz/run.sh), into one table.
// Writes bench/results/reliability-<machine>.json.
import { existsSync, readFileSync } from 'node:fs';
import { startNodeServer } from '../src/host/node.js';
import { machine, table, writeResult } from './lib.js';

const { url, close } = await startNodeServer({ port: 0, backend: 'native', limits: { maxConcurrent: 4, maxTokens: 256 } });
const chat = (extra: Record<string, unknown> = {}) => JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content: 'Tell me about the sea.' }], max_tokens: 48, temperature: 0.7, seed: 1, stream: true, ...extra });
const post = (body: string | ReadableStream<Uint8Array>, signal?: AbortSignal) =>
  fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal, ...(typeof body === 'string' ? {} : { duplex: 'half' }) } as RequestInit);
const health = async () => ((await (await fetch(`${url}/health`)).json()) as { activeSessions: number }).activeSessions;
const completionTokens = async () => Number(/kle_tokens_total\{kind="completion"\} (\d+)/.exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? 0);
const rows: { case: string; tried: number; outcome: string }[] = [];
const results: Record<string, unknown> = {};

// streams over the limit
console.error('case: streams over the limit');
{
  const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => post(chat({ seed: i }))));
  const over = rs.filter((r) => r.status === 429);
  const retryAfter = over.every((r) => r.headers.get('retry-after') !== null);
  const bodies = await Promise.all(rs.map((r) => r.text()));
  const done = rs.filter((r, i) => r.status === 200 && bodies[i]!.trimEnd().endsWith('data: [DONE]')).length;
  results.overLimit = { concurrent: 12, limit: 4, completed: done, refused429: over.length, retryAfterOnEvery429: retryAfter, other: 12 - done - over.length };
  rows.push({ case: 'streams over the concurrency limit (12 at a limit of 4)', tried: 12, outcome: `${done} completed with [DONE], ${over.length} got 429${retryAfter ? ' with Retry-After' : ''}, ${12 - done - over.length} other` });
}

// disconnects
console.error('case: disconnects');
{
  const before = await completionTokens();
  const ctl = Array.from({ length: 8 }, () => new AbortController());
  await Promise.all(ctl.map(async (c, i) => {
    const r = await post(chat({ seed: 100 + i, max_tokens: 256 }), c.signal);
    const reader = r.body!.getReader();
    await reader.read();
    c.abort();
  }));
  const t0 = performance.now();
  let active = await health();
  while (active > 0 && performance.now() - t0 < 5000) {
    await new Promise((r) => setTimeout(r, 20));
    active = await health();
  }
  const generated = (await completionTokens()) - before;
  results.disconnects = { streams: 8, activeAfter: active, msUntilFreed: Math.round(performance.now() - t0), tokensGenerated: generated, tokensIfRunToEnd: 8 * 256 };
  rows.push({ case: 'clients gone after their first event (8 streams of up to 256 tokens)', tried: 8, outcome: `all sessions freed ${active === 0 ? `within ${Math.round(performance.now() - t0)} ms` : 'NOT within 5 s'}; ${generated} tokens generated of ${8 * 256}` });
}

// slow client
console.error('case: slow client');
{
  const before = await completionTokens();
  const c = new AbortController();
  const r = await post(chat({ max_tokens: 256 }), c.signal);
  const reader = r.body!.getReader();
  let events = 0;
  for (let i = 0; i < 6; i++) {
    const { value } = await reader.read();
    events += new TextDecoder().decode(value).split('\n\n').filter((e) => e.startsWith('data: {')).length;
    await new Promise((res) => setTimeout(res, 200));
  }
  c.abort();
  await new Promise((res) => setTimeout(res, 300));
  const generated = (await completionTokens()) - before;
  results.slowClient = { eventsRead: events, tokensGenerated: generated, maxTokens: 256 };
  rows.push({ case: 'a client reading one chunk per 200 ms for 1.2 s, then gone', tried: 1, outcome: `${generated} tokens generated, ${events} of their events read by then (of 256 allowed; the rest sat in socket buffers)` });
}

// oversized chunked bodies
console.error('case: oversized chunked bodies');
{
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const watch = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
  const chunk = new Uint8Array(1 << 16).fill(32);
  const body = () => {
    let sent = 0;
    return new ReadableStream<Uint8Array>({ pull(ctrl) { if ((sent += chunk.length) > 100e6) ctrl.close(); else ctrl.enqueue(chunk); } });
  };
  const rs = await Promise.all(Array.from({ length: 4 }, () => post(body())));
  clearInterval(watch);
  const statuses = rs.map((r) => r.status);
  results.chunkedBodies = { bodies: 4, bytesEach: 100e6, statuses, rssBeforeMiB: Math.round(rss0 / 2 ** 20), rssPeakMiB: Math.round(peak / 2 ** 20) };
  const closes = rs.filter((r) => r.headers.get('connection') === 'close').length;
  rows.push({ case: '100 MB chunked bodies, no Content-Length (4 at once)', tried: 4, outcome: `${statuses.filter((s) => s === 413).length} got 413 (${closes} closing the connection); process RSS ${Math.round(rss0 / 2 ** 20)} -> ${Math.round(peak / 2 ** 20)} MiB peak` });
}
await close();

// the fuzzers' last runs
console.error('case: the fuzzers last runs');
for (const t of ['session_blob', 'tensor_table']) {
  const f = `build/fuzz/${t}.log`;
  if (!existsSync(f)) continue;
  const log = readFileSync(f, 'utf8');
  const runs = Number(/Done (\d+) runs in (\d+) second/.exec(log)?.[1] ?? NaN), secs = Number(/Done \d+ runs in (\d+) second/.exec(log)?.[1] ?? NaN);
  const cov = /cov: (\d+) ft: (\d+) corp: (\d+)/.exec(log.split('\n').filter((l) => /^#\d+/.test(l)).pop() ?? '');
  const crashed = /ERROR: (AddressSanitizer|libFuzzer|UndefinedBehaviorSanitizer)|runtime error:/.test(log);
  results[`fuzz_${t}`] = { runs, seconds: secs, coverage: cov ? Number(cov[1]) : null, features: cov ? Number(cov[2]) : null, corpus: cov ? Number(cov[3]) : null, findings: crashed ? 'see log' : 0 };
  rows.push({ case: `libFuzzer + ASan + UBSan: ${t}`, tried: runs, outcome: `${crashed ? 'FINDINGS (see build/fuzz)' : 'no crash, leak or sanitizer report'} in ${secs} s; ${cov ? `${cov[1]} coverage points, ${cov[2]} features, corpus ${cov[3]}` : ''}` });
}

console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log(table(['case', 'tried', 'outcome'], rows.map((r) => [r.case, r.tried, r.outcome])));
console.log(`wrote ${writeResult('reliability', { date: new Date().toISOString(), machine: machine(), results })}`);
process.exit(0);
