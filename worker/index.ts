/**
 * The Cloudflare Worker: the edge (src/host/edge.ts: the OpenAI-compatible app on the SIMD wasm
 * engine, behind the router), with the embedded default model bundled into the Worker (2.5 MB of
 * weights) or, when MODEL_SOURCE is "r2", read from the MODELS R2 bucket under MODEL_PREFIX.
 *
 * Vars (wrangler.toml or secrets): API_KEYS (comma-separated bearer tokens; none: no auth),
 * MODEL_ID, MAX_CONCURRENT, MAX_PROMPT_TOKENS, MAX_TOKENS, MODEL_SOURCE, MODEL_PREFIX, KV_BUDGET
 * (the MLA cache bound of requests without kv_budget) and MAX_KV_BUDGET.
 */
import type { Hono } from 'hono';
import kleSimd from '../wasm/dist/kle-simd.wasm';
import runtimeWasm from '../wasm/dist/kle-as.wasm';
import weights from '../models/default/model.safetensors';
import config from '../models/default/config.json';
import tokenizer from '../models/default/tokenizer.json';
import tokenizerConfig from '../models/default/tokenizer_config.json';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { installRuntimeModule } from '../src/engine/as-module.js';
import { loadModel } from '../src/model/load.js';
import { sourceFromFiles, sourceFromR2, type ModelSource, type R2BucketLike } from '../src/formats/source.js';
import { createEdge } from '../src/host/edge.js';
import { PrefixCache } from '../src/server/prefix-cache.js';
import { routerConfigFromEnv } from '../src/router/config.js';

// the AssemblyScript sampler and tokenizer, compiled by the bundler like the engine (Workers
// compile no wasm at run time)
installRuntimeModule(runtimeWasm);

export interface Env {
  [key: string]: unknown;
  API_KEYS?: string;
  /** JSON list of GPU nodes (see src/router/config.ts); with none, every job runs here */
  GPU_NODES?: string;
  EDGE_MAX_TOKENS?: string;
  MODEL_ID?: string;
  MAX_CONCURRENT?: string;
  MAX_PROMPT_TOKENS?: string;
  MAX_TOKENS?: string;
  /** request bodies past this many bytes are refused (413); a 1M-token prompt is about 4 MB */
  MAX_BODY_BYTES?: string;
  KV_BUDGET?: string;
  MAX_KV_BUDGET?: string;
  MODEL_SOURCE?: string;
  MODEL_PREFIX?: string;
  MODELS?: R2BucketLike;
}

function modelSource(env: Env): ModelSource {
  if (env.MODEL_SOURCE === 'r2') {
    if (!env.MODELS) throw new Error('MODEL_SOURCE is "r2" but there is no MODELS bucket binding');
    return sourceFromR2(env.MODELS, env.MODEL_PREFIX ?? '');
  }
  return sourceFromFiles({
    'config.json': JSON.stringify(config),
    'model.safetensors': new Uint8Array(weights),
    'tokenizer.json': JSON.stringify(tokenizer),
    'tokenizer_config.json': JSON.stringify(tokenizerConfig),
  }, 'bundled default model');
}

/** A numeric setting: unset, or a positive integer (anything else is a configuration error). */
function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name}: "${v}" is not a positive integer`);
  return n;
}

// one app per isolate, built on the first request (env is only known then); the model loads
// lazily inside it, once. The router sits in front of the edge app: it owns auth, keeps short
// jobs here and forwards long ones to the GPU nodes of GPU_NODES.
let app: Hono | null = null;

function build(env: Env): Hono {
  const strings = Object.fromEntries(Object.entries(env).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
  return createEdge({
    model: async () => loadModel(modelSource(env), { backend: await WasmBackend.instantiate('wasm-simd', kleSimd) }),
    modelId: env.MODEL_ID ?? 'kimi-linear-default',
    prefixCache: new PrefixCache(16 << 20),
    limits: {
      maxConcurrent: num(env.MAX_CONCURRENT, 'MAX_CONCURRENT'),
      maxPromptTokens: num(env.MAX_PROMPT_TOKENS, 'MAX_PROMPT_TOKENS'),
      maxTokens: num(env.MAX_TOKENS, 'MAX_TOKENS'),
      maxBodyBytes: num(env.MAX_BODY_BYTES, 'MAX_BODY_BYTES'),
      defaultKvBudget: num(env.KV_BUDGET, 'KV_BUDGET'),
      maxKvBudget: num(env.MAX_KV_BUDGET, 'MAX_KV_BUDGET'),
    },
    router: routerConfigFromEnv(strings),
    apiKeys: (env.API_KEYS ?? '').split(',').map((s) => s.trim()).filter(Boolean),
  }).app;
}

export default {
  fetch(req: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response> {
    try {
      app ??= build(env);
    } catch (e) {
      // a bad GPU_NODES or the like: say which setting, on every request, until it is fixed
      return Response.json({ error: { message: (e as Error).message, type: 'server_error', param: null, code: 'bad_configuration' } }, { status: 500 });
    }
    return app.fetch(req, env, ctx);
  },
} satisfies ExportedHandler<Env>;
