// The OpenAI-compatible app on Node, over real HTTP on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startNodeServer } from '../../src/host/node.js';
import { defaultModelDir, loadModelFromDirectory, packageRoot } from '../../src/node.js';
import { readSse, sseText } from '../helpers/sse.js';

let url = '';
let close: () => Promise<void>;
const KEY = 'test-key-123';
const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
const post = (path: string, body: unknown, headers: Record<string, string> = auth) => fetch(`${url}${path}`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
const chat = (extra: Record<string, unknown> = {}) => ({ model: 'kimi-linear-default', messages: [{ role: 'user', content: 'Hello there!' }], max_tokens: 12, temperature: 0, ...extra });

beforeAll(async () => {
  ({ url, close } = await startNodeServer({ port: 0, backend: 'wasm', apiKeys: [KEY], limits: { maxPromptTokens: 300, maxTokens: 64, maxConcurrent: 2, maxBodyBytes: 4096, maxKvBudget: 1000 } }));
});
afterAll(() => close());

describe('OpenAI-compatible server on Node', () => {
  it('non-streamed chat completion with usage', async () => {
    const r = await post('/v1/chat/completions', chat());
    expect(r.status).toBe(200);
    const j = (await r.json()) as { object: string; choices: { message: { role: string; content: string }; finish_reason: string }[]; usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } };
    expect(j.object).toBe('chat.completion');
    expect(j.choices[0]!.message.role).toBe('assistant');
    expect(['stop', 'length']).toContain(j.choices[0]!.finish_reason);
    expect(j.usage.prompt_tokens).toBeGreaterThan(5);
    expect(j.usage.completion_tokens).toBeLessThanOrEqual(12);
    expect(j.usage.total_tokens).toBe(j.usage.prompt_tokens + j.usage.completion_tokens);
  });

  it('streamed tokens leave as they are made, not in one burst at the end', async () => {
    // each network read the client sees; before the server yielded to I/O between tokens, the
    // corked socket sent the whole stream at once (a fast engine never left the promise chain)
    const r = await post('/v1/chat/completions', chat({ stream: true, max_tokens: 48, temperature: 1, seed: 5 }));
    let reads = 0, events = 0;
    for await (const part of r.body as unknown as AsyncIterable<Uint8Array>) {
      reads++;
      events += new TextDecoder().decode(part).split('\n\n').filter((e) => e.startsWith('data: {')).length;
    }
    expect(events).toBeGreaterThan(20);
    expect(reads).toBeGreaterThan(events / 3);
  });

  it('streamed chat completion: role chunk, content chunks, finish, usage, [DONE]; same text as not streamed', async () => {
    const r = await post('/v1/chat/completions', chat({ stream: true, stream_options: { include_usage: true } }));
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const ev = await readSse(r);
    expect(ev.at(-1)).toBe('[DONE]');
    const first = ev[0] as { object: string; choices: { delta: { role: string } }[] };
    expect(first.object).toBe('chat.completion.chunk');
    expect(first.choices[0]!.delta.role).toBe('assistant');
    const usage = ev.at(-2) as { choices: unknown[]; usage: { completion_tokens: number } };
    expect(usage.choices).toEqual([]);
    const fin = ev.at(-3) as { choices: { finish_reason: string }[] };
    expect(['stop', 'length']).toContain(fin.choices[0]!.finish_reason);
    const plain = (await (await post('/v1/chat/completions', chat())).json()) as { choices: { message: { content: string } }[] };
    expect(sseText(ev)).toBe(plain.choices[0]!.message.content);
  });

  it('kv_budget bounds the MLA cache: the same text while it holds the context, a header, clear 400s for bad budgets', async () => {
    const ask = (extra: Record<string, unknown>) => post('/v1/completions', { model: 'kimi-linear-default', prompt: 'The jury said that the city', max_tokens: 40, temperature: 0, ...extra });
    const free = (await (await ask({})).json()) as { choices: { text: string }[] };
    const roomy = await ask({ kv_budget: 200 });
    expect(roomy.headers.get('x-kle-kv-budget')).toBe('200');
    expect(((await roomy.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(free.choices[0]!.text);
    const recent = await ask({ kv_budget: 12, kv_policy: 'recent' });
    expect(recent.status).toBe(200);
    const tight = await ask({ kv_budget: 12, kv_keep_prompt: false, stream: true });
    expect(tight.status).toBe(200);
    expect((await readSse(tight)).at(-1)).toBe('[DONE]');
    const refusals: [unknown, RegExp][] = [
      [{ kv_budget: 0 }, /kv_budget/], [{ kv_budget: -4 }, /kv_budget/], [{ kv_budget: 2.5 }, /kv_budget/], [{ kv_budget: '64' }, /kv_budget/],
      [{ kv_budget: 5000 }, /kv_budget 5000 exceeds this server's limit of 1000/],
      [{ kv_budget: 8, kv_keep_prompt: true }, /kv_keep_prompt: the prompt's \d+ tokens do not fit kv_budget 8/],
      [{ kv_keep_prompt: true }, /kv_keep_prompt needs a kv_budget/],
      [{ kv_policy: 'recent' }, /kv_policy needs a kv_budget/],
      [{ kv_budget: 8, kv_policy: 'h2o' }, /kv_policy/],
      [{ kv_budget: 8, kv_policy: 'learned' }, /kv_policy: policy 'learned' needs a model with an importance head/],
    ];
    for (const [extra, msg] of refusals) {
      const r = await ask(extra as Record<string, unknown>);
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(msg);
    }
  });

  it('sampling extensions: logit_bias pins a token, min_p and the OpenAI penalties are taken, a bias outside the vocabulary is refused', async () => {
    // token 300 of the default tokenizer, biased by +100: nothing else can be drawn
    const tj = JSON.parse(readFileSync(join(defaultModelDir(), 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
    const piece = Object.entries(tj.model.vocab).find(([, id]) => id === 300)![0];
    const r = await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'The jury', max_tokens: 5, temperature: 1, seed: 3, logit_bias: { '300': 100 }, min_p: 0.05, frequency_penalty: 0.5, presence_penalty: 0.5 });
    expect(r.status).toBe(200);
    const text = ((await r.json()) as { choices: { text: string }[] }).choices[0]!.text;
    expect(text).toBe(piece.replace(/Ġ/g, ' ').repeat(5));
    const bad = await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'Hi', max_tokens: 2, logit_bias: { '999999': 5 } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string; param: string } }).error).toMatchObject({ param: 'logit_bias', message: expect.stringMatching(/outside the vocabulary/) });
    expect((await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'Hi', max_tokens: 2, min_p: 2 })).status).toBe(400);
  });

  it('a bounded completion is the committed text, not the unbounded one (workerd must give the same: test/workers)', async () => {
    const bounded = JSON.parse(readFileSync(join(packageRoot(), 'test', 'fixtures', 'bounded-completion.json'), 'utf8')) as { request: Record<string, unknown>; text: string; unbounded_text: string };
    const r = await post('/v1/completions', bounded.request);
    expect(r.headers.get('x-kle-kv-budget')).toBe('6');
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(bounded.text);
    const free = await post('/v1/completions', { ...bounded.request, kv_budget: undefined });
    expect(((await free.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(bounded.unbounded_text);
  });

  it('a seeded, sampled completion is the committed text (workerd must give the same: test/workers)', async () => {
    const seeded = JSON.parse(readFileSync(join(packageRoot(), 'test', 'fixtures', 'seeded-completion.json'), 'utf8')) as { request: unknown; text: string };
    const r = await post('/v1/completions', seeded.request);
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(seeded.text);
  });

  it('prompt ids sent with this tokenizer\'s fingerprint are used as the prompt; with another fingerprint the text is', async () => {
    const model = await loadModelFromDirectory();
    const tok = model.tokenizer!;
    const ids = tok.encode('The jury said');
    const base = { model: 'kimi-linear-default', max_tokens: 6, temperature: 0 };
    const byText = (await (await post('/v1/completions', { ...base, prompt: 'The jury said' })).json()) as { choices: { text: string }[] };
    const used = await post('/v1/completions', { ...base, prompt: 'ignored', kle_prompt_ids: ids, kle_tokenizer: tok.fingerprint });
    expect(used.headers.get('x-kle-prompt-ids')).toBe('used');
    expect(((await used.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(byText.choices[0]!.text);
    const other = await post('/v1/completions', { ...base, prompt: 'The jury said', kle_prompt_ids: [1, 2], kle_tokenizer: '0123456789abcdef' });
    expect(other.headers.get('x-kle-prompt-ids')).toBeNull();
    expect(((await other.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(byText.choices[0]!.text);
    const bad = await post('/v1/completions', { ...base, prompt: 'x', kle_prompt_ids: [5, 99999], kle_tokenizer: tok.fingerprint });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('kle_prompt_ids');
  });

  it('completions, models, health, metrics', async () => {
    const r = await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
    const j = (await r.json()) as { object: string; choices: { text: string }[] };
    expect(j.object).toBe('text_completion');
    expect(typeof j.choices[0]!.text).toBe('string');
    const models = (await (await fetch(`${url}/v1/models`, { headers: auth })).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(['kimi-linear-default']);
    const h = (await (await fetch(`${url}/health`)).json()) as { status: string; backend: string };
    expect(h).toMatchObject({ status: 'ok', backend: 'wasm-simd' });
    const m = await (await fetch(`${url}/metrics`, { headers: auth })).text();
    expect(m).toMatch(/kle_requests_total\{route="\/v1\/chat\/completions",status="200"\} \d+/);
    expect(m).toMatch(/kle_tokens_total\{kind="completion"\} \d+/);
    expect(m).toMatch(/kle_time_to_first_token_seconds_count \d+/);
    expect(m).toMatch(/kle_active_sessions 0/);
  });

  it('4xx answers that say which limit or field', async () => {
    const err = async (r: Response, status: number, re: RegExp) => {
      expect(r.status).toBe(status);
      const j = (await r.json()) as { error: { message: string; type: string; code: string | null } };
      expect(j.error.message).toMatch(re);
      return j.error;
    };
    await err(await post('/v1/chat/completions', '{"model": "x", "messages": ['), 400, /not valid JSON/);
    expect((await err(await post('/v1/chat/completions', chat({ messages: [] })), 400, /messages/)).type).toBe('invalid_request_error');
    await err(await post('/v1/chat/completions', chat({ temperature: 7 })), 400, /temperature/);
    await err(await post('/v1/chat/completions', chat({ model: 'gpt-4' })), 404, /model 'gpt-4' does not exist/);
    await err(await post('/v1/chat/completions', chat({ max_tokens: 65 })), 400, /max_tokens 65 exceeds this server's limit of 64/);
    const long = 'word '.repeat(700);
    expect((await err(await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: long.slice(0, 3000) }] })), 400, /prompt has \d+ tokens; this server takes at most 300/)).code).toBe('context_length_exceeded');
    await err(await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(5000) }] })), 413, /exceeds the limit of 4096/);
  });

  it('a chunked body (no Content-Length) over the limit gets 413 once the limit is passed; a JSON body labelled otherwise is read as JSON', async () => {
    // up to 64 MiB in 16 KiB chunks against a 4 KiB limit, made as the client sends them: the
    // server answers without reading the rest (socket buffers hold a few of them at most)
    let sent = 0;
    const chunk = new TextEncoder().encode(' '.repeat(16384));
    const body = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        if (sent++ >= 4096) return ctrl.close();
        ctrl.enqueue(chunk);
      },
    });
    const r = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: auth, body, duplex: 'half' } as RequestInit);
    expect(r.status).toBe(413);
    // the rest of the body is never read: the connection closes (left open, the client's upload
    // and the server's close() waited on each other; bench/reliability.ts found it)
    expect(r.headers.get('connection')).toBe('close');
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('body_too_large');
    expect(sent).toBeLessThan(1024);
    const form = await post('/v1/chat/completions', chat(), { authorization: `Bearer ${KEY}`, 'content-type': 'application/x-www-form-urlencoded' });
    expect(form.status).toBe(200);
  });

  it('an SSE answer to a client that sent Connection: close closes the connection', async () => {
    const { request } = await import('node:http');
    const u = new URL(`${url}/v1/chat/completions`);
    const { headers, closed } = await new Promise<{ headers: Record<string, unknown>; closed: Promise<void> }>((resolve, reject) => {
      const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { ...auth, connection: 'close' } }, (res) => {
        const closed = new Promise<void>((r) => res.socket.once('close', () => r()));
        res.resume();
        resolve({ headers: res.headers, closed });
      });
      req.on('error', reject);
      req.end(JSON.stringify(chat({ stream: true, max_tokens: 4 })));
    });
    expect(headers['content-type']).toMatch(/^text\/event-stream/);
    expect(headers.connection).toBe('close');
    await closed; // the server ends the socket after the stream (before: held open with keep-alive)
  });

  it('bearer auth: missing and wrong keys get 401; /health needs none', async () => {
    const r1 = await post('/v1/chat/completions', chat(), { 'content-type': 'application/json' });
    expect(r1.status).toBe(401);
    expect(((await r1.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    expect((await post('/v1/chat/completions', chat(), { authorization: 'Bearer nope', 'content-type': 'application/json' })).status).toBe(401);
    expect((await fetch(`${url}/metrics`)).status).toBe(401);
    expect((await fetch(`${url}/health`)).status).toBe(200);
  });

  it('a client that disconnects mid-stream stops its generation; over the concurrency limit gets 429', async () => {
    const ac = new AbortController();
    const r = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: auth, body: JSON.stringify(chat({ stream: true, max_tokens: 64, temperature: 1, seed: 3 })), signal: ac.signal });
    const reader = r.body!.getReader();
    await reader.read();
    // non-streamed generations interleave token by token; more at once than the limit get 429
    const busy = await Promise.all([1, 2, 3, 4].map(() => post('/v1/chat/completions', chat({ max_tokens: 64, temperature: 1, seed: 1 }))));
    expect(busy.filter((b) => b.status === 429).length).toBeGreaterThan(0);
    expect(busy.filter((b) => b.status === 200).length).toBeGreaterThan(0);
    const limited = busy.find((b) => b.status === 429)!;
    expect(limited.headers.get('retry-after')).toBe('1');
    expect(((await limited.json()) as { error: { message: string } }).error.message).toMatch(/the limit is 2/);
    ac.abort();
    await reader.cancel().catch(() => {});
    // the aborted generation ends and frees its slot
    let active = -1;
    for (let i = 0; i < 50 && active !== 0; i++) {
      await new Promise((res) => setTimeout(res, 20));
      active = ((await (await fetch(`${url}/health`)).json()) as { activeSessions: number }).activeSessions;
    }
    expect(active).toBe(0);
  });

  it('stop strings end the text', async () => {
    const base = (await (await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'Hello', max_tokens: 30, temperature: 0 })).json()) as { choices: { text: string }[] };
    const t = base.choices[0]!.text;
    if (t.length < 6) return;
    const stop = t.slice(3, 5);
    const r = (await (await post('/v1/completions', { model: 'kimi-linear-default', prompt: 'Hello', max_tokens: 30, temperature: 0, stop })).json()) as { choices: { text: string; finish_reason: string }[] };
    expect(r.choices[0]!.text).toBe(t.slice(0, t.indexOf(stop)));
    expect(r.choices[0]!.finish_reason).toBe('stop');
  });
});

describe('stream cancellation, in process', () => {
  it('cancelling the body stops generation after the current token and frees the session', async () => {
    const { createApp } = await import('../../src/server/app.js');
    const { loadModelFromDirectory } = await import('../../src/node.js');
    const { Metrics } = await import('../../src/server/metrics.js');
    const metrics = new Metrics();
    const app = createApp({ model: await loadModelFromDirectory(), modelId: 'm', metrics });
    const res = await app.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', prompt: 'Hi', max_tokens: 500, temperature: 1, seed: 4, stream: true }) });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    await reader.cancel();
    expect(metrics.activeSessions).toBe(0);
    const done = Number(/kle_tokens_total\{kind="completion"\} (\d+)/.exec(metrics.render())![1]);
    expect(done).toBeGreaterThan(0);
    expect(done).toBeLessThan(10); // not the 500 asked for
  });
});
