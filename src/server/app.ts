/**
 * The Hono app: an OpenAI-compatible API over one model, made of sub-apps joined with
 * app.route() (the OpenAI routes under /v1, the operational ones at the root) behind Hono's
 * bearer auth. The same app runs in a Cloudflare Worker (worker/index.ts), on Node
 * (src/host/node.ts), Bun and Deno.
 *
 * @example
 * const app = createApp({ model, modelId: 'kimi-linear', apiKeys: ['secret'] });
 * export default app; // a Worker, or: serve({ fetch: app.fetch, port: 8787 }) on Node
 */
import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { Model } from '../model/model.js';
import { errorResponse } from './errors.js';
import { DEFAULT_LIMITS, LoadTracker, type GenerationDeps, type Limits } from './generation.js';
import { sessionStateBytes } from '../engine/layer-kinds.js';
import type { SequenceGauges } from './metrics.js';
import { Metrics } from './metrics.js';
import { requireBearer } from './middleware.js';
import { openaiRoutes } from './openai.js';
import { opsRoutes } from './ops.js';
import { PrefixCache } from './prefix-cache.js';

export { DEFAULT_LIMITS, LoadTracker, type Limits } from './generation.js';

export interface ServerOptions {
  /** the model, or a function that loads it on first use (a Worker loads lazily) */
  model: Model | (() => Promise<Model>);
  /** the id /v1/models lists and requests must name */
  modelId?: string;
  /** bearer tokens; when set, every route but /health needs one */
  apiKeys?: readonly string[];
  limits?: Partial<Limits>;
  metrics?: Metrics;
  /** shared count of running generations (the router reads it to see the edge is saturated) */
  load?: LoadTracker;
  /** test affordance: wait this long before each generated token (a slow node) */
  tokenDelayMs?: number;
  /**
   * Awaited before each streamed token after the first, to let the host's I/O run. On Node the
   * response socket is corked until the next tick, and a stream pulled in one chain of promise
   * callbacks never reaches it: without a macrotask turn every SSE event of a fast engine goes
   * out in one burst at the end. The Node server passes setImmediate; workerd needs nothing.
   */
  yieldToIo?: () => Promise<void>;
  /** saved states of recent prompts, resumed by later prompts that extend them (default 64 MiB; null: off) */
  prefixCache?: PrefixCache | null;
  /**
   * Accept a session handed off by a router (body field kle_session: the versioned session
   * blob in base64, signed in kle_session_mac with one of `handoffKeys`; server/handoff-auth.ts).
   * Unsigned or badly signed blobs get 401. A signed one is used only if it is this model's and
   * its tokens are a prefix of the prompt; otherwise the prompt is prefilled as usual.
   */
  acceptHandoff?: boolean;
  /** the secrets hand-off blobs are signed with (the current and the previous); needed with acceptHandoff */
  handoffKeys?: readonly string[];
  /**
   * Continuous batching (default on): the decode steps of generations running at the same time
   * go through one engine forward per step (src/generate/batcher.ts); off, each steps alone.
   */
  batching?: boolean;
  /** prompt tokens prefilled at a time; running streams take their steps between chunks (default 1024) */
  prefillChunk?: number;
}

/** The limits of `given` over the defaults (undefined values keep the default). */
export function resolveLimits(given: Partial<Limits> | undefined): Limits {
  return { ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(given ?? {}).filter(([, v]) => v !== undefined)) };
}

/** What /metrics says of the sequences: running and waiting ones, the batches, state memory. */
function sequenceGauges(d: GenerationDeps): SequenceGauges {
  let waiting = d.prefilling, stateBytes = 0, lastBatch = 0, largestBatch = 0, steps = 0, tokensPerSecond = 0;
  for (const [s, model] of d.running) stateBytes += sessionStateBytes(model.config, s.kvLength, model.engine.kvFormat === 'bf16' ? 2 : 4);
  for (const b of d.batchers?.values() ?? []) {
    waiting += b.waiting;
    lastBatch = Math.max(lastBatch, b.stats.lastBatch);
    largestBatch = Math.max(largestBatch, b.stats.largestBatch);
    steps += b.stats.steps;
    tokensPerSecond += b.tokensPerSecond();
  }
  return { running: d.running.size, waiting, lastBatch, largestBatch, steps, tokensPerSecond, stateBytes };
}

export function createApp(opts: ServerOptions): Hono {
  if (opts.acceptHandoff && !opts.handoffKeys?.length) throw new Error('accepting session hand-offs needs the key they are signed with (handoffKeys; KLE_HANDOFF_KEYS for kimi-edge serve)');
  const limits = resolveLimits(opts.limits);
  const metrics = opts.metrics ?? new Metrics();
  let modelPromise: Promise<Model> | null = null;
  const load = opts.load ?? new LoadTracker();
  load.max = limits.maxConcurrent;
  const deps: GenerationDeps = {
    modelId: opts.modelId ?? 'kimi-linear',
    limits,
    metrics,
    load,
    cache: opts.prefixCache === undefined ? new PrefixCache() : opts.prefixCache,
    getModel: () => (modelPromise ??= typeof opts.model === 'function' ? opts.model() : Promise.resolve(opts.model)),
    handoffKeys: opts.acceptHandoff ? (opts.handoffKeys ?? []) : [],
    tokenDelayMs: opts.tokenDelayMs,
    yieldToIo: opts.yieldToIo,
    batchers: opts.batching === false ? null : new Map(),
    prefillChunk: opts.prefillChunk ?? 1024,
    running: new Map(),
    prefilling: 0,
  };
  if (!(Number.isInteger(deps.prefillChunk) && deps.prefillChunk > 0)) throw new RangeError(`prefillChunk must be a positive integer, got ${deps.prefillChunk}`);
  metrics.sequences = () => sequenceGauges(deps);
  const app = new Hono();
  app.use('*', async (c, next) => {
    const t0 = Date.now();
    await next();
    const route = c.req.routePath === '*' || !c.req.routePath ? 'other' : c.req.routePath;
    metrics.requests.inc({ route, status: String(c.res.status) });
    if (!c.res.headers.get('content-type')?.startsWith('text/event-stream')) metrics.duration.observe((Date.now() - t0) / 1e3, { route });
  });
  app.use('/v1/*', requireBearer(opts.apiKeys));
  app.use('/metrics', requireBearer(opts.apiKeys));
  app.route('/v1', openaiRoutes(deps));
  app.route('/', opsRoutes(deps));
  app.notFound((c) => errorResponse(404, `no route for ${c.req.method} ${new URL(c.req.url).pathname}`, 'not_found_error'));
  app.onError((e) => {
    if (e instanceof HTTPException) {
      // Hono's validator says so when the body is not JSON
      if (e.status === 400 && /JSON/.test(e.message)) return errorResponse(400, `request body is not valid JSON (${e.message})`, 'invalid_request_error', null, 'invalid_json');
      return e.getResponse();
    }
    return errorResponse(500, `internal error: ${e.message}`, 'server_error');
  });
  return app;
}
