// Session hand-off: a conversation that outgrows the edge moves to a GPU node with its saved
// state, and the node resumes after the shared prefix instead of prefilling it again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRouter } from '../../src/router/router.js';
import { routerConfigFromEnv } from '../../src/router/config.js';
import { createApp, LoadTracker } from '../../src/server/app.js';
import { PrefixCache } from '../../src/server/prefix-cache.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { startRecordingUpstream, startServeProcess, type NodeProcess } from '../helpers/processes.js';

let node: NodeProcess;
let fresh: NodeProcess; // the same server, which has never seen the conversation
let router: ReturnType<typeof createRouter>;
// the router signs with the current key; the node also takes the previous one (a rotation)
const KEY = 'current-handoff-key-42-abcdef', OLD_KEY = 'previous-handoff-key-17-xyz';

beforeAll(async () => {
  [node, fresh] = await Promise.all([startServeProcess(['--backend', 'native', '--accept-handoff'], { KLE_HANDOFF_KEYS: `${KEY},${OLD_KEY}` }), startServeProcess(['--backend', 'native'])]);
  const model = await loadModelFromDirectory();
  const load = new LoadTracker();
  const prefixCache = new PrefixCache();
  const edge = createApp({ model, modelId: 'kimi-linear-default', load, prefixCache });
  const config = routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'gpu', url: node.url, maxContext: 100000, handoff: true }]), EDGE_MAX_TOKENS: '250', HANDOFF_KEY: KEY });
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

  it('a node refuses unsigned and badly signed states (401), and prefills when a signed one is not a prefix or not its model\'s', async () => {
    const { toBase64 } = await import('../../src/util/base64.js');
    const { signHandoff } = await import('../../src/server/handoff-auth.js');
    const model = await loadModelFromDirectory();
    const s = model.createSession();
    s.prefill([1, 2, 3, 4, 5]);
    const blob = s.save() as Uint8Array<ArrayBuffer>;
    const send = (extra: Record<string, unknown>) =>
      fetch(`${node.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...chat([{ role: 'user', content: 'Hello' }]), ...extra }) });
    const unsigned = await send({ kle_session: toBase64(blob) });
    expect(unsigned.status).toBe(401);
    expect(((await unsigned.json()) as { error: { code: string } }).error.code).toBe('unsigned_handoff');
    const forged = await send({ kle_session: toBase64(blob), kle_session_mac: await signHandoff('a-key-this-node-never-had', blob) });
    expect(forged.status).toBe(401);
    expect(((await forged.json()) as { error: { code: string } }).error.code).toBe('bad_handoff_signature');
    const tampered = blob.slice();
    tampered[40]! ^= 1;
    expect((await send({ kle_session: toBase64(tampered), kle_session_mac: await signHandoff(KEY, blob) })).status).toBe(401);
    // signed with the current or the previous key, but not a prefix of this prompt: prefilled
    for (const key of [KEY, OLD_KEY]) {
      const r = await send({ kle_session: toBase64(blob), kle_session_mac: await signHandoff(key, blob) });
      expect(r.status).toBe(200);
      expect(r.headers.get('x-kle-prefix-source')).not.toBe('handoff');
    }
    const junk = new Uint8Array(100).fill(7);
    const r2 = await send({ kle_session: toBase64(junk), kle_session_mac: await signHandoff(KEY, junk) });
    expect(r2.status).toBe(200);
  });

  it('the router never forwards a client\'s own kle_session', async () => {
    const upstream = await startRecordingUpstream();
    const { seen } = upstream;
    try {
      const model = await loadModelFromDirectory();
      const load = new LoadTracker();
      const r = createRouter({
        config: routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'up', url: upstream.url, maxContext: 100000, handoff: true }]), EDGE_MAX_TOKENS: '8', HANDOFF_KEY: KEY }),
        local: { app: createApp({ model, modelId: 'kimi-linear-default', load }), model: async () => model, load },
      });
      const res = await post(r, { ...chat([{ role: 'user', content: 'a prompt longer than the edge takes' }]), kle_session: 'AAAA', kle_session_mac: 'BBBB' });
      expect(res.headers.get('x-kle-route')).toBe('gpu:up');
      expect(seen.length).toBe(1);
      expect(seen[0]).not.toHaveProperty('kle_session');
      expect(seen[0]).not.toHaveProperty('kle_session_mac');
    } finally {
      upstream.close();
    }
  });
});

describe('routing by the prompt\'s text alone', () => {
  it('a prompt whose text puts it past the edge budget goes to a node that takes its upper bound, untokenized', async () => {
    const upstream = await startRecordingUpstream();
    const { seen } = upstream;
    const model = await loadModelFromDirectory();
    const tok = model.tokenizer!;
    let encodes = 0;
    const encode = tok.encode.bind(tok);
    tok.encode = (t: string) => (encodes++, encode(t));
    const routerFor = (maxContext: number) => {
      const load = new LoadTracker();
      return createRouter({
        config: routerConfigFromEnv({ GPU_NODES: JSON.stringify([{ name: 'up', url: upstream.url, maxContext }]), EDGE_MAX_TOKENS: '64' }),
        local: { app: createApp({ model, modelId: 'kimi-linear-default', load }), model: async () => model, load },
      });
    };
    const long = chat([{ role: 'user', content: 'word '.repeat(2000) }], 16);
    try {
      // a node of 1M tokens takes even the text's byte count: no tokenizing here
      const r1 = await post(routerFor(1 << 20), long);
      expect(r1.headers.get('x-kle-route')).toBe('gpu:up');
      expect(r1.headers.get('x-kle-route-reason')).toBe('exceeds-edge-budget');
      expect(encodes).toBe(0);
      expect((seen[0]!.messages as { content: string }[])[0]!.content.length).toBe(10000);
      // a node whose context is below the byte count: the prompt is counted to see if it fits
      const r2 = await post(routerFor(9000), long);
      expect(encodes).toBe(1);
      expect(r2.headers.get('x-kle-route')).toBe('gpu:up');
    } finally {
      tok.encode = encode;
      upstream.close();
    }
  });
});

