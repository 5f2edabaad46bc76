import { describe, expect, it } from 'vitest';
import { routerConfigFromEnv, RouterConfigError, DEFAULT_EDGE_MAX_TOKENS } from '../../src/router/config.js';

describe('router configuration', () => {
  it('reads nodes, tokens from secrets, defaults', () => {
    const c = routerConfigFromEnv({ GPU_NODES: '[{"name":"h100-a","url":"https://a.example/","maxContext":131072,"weight":2,"handoff":true}]', GPU_NODE_TOKEN_H100_A: 's3cret' });
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
  });
});
