/** The server on Node (and Bun/Deno through node: APIs): the Hono app on @hono/node-server. */
import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { loadModelFromDirectory, type NodeBackendName } from '../node.js';
import type { LoadProgress } from '../weights/hf-loader.js';
import type { Limits } from '../server/app.js';
import type { RouterConfig } from '../router/config.js';
import type { Precision, SynthDtype } from '../engine/engine.js';
import { createEdge } from './edge.js';

export interface NodeServerOptions {
  port?: number;
  hostname?: string;
  /** model directory or .gguf file (default: the embedded model) */
  model?: string;
  /** seeded random weights made in engine memory for the model directory's config (benchmarks at full size) */
  synthesizeWeights?: { seed: number; dtype?: SynthDtype };
  modelId?: string;
  backend?: NodeBackendName;
  apiKeys?: readonly string[];
  limits?: Partial<Limits>;
  onProgress?: (p: LoadProgress) => void;
  /** test affordance: a slow node */
  tokenDelayMs?: number;
  /** put the router in front (GPU nodes, edge budget); without it every job runs here */
  router?: RouterConfig;
  /** take session hand-offs from a router (and bodies up to 64 MiB, unless limits say) */
  acceptHandoff?: boolean;
  /** the secrets those hand-offs are signed with (the current and the previous) */
  handoffKeys?: readonly string[];
  /** continuous batching of concurrent generations' decode steps (default on) */
  batching?: boolean;
  /** prompt tokens prefilled between turns of the event loop (default 1024) */
  prefillChunk?: number;
  /** the products' arithmetic (EngineModel.precision): 'bf16' on the CUDA backend or the native engine with AVX-512 BF16; default 'f32' */
  precision?: Precision;
}

/** Loads the model, starts listening, resolves with the server and its URL. */
export async function startNodeServer(o: NodeServerOptions = {}): Promise<{ server: ServerType; url: string; close: () => Promise<void> }> {
  const model = await loadModelFromDirectory(o.model, { backend: o.backend, onProgress: o.onProgress, synthesize: o.synthesizeWeights });
  if (o.precision) model.engine.precision(o.precision);
  const limits = { ...(o.acceptHandoff ? { maxBodyBytes: 64 << 20 } : {}), ...Object.fromEntries(Object.entries(o.limits ?? {}).filter(([, v]) => v !== undefined)) };
  const { app, pool } = createEdge({
    model,
    modelId: o.modelId ?? 'kimi-linear-default',
    apiKeys: o.apiKeys,
    limits,
    tokenDelayMs: o.tokenDelayMs,
    yieldToIo: () => new Promise<void>((r) => setImmediate(r)),
    acceptHandoff: o.acceptHandoff,
    handoffKeys: o.handoffKeys,
    router: o.router,
    batching: o.batching,
    prefillChunk: o.prefillChunk,
  });
  let timer: ReturnType<typeof setInterval> | null = null;
  if (pool && o.router) {
    // active health checks in the background (a Worker does them on requests instead)
    timer = setInterval(() => void pool.checkHealth(true), o.router.healthIntervalMs);
    timer.unref();
    void pool.checkHealth(true);
  }
  return new Promise((resolve) => {
    const server = serve({ fetch: app.fetch, port: o.port ?? 8787, hostname: o.hostname ?? '127.0.0.1' }, (info: AddressInfo) => {
      resolve({
        server,
        url: `http://${info.address.includes(':') ? `[${info.address}]` : info.address}:${info.port}`,
        close: () => new Promise<void>((r) => {
          if (timer) clearInterval(timer);
          server.close(() => r());
        }),
      });
    });
  });
}
