// Continuous batching in the server, over real HTTP on loopback: concurrent streams decode in
// shared engine steps and say exactly what each would alone; a client that leaves drops out at
// once; a long prompt is prefilled in chunks between which running streams keep decoding;
// /metrics shows the sequences and the batches.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNodeServer } from '../../src/host/node.js';
import { readSse, sseText } from '../helpers/sse.js';

let url = '';
let close: () => Promise<void>;
const post = (body: unknown, signal?: AbortSignal) => fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
const req = (prompt: string, extra: Record<string, unknown> = {}) => ({ model: 'kimi-linear-default', prompt, max_tokens: 24, temperature: 0, stream: true, ...extra });
const PROMPTS = ['Once upon a time', 'The weather today', 'She opened the door and', 'In the morning the birds', 'He said that the', 'A long road led to'];
const gauge = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);

beforeAll(async () => {
  ({ url, close } = await startNodeServer({ port: 0, backend: 'native', prefillChunk: 32, limits: { maxConcurrent: 16, maxPromptTokens: 4096, maxTokens: 400 } }));
});
afterAll(() => close());

describe('continuous batching in the server', () => {
  it('six concurrent streams share decode steps and say what each says alone', async () => {
    const alone: string[] = [];
    for (const p of PROMPTS) alone.push(sseText(await readSse(await post(req(p)))));
    const before = await (await fetch(`${url}/metrics`)).text();
    const together = await Promise.all(PROMPTS.map(async (p) => sseText(await readSse(await post(req(p))))));
    expect(together).toEqual(alone);
    const m = await (await fetch(`${url}/metrics`)).text();
    const steps = gauge(m, 'kle_decode_steps_total') - gauge(before, 'kle_decode_steps_total');
    console.log(`  6 streams x 24 tokens: ${steps} decode forwards, largest batch ${gauge(m, 'kle_batch_size_max')}`);
    // 6 x 24 tokens (each stream's first comes from its prefill) in fewer forwards than tokens
    expect(gauge(m, 'kle_batch_size_max')).toBeGreaterThanOrEqual(2);
    expect(steps).toBeLessThan(6 * 23);
    expect(gauge(m, 'kle_running_sequences')).toBe(0);
    expect(gauge(m, 'kle_waiting_sequences')).toBe(0);
    expect(m).toMatch(/^kle_decode_tokens_per_second \d/m);
    expect(m).toMatch(/^kle_state_bytes 0$/m);
  });

  it('a client that leaves drops out of the batch; the others finish', async () => {
    const ac = new AbortController();
    const leaving = post(req(PROMPTS[0]!, { max_tokens: 300 }), ac.signal).then(async (r) => {
      const reader = r.body!.getReader();
      await reader.read();
      await reader.read();
      ac.abort();
    });
    const staying = PROMPTS.slice(1, 4).map(async (p) => sseText(await readSse(await post(req(p, { max_tokens: 60 })))));
    let mid = '';
    for (let i = 0; i < 100; i++) {
      mid = await (await fetch(`${url}/metrics`)).text();
      if (gauge(mid, 'kle_running_sequences') > 0) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(gauge(mid, 'kle_running_sequences')).toBeGreaterThan(0);
    expect(gauge(mid, 'kle_state_bytes')).toBeGreaterThan(0);
    await leaving.catch(() => {});
    const texts = await Promise.all(staying);
    for (const t of texts) expect(t.length).toBeGreaterThan(0);
    // the abandoned session was freed, not left decoding
    let m = '';
    for (let i = 0; i < 50; i++) {
      m = await (await fetch(`${url}/metrics`)).text();
      if (gauge(m, 'kle_running_sequences') === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(gauge(m, 'kle_running_sequences')).toBe(0);
  });

  it('a long prompt is prefilled in chunks while a running stream keeps decoding', async () => {
    const stamps: number[] = [];
    const running = post(req(PROMPTS[1]!, { max_tokens: 300 })).then(async (r) => {
      const reader = r.body!.getReader();
      for (;;) {
        const { done } = await reader.read();
        if (done) return;
        stamps.push(performance.now());
      }
    });
    while (stamps.length < 3) await new Promise((r) => setTimeout(r, 5));
    const long = 'the cat sat on the mat and looked at the dog. '.repeat(120);
    const t0 = performance.now();
    const r = await post(req(long, { max_tokens: 4, stream: false }));
    const t1 = performance.now();
    const j = (await r.json()) as { usage: { prompt_tokens: number } };
    expect(j.usage.prompt_tokens).toBeGreaterThan(1000);
    await running;
    // tokens the running stream received while the long prompt was being prefilled
    const during = stamps.filter((t) => t > t0 && t < t1).length;
    console.log(`  ${j.usage.prompt_tokens}-token prompt in chunks of 32 over ${(t1 - t0).toFixed(0)} ms: the running stream got ${during} tokens meanwhile`);
    expect(during).toBeGreaterThan(5);
  });
});
