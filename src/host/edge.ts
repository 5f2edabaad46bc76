/**
 * The edge, assembled once for every host: the OpenAI app on the local engine and, when a router
 * config is given, the router in front of it (it then owns auth, keeps short jobs here and
 * forwards long ones to GPU nodes). The Worker (worker/index.ts) and Node (host/node.ts) both
 * build their server here.
 */
import type { Hono } from 'hono';
import type { Model } from '../model/model.js';
import type { RouterConfig } from '../router/config.js';
import type { NodePool } from '../router/pool.js';
import { createRouter } from '../router/router.js';
import { createApp, resolveLimits, type ServerOptions } from '../server/app.js';
import { LoadTracker } from '../server/generation.js';
import { PrefixCache } from '../server/prefix-cache.js';

export interface EdgeOptions extends ServerOptions {
  /** the router in front (GPU nodes, edge budget); without it every job runs here */
  router?: RouterConfig | null;
}

export interface Edge {
  readonly app: Hono;
  /** the router's GPU nodes (null without a router): their health checks are the host's to schedule */
  readonly pool: NodePool | null;
}

export function createEdge(o: EdgeOptions): Edge {
  let model: Promise<Model> | null = null;
  const getModel = () => (model ??= typeof o.model === 'function' ? o.model() : Promise.resolve(o.model));
  const load = o.load ?? new LoadTracker();
  const prefixCache = o.prefixCache === undefined ? new PrefixCache() : o.prefixCache;
  const app = createApp({ ...o, model: getModel, load, prefixCache, apiKeys: o.router ? [] : o.apiKeys });
  if (!o.router) return { app, pool: null };
  const { maxBodyBytes, maxPromptTokens } = resolveLimits(o.limits);
  const router = createRouter({ config: o.router, local: { app, model: getModel, load, prefixCache, maxBodyBytes, maxPromptTokens }, apiKeys: o.apiKeys });
  return { app: router, pool: router.pool };
}
