// The router with real node processes on loopback: two of the project's own servers (native
// engine; one slow), one that answers 500, one killed mid-test. Every request must be delivered
// exactly once (one complete answer) or fail clearly (an error status or an error event).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRouter } from '../../src/router/router.js';
import { routerConfigFromEnv } from '../../src/router/config.js';
import { createApp, LoadTracker } from '../../src/server/app.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { readSse } from '../helpers/sse.js';
import { startFailingProcess, startRecordingUpstream, startServeProcess, type NodeProcess } from '../helpers/processes.js';

const NODE_TOKEN = 'sekrit-node-token-42';
let fast: NodeProcess, slow: NodeProcess, failing: NodeProcess;
let router: ReturnType<typeof createRouter>;
let load: LoadTracker;
const long = 'Tell me everything about linear attention and the delta rule, in detail. '.repeat(3);

beforeAll(async () => {
  [fast, slow, failing] = await Promise.all([
    startServeProcess(['--backend', 'native', '--api-key', NODE_TOKEN, '--max-concurrent', '32']),
    startServeProcess(['--backend', 'native', '--api-key', NODE_TOKEN, '--max-concurrent', '32', '--debug-token-delay-ms', '15']),
    startFailingProcess(),
  ]);
  const model = await loadModelFromDirectory();
  load = new LoadTracker();
  const edge = createApp({ model, modelId: 'kimi-linear-default', load, limits: { maxConcurrent: 1 } });
  const config = routerConfigFromEnv({
    GPU_NODES: JSON.stringify([
      { name: 'fast', url: fast.url, maxContext: 4096, weight: 1 },
      { name: 'slow', url: slow.url, maxContext: 4096, weight: 1 },
      { name: 'broken', url: failing.url, maxContext: 4096, weight: 4 },
    ]),
    GPU_NODE_TOKEN_FAST: NODE_TOKEN,
    GPU_NODE_TOKEN_SLOW: NODE_TOKEN,
    GPU_NODE_TOKEN_BROKEN: NODE_TOKEN,
    EDGE_MAX_TOKENS: '64',
    BREAKER_FAILURES: '1',
    BREAKER_OPEN_MS: '60000',
    FIRST_BYTE_TIMEOUT_MS: '5000',
  });
  router = createRouter({ config, local: { app: edge, model: async () => model, load } });
}, 120_000);
afterAll(() => [fast, slow, failing].forEach((p) => p?.kill()));

const req = (content: string, extra: Record<string, unknown> = {}) =>
  router.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content }], max_tokens: 16, temperature: 0, ...extra }) });

/** exactly one complete answer, or a clear failure */
async function outcome(r: Response): Promise<'complete' | 'failed'> {
  if (r.status !== 200) {
    const j = (await r.json()) as { error?: { message: string } };
    expect(j.error?.message).toBeTruthy();
    return 'failed';
  }
  if (!r.headers.get('content-type')?.startsWith('text/event-stream')) {
    const j = (await r.json()) as { choices: unknown[] };
    expect(j.choices.length).toBe(1);
    return 'complete';
  }
  const ev = await readSse(r);
  const done = ev.filter((e) => e === '[DONE]').length;
  const errors = ev.filter((e) => e !== '[DONE]' && 'error' in e).length;
  expect(done + errors).toBe(1); // never both, never neither (no silent truncation)
  return done ? 'complete' : 'failed';
}

