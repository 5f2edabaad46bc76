// kimi-edge serve [--port 8787] [--host 127.0.0.1] [--model DIR|FILE.gguf] [--backend wasm|native]
//   [--model-id ID] [--api-key KEY]... [--max-concurrent N] [--max-prompt-tokens N]
//   [--accept-handoff] [--max-body-bytes N] [--kv-budget N] [--max-kv-budget N]
// The OpenAI-compatible server on Node. API keys also come from KLE_API_KEYS (comma-separated);
// --accept-handoff takes states signed with a key of KLE_HANDOFF_KEYS (comma-separated, at most 2);
// GPU_NODES (JSON list of nodes) and EDGE_MAX_TOKENS put the edge-to-GPU router in front.
import { parseArgs } from 'node:util';
import type { NodeBackendName } from '../node.js';
import { startNodeServer } from '../host/node.js';
import { ProgressBar } from './progress.js';
import { routerConfigFromEnv } from '../router/config.js';
import { handoffKeysFrom } from '../server/handoff-auth.js';

export async function serveCmd(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '8787' },
      host: { type: 'string', default: '127.0.0.1' },
      model: { type: 'string' },
      'model-id': { type: 'string' },
      backend: { type: 'string', default: 'native' },
      'api-key': { type: 'string', multiple: true },
      'max-concurrent': { type: 'string' },
      'max-prompt-tokens': { type: 'string' },
      'debug-token-delay-ms': { type: 'string' },
      'accept-handoff': { type: 'boolean', default: false },
      'max-body-bytes': { type: 'string' },
      // the MLA cache bound of requests without kv_budget (docs/kv-budget.md), and the largest allowed
      'kv-budget': { type: 'string' },
      'max-kv-budget': { type: 'string' },
    },
  });
  const keys = [...(values['api-key'] ?? []), ...(process.env.KLE_API_KEYS ?? '').split(',').map((s) => s.trim()).filter(Boolean)];
  const n = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  const bar = new ProgressBar(`loading ${values.model ?? 'the embedded default model'}`);
  const { url } = await startNodeServer({
    onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal),
    port: Number(values.port),
    hostname: values.host,
    model: values.model,
    modelId: values['model-id'],
    backend: values.backend as NodeBackendName,
    apiKeys: keys,
    tokenDelayMs: n(values['debug-token-delay-ms']),
    acceptHandoff: values['accept-handoff'],
    // the secrets a router signs hand-offs with: the current, then the previous while rotating
    handoffKeys: handoffKeysFrom(process.env.KLE_HANDOFF_KEYS),
    // GPU_NODES (JSON) and EDGE_MAX_TOKENS in the environment put the router in front
    ...(process.env.GPU_NODES ? { router: routerConfigFromEnv(process.env) } : {}),
    limits: { maxConcurrent: n(values['max-concurrent']), maxPromptTokens: n(values['max-prompt-tokens']), maxBodyBytes: n(values['max-body-bytes']), defaultKvBudget: n(values['kv-budget']), maxKvBudget: n(values['max-kv-budget']) },
  });
  bar.done('model loaded');
  // the first line on stdout is the URL, for scripts and tests that start a server on port 0
  console.log(url);
  console.error(`kimi-edge: serving on ${url} (OpenAI-compatible: POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, /metrics)${keys.length ? ', bearer auth on' : ''}`);
  await new Promise(() => {});
  return 0;
}
