// The Worker inside workerd: the OpenAI-compatible app on the SIMD wasm engine with the bundled
// default model.
import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import seeded from '../fixtures/seeded-completion.json';
import bounded from '../fixtures/bounded-completion.json';

const auth = { authorization: 'Bearer worker-test-key', 'content-type': 'application/json' };
const chat = (extra: Record<string, unknown> = {}) => ({ model: 'kimi-linear-default', messages: [{ role: 'user', content: 'Hello from workerd' }], max_tokens: 10, temperature: 0, ...extra });
const post = (body: unknown, headers: Record<string, string> = auth) => SELF.fetch('https://edge.test/v1/chat/completions', { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });

async function sse(res: Response): Promise<(Record<string, unknown> | '[DONE]')[]> {
  const text = await res.text();
  return text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => (b.slice(6) === '[DONE]' ? '[DONE]' : (JSON.parse(b.slice(6)) as Record<string, unknown>)));
}

describe('the Worker in workerd', () => {
  it('runs on the SIMD wasm engine', async () => {
    const h = (await (await SELF.fetch('https://edge.test/health')).json()) as { status: string; edge: { backend: string } };
    expect(h.status).toBe('ok');
    expect(h.edge.backend).toBe('wasm-simd');
    expect(WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]))).toBe(true);
  });

  it('a streamed chat completion', async () => {
    const r = await post(chat({ stream: true, stream_options: { include_usage: true } }));
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const ev = await sse(r);
    expect(ev.at(-1)).toBe('[DONE]');
    expect((ev[0] as { choices: { delta: { role: string } }[] }).choices[0]!.delta.role).toBe('assistant');
    const usage = (ev.at(-2) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
    expect(usage.prompt_tokens).toBeGreaterThan(5);
    expect(usage.completion_tokens).toBeGreaterThan(0);
    const text = ev.slice(1, -2).map((e) => ((e as { choices: { delta: { content?: string } }[] }).choices[0]?.delta.content ?? '')).join('');
    const whole = (await (await post(chat())).json()) as { choices: { message: { content: string } }[] };
    expect(text).toBe(whole.choices[0]!.message.content);
  });

  it('a non-streamed chat completion', async () => {
    const j = (await (await post(chat())).json()) as { object: string; usage: { total_tokens: number }; choices: { finish_reason: string }[] };
    expect(j.object).toBe('chat.completion');
    expect(j.usage.total_tokens).toBeGreaterThan(5);
    expect(['stop', 'length']).toContain(j.choices[0]!.finish_reason);
  });

  it('a seeded, sampled completion is the text Node gives (the AssemblyScript sampler in workerd)', async () => {
    const r = await SELF.fetch('https://edge.test/v1/completions', { method: 'POST', headers: auth, body: JSON.stringify(seeded.request) });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(seeded.text);
  });

  it('a completion with a bounded MLA cache (kv_budget) is the text Node gives', async () => {
    const r = await SELF.fetch('https://edge.test/v1/completions', { method: 'POST', headers: auth, body: JSON.stringify(bounded.request) });
    expect(r.status).toBe(200);
    expect(r.headers.get('x-kle-kv-budget')).toBe('6');
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(bounded.text);
    const bad = await SELF.fetch('https://edge.test/v1/completions', { method: 'POST', headers: auth, body: JSON.stringify({ ...bounded.request, kv_budget: 0 }) });
    expect(bad.status).toBe(400);
  });

  it('malformed JSON', async () => {
    const r = await post('{"model": ');
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string; type: string } }).error).toMatchObject({ code: 'invalid_json', type: 'invalid_request_error' });
  });

  it('an oversized prompt', async () => {
    const r = await post(chat({ messages: [{ role: 'user', content: 'hello world '.repeat(200) }] }));
    expect(r.status).toBe(400);
    const e = ((await r.json()) as { error: { code: string; message: string } }).error;
    expect(e.code).toBe('context_length_exceeded');
    expect(e.message).toMatch(/at most 200/);
  });

  it('auth failure', async () => {
    expect((await post(chat(), { 'content-type': 'application/json' })).status).toBe(401);
    expect((await post(chat(), { authorization: 'Bearer wrong', 'content-type': 'application/json' })).status).toBe(401);
  });

  it('an aborted stream stops its generation', async () => {
    const r = await post(chat({ stream: true, max_tokens: 200, temperature: 1, seed: 2 }));
    const reader = r.body!.getReader();
    await reader.read();
    await reader.cancel();
    let active = -1;
    for (let i = 0; i < 100 && active !== 0; i++) {
      await new Promise((res) => setTimeout(res, 10));
      active = ((await (await SELF.fetch('https://edge.test/health')).json()) as { edge: { activeSessions: number } }).edge.activeSessions;
    }
    expect(active).toBe(0);
    const m = await (await SELF.fetch('https://edge.test/metrics', { headers: auth })).text();
    // fewer completion tokens were counted than the 200 asked for in that request
    expect(m).toMatch(/kle_tokens_total\{kind="completion"\} \d+/);
  });
});
