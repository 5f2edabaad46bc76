// Session hand-off: a conversation that outgrows the edge moves to a GPU node with its saved
// state, and the node resumes after the shared prefix instead of prefilling it again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRouter } from '../../src/router/router.js';
import { routerConfigFromEnv } from '../../src/router/config.js';
import { createApp, LoadTracker } from '../../src/server/app.js';
import { PrefixCache } from '../../src/server/prefix-cache.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { startServeProcess, type NodeProcess } from '../helpers/processes.js';

let node: NodeProcess;
let fresh: NodeProcess; // the same server, which has never seen the conversation
let router: ReturnType<typeof createRouter>;

beforeAll(async () => {
  [node, fresh] = await Promise.all([startServeProcess(['--backend', 'native', '--accept-handoff']), startServeProcess(['--backend', 'native'])]);
  const model = await loadModelFromDirectory();
  const load = new LoadTracker();
  const prefixCache = new PrefixCache();
  const edge = createApp({ model, modelId: 'kimi-linear-default', load, prefixCache });
  const config = routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'gpu', url: node.url, maxContext: 100000, handoff: true }]), EDGE_MAX_TOKENS: '250' });
  router = createRouter({ config, local: { app: edge, model: async () => model, load, prefixCache } });
}, 60_000);
afterAll(() => [node, fresh].forEach((p) => p?.kill()));

const chat = (messages: { role: string; content: string }[], max_tokens = 24) => ({ model: 'kimi-linear-default', messages, max_tokens, temperature: 0 });
const post = (target: { request?: (p: string, i: RequestInit) => Response | Promise<Response> } | string, body: unknown) =>
  typeof target === 'string'
    ? fetch(`${target}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    : target.request!('/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

describe('session hand-off', () => {
  it('turn 2 outgrows the edge: the node resumes from the edge state and answers exactly as if it had prefilled', async () => {
    const first = [{ role: 'user', content: 'Tell me a long story about the sea, the ships, the sailors and the storms. '.repeat(4) }];
    const r1 = await post(router, chat(first));
    expect(r1.headers.get('x-kle-route')).toBe('edge');
    const reply = ((await r1.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
    const second = [...first, { role: 'assistant', content: reply }, { role: 'user', content: 'Go on, and tell me more about the storms at night and the lighthouse keepers. '.repeat(4) }];
    const r2 = await post(router, chat(second));
    expect(r2.headers.get('x-kle-route')).toBe('gpu:gpu');
    expect(r2.headers.get('x-kle-prefix-source')).toBe('handoff');
    const reused = Number(r2.headers.get('x-kle-prefix-reused'));
    expect(reused).toBeGreaterThan(100);
    expect(Number(r2.headers.get('x-kle-handoff-bytes'))).toBeGreaterThan(10_000);
    const viaHandoff = ((await r2.json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } });
    // the same request to a node that prefills it all itself
    const direct = await post(fresh.url, chat(second));
    expect(direct.headers.get('x-kle-prefix-source')).toBe('none');
    const plain = (await direct.json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } };
    expect(viaHandoff.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
    expect(viaHandoff.usage.prompt_tokens).toBe(plain.usage.prompt_tokens);
  });

  it('a node refuses a state that is not a prefix of the prompt, or not its model\'s, and prefills instead', async () => {
    const { Session } = await import('../../src/generate/session.js');
    const { toBase64 } = await import('../../src/util/base64.js');
    const model = await loadModelFromDirectory();
    const s = model.createSession();
    s.prefill([1, 2, 3, 4, 5]);
    const body = { ...chat([{ role: 'user', content: 'Hello' }]), kle_session: toBase64(s.save()) };
    const r = await fetch(`${node.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(r.status).toBe(200);
    expect(r.headers.get('x-kle-prefix-source')).not.toBe('handoff');
    const junk = { ...chat([{ role: 'user', content: 'Hello' }]), kle_session: toBase64(new Uint8Array(100).fill(7)) };
    const r2 = await fetch(`${node.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(junk) });
    expect(r2.status).toBe(200);
    expect(Session).toBeDefined();
  });
});