describe('router: edge or GPU', () => {
  it('a long job whose MLA caches a budget bounds stays at the edge, and says so', async () => {
    const nodes = JSON.stringify([{ name: 'fast', url: fast.url, maxContext: 4096, weight: 1 }]);
    const mk = (env: Record<string, string>) => routerConfigFromEnv({ GPU_NODES: nodes, GPU_NODE_TOKEN_FAST: NODE_TOKEN, EDGE_MAX_TOKENS: '64', ...env });
    const edgeModel = await loadModelFromDirectory();
    const edge = createApp({ model: edgeModel, modelId: 'kimi-linear-default', load: new LoadTracker(), limits: { maxConcurrent: 4 } });
    const local = { app: edge, model: async () => edgeModel, load: new LoadTracker() };
    const send = (r: ReturnType<typeof createRouter>, extra: Record<string, unknown> = {}) =>
      r.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content: long }], max_tokens: 16, temperature: 0, ...extra }) });
    // the router's default bound
    const byDefault = createRouter({ config: mk({ EDGE_KV_BUDGET: '48' }), local });
    const a = await send(byDefault);
    expect(a.headers.get('x-kle-route')).toBe('edge');
    expect(a.headers.get('x-kle-route-reason')).toBe('kv-budget-bounds-edge');
    expect(a.headers.get('x-kle-kv-budget')).toBe('48');
    expect(await outcome(a)).toBe('complete');
    // a request's own bound, without a router default; one past the edge's budget does not count
    const perRequest = createRouter({ config: mk({}), local });
    const b = await send(perRequest, { kv_budget: 32 });
    expect(`${b.headers.get('x-kle-route')}/${b.headers.get('x-kle-route-reason')}/${b.headers.get('x-kle-kv-budget')}`).toBe('edge/kv-budget-bounds-edge/32');
    expect(await outcome(b)).toBe('complete');
    const c = await send(perRequest, { kv_budget: 500 });
    expect(`${c.headers.get('x-kle-route')}/${c.headers.get('x-kle-route-reason')}`).toBe('gpu:fast/exceeds-edge-budget');
    expect(await outcome(c)).toBe('complete');
    // a job longer than the bounded edge takes still goes to a node
    const short = createRouter({ config: mk({ EDGE_KV_BUDGET: '48', EDGE_BUDGETED_MAX_TOKENS: '70' }), local });
    const d = await send(short);
    expect(d.headers.get('x-kle-route-reason')).toBe('exceeds-edge-budget');
    expect(await outcome(d)).toBe('complete');
    expect(() => mk({ EDGE_KV_BUDGET: '65' })).toThrow(/EDGE_KV_BUDGET must be a positive number up to 64/);
  });

  it('a short job stays at the edge; a long one goes to a GPU node, retried past the broken one', async () => {
    const r1 = await req('Hi');
    expect(r1.headers.get('x-kle-route')).toBe('edge');
    expect(r1.headers.get('x-kle-route-reason')).toBe('fits-edge');
    expect(await outcome(r1)).toBe('complete');
    // the broken node has the largest weight, so it is tried first: a 500 before the first
    // byte, so the job moves on to a working node and its breaker opens
    const r2 = await req(long);
    expect(r2.headers.get('x-kle-route')).toMatch(/^gpu:(fast|slow)$/);
    expect(r2.headers.get('x-kle-route-reason')).toBe('exceeds-edge-budget');
    expect(await outcome(r2)).toBe('complete');
    const broken = router.pool.status().find((n) => n.name === 'broken')!;
    expect(broken.breaker).toBe('open');
    expect(broken.lastError).toMatch(/HTTP 500/);
    expect(JSON.stringify(router.pool.status())).not.toContain(NODE_TOKEN);
  });

  it('concurrent long jobs: each delivered once, spread over the working nodes by load', async () => {
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => req(`${long} ${i}`, { stream: true, seed: i })));
    const routes = rs.map((r) => r.headers.get('x-kle-route'));
    expect(routes.every((x) => x === 'gpu:fast' || x === 'gpu:slow')).toBe(true);
    expect(new Set(routes).size).toBe(2);
    const outs = await Promise.all(rs.map(outcome));
    expect(outs.every((o) => o === 'complete')).toBe(true);
  });

  it('a saturated edge sends even short jobs to a GPU node', async () => {
    const [a, b] = await Promise.all([req('Hi there', { max_tokens: 40 }), req('Hello again', { max_tokens: 40 })]);
    const routes = [a, b].map((r) => `${r.headers.get('x-kle-route')}/${r.headers.get('x-kle-route-reason')}`).sort();
    expect(routes[0]).toBe('edge/fits-edge');
    expect(routes[1]).toMatch(/^gpu:(fast|slow)\/edge-saturated$/);
    await Promise.all([a, b].map(outcome));
  });

  it('a node with the same tokenizer uses the forwarded ids instead of tokenizing again', async () => {
    const r = await Promise.all([req('Hi there', { max_tokens: 40 }), req('Hello again', { max_tokens: 40 })]);
    const forwarded = r.find((x) => x.headers.get('x-kle-route')?.startsWith('gpu:'))!;
    expect(forwarded.headers.get('x-kle-route-reason')).toBe('edge-saturated');
    expect(forwarded.headers.get('x-kle-prompt-ids')).toBe('used');
    await Promise.all(r.map(outcome));
  });

  it('a job no node can take is never forwarded', async () => {
    const r = await req(long, { max_tokens: 5000 });
    expect(r.headers.get('x-kle-route')).toBe('edge');
    expect(r.headers.get('x-kle-route-reason')).toBe('no-node-fits');
    expect(r.status).toBe(400); // the edge's own max_tokens limit then says why
  });

  it('a node killed mid-stream: its streams end with an error event, the rest complete, new jobs avoid it', async () => {
    const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => req(`${long} kill ${i}`, { stream: true, seed: i, max_tokens: 60 })));
    const onSlow = rs.filter((r) => r.headers.get('x-kle-route') === 'gpu:slow');
    expect(onSlow.length).toBeGreaterThan(0);
    setTimeout(() => slow.kill(), 150); // slow streams take ~1 s: this lands mid-stream
    const outs = await Promise.all(rs.map(async (r) => [r.headers.get('x-kle-route'), await outcome(r)] as const));
    for (const [route, o] of outs) if (route === 'gpu:fast') expect(o).toBe('complete');
    expect(outs.filter(([route, o]) => route === 'gpu:slow' && o === 'failed').length).toBeGreaterThan(0);
    const after = await Promise.all(Array.from({ length: 3 }, (_, i) => req(`${long} after ${i}`)));
    for (const r of after) {
      expect(r.headers.get('x-kle-route')).toBe('gpu:fast');
      expect(await outcome(r)).toBe('complete');
    }
  });

  it('with no node left: 503 with Retry-After, and the upstream token is never echoed', async () => {
    fast.kill();
    await new Promise((r) => setTimeout(r, 100));
    const r = await req(long);
    expect(r.status).toBe(503);
    expect(r.headers.get('retry-after')).toBe('60');
    const text = await r.text();
    expect(text).toMatch(/no GPU node can take this job/);
    expect(text).not.toContain(NODE_TOKEN);
    const h = (await (await router.request('/health')).json()) as { nodes: { name: string; healthy: boolean }[] };
    expect(h.nodes.map((n) => n.name)).toEqual(['fast', 'slow', 'broken']);
    const m = await (await router.request('/metrics')).text();
    expect(m).toMatch(/kle_routed_total\{route="edge",reason="fits-edge"\} \d+/);
    expect(m).toMatch(/kle_routed_total\{route="gpu:fast",reason="exceeds-edge-budget"\} \d+/);
  });
});

