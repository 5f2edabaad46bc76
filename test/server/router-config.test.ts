import { describe, expect, it } from 'vitest';
import { routerConfigFromEnv, RouterConfigError, DEFAULT_EDGE_MAX_TOKENS } from '../../src/router/config.js';

describe('router configuration', () => {
  it('reads nodes, tokens from secrets, defaults', () => {
    const c = routerConfigFromEnv({ GPU_NODES: '[{"name":"h100-a","url":"https://a.example/","maxContext":131072,"weight":2,"handoff":true}]', GPU_NODE_TOKEN_H100_A: 's3cret', HANDOFF_KEY: 'sixteen-chars-or-more' });
    expect(c.nodes[0]).toEqual({ name: 'h100-a', url: 'https://a.example', maxContext: 131072, weight: 2, token: 's3cret', handoff: true });
    expect(c.edgeMaxTokens).toBe(DEFAULT_EDGE_MAX_TOKENS);
    expect(routerConfigFromEnv({}).nodes).toEqual([]);
  });
  it('names what is wrong', () => {
    const bad = (env: Record<string, string>, re: RegExp) => {
      expect(() => routerConfigFromEnv(env)).toThrow(RouterConfigError);
      expect(() => routerConfigFromEnv(env)).toThrow(re);
    };
    bad({ GPU_NODES: '{' }, /GPU_NODES is not JSON/);
    bad({ GPU_NODES: '{}' }, /must be a JSON list/);
    bad({ GPU_NODES: '[{"name":"a b","url":"http://x","maxContext":1}]' }, /GPU_NODES\[0\]\.name/);
    bad({ GPU_NODES: '[{"name":"a","url":"ftp://x","maxContext":1}]' }, /GPU_NODES\[0\]\.url/);
    bad({ GPU_NODES: '[{"name":"a","url":"http://x","maxContext":0}]' }, /maxContext/);
    bad({ GPU_NODES: '[{"name":"a","url":"http://x","maxContext":5},{"name":"a","url":"http://y","maxContext":5}]' }, /"a" is used twice/);
    bad({ EDGE_MAX_TOKENS: '-3' }, /EDGE_MAX_TOKENS must be a positive number/);
    bad({ GPU_NODES: '[{"name":"a","url":"http://x","maxContext":5,"handoff":true}]' }, /handoff needs the secret HANDOFF_KEY/);
    bad({ HANDOFF_KEY: 'short' }, /HANDOFF_KEY must have at least 16 characters/);
  });
  it('keeps credentials out of node URLs and timers within what timers keep', () => {
    const bad = (env: Record<string, string>, re: RegExp) => expect(() => routerConfigFromEnv(env)).toThrow(re);
    // a URL's user:password would reach error messages and /health verbatim
    bad({ GPU_NODES: '[{"name":"a","url":"http://user:pass@x","maxContext":5}]' }, /must not carry credentials/);
    let msg = '';
    try {
      routerConfigFromEnv({ GPU_NODES: '[{"name":"a","url":"http://user:hunter2@x","maxContext":5}]' });
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).not.toMatch(/hunter2/);
    // setTimeout clamps delays past 2^31 - 1 ms to 1 ms: every forward would time out
    for (const v of ['1e10', 'Infinity', String(2 ** 31)]) {
      bad({ FIRST_BYTE_TIMEOUT_MS: v }, /FIRST_BYTE_TIMEOUT_MS must be a positive number up to 2147483647/);
      bad({ HEALTH_INTERVAL_MS: v }, /HEALTH_INTERVAL_MS must be a positive number up to 2147483647/);
    }
    expect(routerConfigFromEnv({ FIRST_BYTE_TIMEOUT_MS: String(2 ** 31 - 1) }).firstByteTimeoutMs).toBe(2 ** 31 - 1);
  });
});
