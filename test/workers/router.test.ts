// The Worker's router inside workerd, forwarding to a real node process on loopback.
import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';

const auth = { authorization: 'Bearer worker-test-key', 'content-type': 'application/json' };
const ask = (content: string, extra: Record<string, unknown> = {}) =>
  SELF.fetch('https://edge.test/v1/chat/completions', { method: 'POST', headers: auth, body: JSON.stringify({ model: 'kimi-linear-default', messages: [{ role: 'user', content }], max_tokens: 10, temperature: 0, ...extra }) });

describe('the Worker routes long jobs to a GPU node', () => {
  it('short: edge; long: gpu:loopback, streamed through with its usage; too long for the node: edge', async () => {
    const short = await ask('Hi');
    expect(short.headers.get('x-kle-route')).toBe('edge');
    await short.text();
    const long = await ask('Tell me about the sea and the ships on it. '.repeat(12), { stream: true, stream_options: { include_usage: true } });
    expect(long.status).toBe(200);
    expect(long.headers.get('x-kle-route')).toBe('gpu:loopback');
    expect(long.headers.get('x-kle-route-reason')).toBe('exceeds-edge-budget');
    const text = await long.text();
    expect(text.trim().endsWith('data: [DONE]')).toBe(true);
    expect(text).toMatch(/"usage":\{"prompt_tokens":\d+,"completion_tokens":\d+/);
    const tooLong = await ask('word '.repeat(400));
    expect(tooLong.headers.get('x-kle-route')).toBe('edge');
    expect(tooLong.status).toBe(400);
    const h = (await (await SELF.fetch('https://edge.test/health')).json()) as { nodes: { name: string; healthy: boolean }[] };
    expect(h.nodes[0]).toMatchObject({ name: 'loopback', healthy: true });
  });
});