describe('the router in front of the edge, in-process', () => {
  it('a counted prompt travels with its ids and the tokenizer\'s fingerprint; a client\'s own ids never go on', async () => {
    const model = await loadModelFromDirectory();
    const up = await startRecordingUpstream();
    try {
      const edgeLoad = new LoadTracker();
      edgeLoad.active = 1; // a saturated edge: the short job is counted, then forwarded
      const r = createRouter({ config: routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'rec', url: up.url, maxContext: 65536 }]), EDGE_MAX_TOKENS: '64' }), local: { app: createApp({ model, modelId: 'kimi-linear-default', load: edgeLoad, limits: { maxConcurrent: 1 } }), model: async () => model, load: edgeLoad } });
      const body = { model: 'kimi-linear-default', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 4, kle_prompt_ids: [1, 2, 3], kle_tokenizer: 'forged' };
      const res = await r.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(res.headers.get('x-kle-route')).toBe('gpu:rec');
      const sent = up.seen.at(-1)!;
      const want = model.tokenizer!.encode(model.tokenizer!.applyChatTemplate([{ role: 'user', content: 'Hello there' }]));
      expect(sent.kle_prompt_ids).toEqual(want);
      expect(sent.kle_tokenizer).toBe(model.tokenizer!.fingerprint);
      // routed by its text's length alone (not counted): no ids at all, not even the client's
      edgeLoad.active = 0;
      const byText = await r.request('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, messages: [{ role: 'user', content: long.repeat(20) }] }) });
      expect(byText.headers.get('x-kle-route')).toBe('gpu:rec');
      expect(up.seen.at(-1)!.kle_prompt_ids).toBeUndefined();
      expect(up.seen.at(-1)!.kle_tokenizer).toBeUndefined();
    } finally {
      up.close();
    }
  });

  it('a job that stays at the edge is tokenized once, and a chunked body over the limit gets 413', async () => {
    const model = await loadModelFromDirectory();
    const tok = model.tokenizer!;
    let encodes = 0;
    const encode = tok.encode.bind(tok);
    tok.encode = (text: string) => (encodes++, encode(text));
    const edgeLoad = new LoadTracker();
    const r = createRouter({ config: routerConfigFromEnv({}), local: { app: createApp({ model, modelId: 'kimi-linear-default', load: edgeLoad }), model: async () => model, load: edgeLoad, maxBodyBytes: 4096 } });
    const res = await r.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', prompt: 'Once upon a time', max_tokens: 4, temperature: 0 }) });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-kle-route')).toBe('edge');
    expect(encodes).toBe(1);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        if (sent++ >= 64) return ctrl.close();
        ctrl.enqueue(new TextEncoder().encode(' '.repeat(1024)));
      },
    });
    const big = await r.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body, duplex: 'half' } as RequestInit);
    expect(big.status).toBe(413);
    expect(sent).toBeLessThan(64);
    // a prompt whose text alone is past the edge budget and every node: refused, never tokenized
    encodes = 0;
    const r2 = createRouter({ config: routerConfigFromEnv({}), local: { app: createApp({ model, modelId: 'kimi-linear-default', load: edgeLoad, limits: { maxBodyBytes: 4 << 20 } }), model: async () => model, load: edgeLoad, maxBodyBytes: 4 << 20 } });
    const huge = await r2.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', prompt: 'word '.repeat(200_000), max_tokens: 4 }) });
    expect(huge.status).toBe(400);
    expect(encodes).toBe(0);
  });
});
