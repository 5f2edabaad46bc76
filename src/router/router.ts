/**
 * The router: a Hono app in front of the local (edge) engine's app. Short jobs run at the edge;
 * jobs whose prompt + max_tokens exceed the edge budget, or that arrive while the edge is
 * saturated, go to a GPU node that can take them (OpenAI-compatible: our GPU node, vLLM,
 * SGLang). Streams pass through chunk by chunk; a node that fails before the first byte is
 * retried on another; one that fails mid-stream ends the stream with an error event.
 * Responses say where the job ran: x-kle-route (edge | gpu:<node>) and x-kle-route-reason.
 */
import { Hono, type Context } from 'hono';
import type { Model } from '../model/model.js';
import { errorResponse } from '../server/errors.js';
import type { LoadTracker } from '../server/generation.js';
import { limitBody, requireBearer } from '../server/middleware.js';
import { buildPromptAsync, endpointOf, maxPromptTokens, minPromptTokens, parseRequest, PREPARED, type PreparedRequest } from '../server/prompt.js';
import type { NodeConfig, RouterConfig } from './config.js';
import { NodePool, stallTolerantTimeout } from './pool.js';
import { edgeBound, sessionBytes, type RouteReason } from './policy.js';
import type { PrefixCache } from '../server/prefix-cache.js';
import { toBase64 } from '../util/base64.js';
import { signHandoff } from '../server/handoff-auth.js';

export interface RouterOptions {
  config: RouterConfig;
  /** the edge: its app, its model (for the tokenizer and the config) and its load */
  local: { app: Hono; model: () => Promise<Model>; load: LoadTracker; maxBodyBytes?: number; prefixCache?: PrefixCache | null; maxPromptTokens?: number };
  apiKeys?: readonly string[];
  fetchImpl?: typeof fetch;
  /** a pool to share (tests); otherwise one is made from config */
  pool?: NodePool;
}

const enc = new TextEncoder();

function withRoute(res: Response, route: string, reason: string): Response {
  const h = new Headers(res.headers);
  h.set('x-kle-route', route);
  h.set('x-kle-route-reason', reason);
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers: h });
}

export function createRouter(opts: RouterOptions): Hono & { pool: NodePool } {
  const cfg = opts.config;
  const fetchImpl = opts.fetchImpl ?? ((...a: Parameters<typeof fetch>) => fetch(...a));
  const pool = opts.pool ?? new NodePool(cfg, fetchImpl);
  const maxBody = opts.local.maxBodyBytes ?? 1 << 20;
  const counts = new Map<string, number>();
  const app = new Hono() as Hono & { pool: NodePool };
  app.pool = pool;

  app.use('*', requireBearer(opts.apiKeys, ['/health']));

  app.get('/health', async () => {
    void pool.checkHealth();
    const edge = await opts.local.app.fetch(new Request('http://edge/health'));
    return Response.json({ status: 'ok', edge: await edge.json(), nodes: pool.status(), edgeMaxTokens: cfg.edgeMaxTokens });
  });

  app.get('/metrics', async () => {
    const edge = await (await opts.local.app.fetch(new Request('http://edge/metrics'))).text();
    const lines = ['# HELP kle_routed_total Jobs by where they ran and why', '# TYPE kle_routed_total counter'];
    for (const [k, v] of counts) lines.push(`kle_routed_total{${k}} ${v}`);
    return new Response(`${edge}${lines.join('\n')}\n`, { headers: { 'content-type': 'text/plain; version=0.0.4' } });
  });

  app.post('/v1/chat/completions', limitBody(maxBody), (c) => route(c));
  app.post('/v1/completions', limitBody(maxBody), (c) => route(c));
  // everything else (models list, unknown routes) is the edge app's
  app.all('*', (c) => opts.local.app.fetch(c.req.raw));

  function count(route: string, reason: string) {
    const k = `route="${route}",reason="${reason}"`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }

  /** to the edge app; with `prepared`, the request it checked and the prompt it built go along */
  async function toEdge(c: Context, text: string, reason: RouteReason, prepared?: PreparedRequest): Promise<Response> {
    count('edge', reason);
    const h = new Headers(c.req.raw.headers);
    h.delete('authorization');
    const env = prepared ? { ...(c.env as object | undefined), [PREPARED]: prepared } : c.env;
    const res = await opts.local.app.fetch(new Request(c.req.url, { method: 'POST', headers: h, body: text, signal: c.req.raw.signal }), env);
    return withRoute(res, 'edge', reason);
  }

  async function route(c: Context): Promise<Response> {
    const text = await c.req.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      return toEdge(c, text, 'fits-edge'); // the edge app answers malformed requests
    }
    const parsed = parseRequest(endpointOf(c.req.path)!, json);
    if (!parsed.ok) return toEdge(c, text, 'fits-edge');
    // a client's own session state never goes on: hand-offs carry only states this router saved
    // nor do ids a client sent: the router sends its own count or none
    const { kle_session: _state, kle_session_mac: _mac, kle_prompt_ids: _ids, kle_tokenizer: _tok, ...body } = json as Record<string, unknown>;
    const model = await opts.local.model();
    // a prompt whose text alone is past what the edge and every node take is not tokenized
    // here (a megabyte would hold the event loop for seconds): the edge app refuses it as cheaply
    const widest = Math.max(cfg.edgeMaxTokens, ...cfg.nodes.map((n) => n.maxContext));
    const lower = model.tokenizer ? minPromptTokens(model.tokenizer, parsed.request) : 0;
    if (lower > widest) return toEdge(c, text, 'no-node-fits');
    const maxTokens = Number(body.max_completion_tokens ?? body.max_tokens ?? 256);
    const extra = Number.isFinite(maxTokens) ? maxTokens : 0;
    // a prompt whose text alone puts it past the edge budget goes to a node that can take its
    // upper bound (a token is at least one byte), without tokenizing: the node will; unless a
    // saved state might be handed off with it, whose lookup needs the ids
    const handoffPossible = cfg.nodes.some((n) => n.handoff) && (opts.local.prefixCache?.size ?? 0) > 0;
    // a job a bound may keep at the edge is counted first
    const boundPossible = edgeBound(cfg, body.kv_budget, lower + extra) > 0;
    if (model.tokenizer && lower + extra > cfg.edgeMaxTokens && !handoffPossible && !boundPossible) {
      let upper = Infinity;
      try {
        upper = maxPromptTokens(model.tokenizer, parsed.request) + extra;
      } catch {
        // the template refuses the messages: the path below says why
      }
      void pool.checkHealth();
      if (pool.canAnyTake(upper)) return forward(c, body, upper, 'exceeds-edge-budget', sessionBytes(model.config, upper), null);
    }
    let ids: number[] | null = null;
    try {
      ids = model.tokenizer ? await buildPromptAsync(model.tokenizer, parsed.request) : null;
    } catch {
      // the edge app says why the prompt cannot be built
    }
    if (ids === null) return toEdge(c, text, 'fits-edge');
    const prepared: PreparedRequest = { request: { ...parsed.request, body: { ...parsed.request.body, kle_session: undefined, kle_session_mac: undefined } } as PreparedRequest['request'], ids };
    const prompt = ids.length;
    const need = prompt + extra;
    void pool.checkHealth();
    const edgeOk = need <= cfg.edgeMaxTokens;
    // (the edge's own prompt limit still holds: it bounds the prefill, which a bound does not)
    const bound = edgeOk || prompt > (opts.local.maxPromptTokens ?? Infinity) ? 0 : edgeBound(cfg, body.kv_budget, need);
    if (bound && !opts.local.load.saturated) {
      // past the edge's budget, but its MLA caches bounded: decode costs what a short job's would
      const b = { ...(json as Record<string, unknown>), kv_budget: bound };
      const boundPrepared: PreparedRequest = { ...prepared, request: { ...prepared.request, body: { ...prepared.request.body, kv_budget: bound } } as PreparedRequest['request'] };
      const res = await toEdge(c, JSON.stringify(b), 'kv-budget-bounds-edge', boundPrepared);
      if (res.status !== 429 || !pool.canAnyTake(need)) return res;
      await res.body?.cancel();
      return forward(c, body, need, 'edge-saturated', sessionBytes(model.config, need), ids);
    }
    if (edgeOk && !opts.local.load.saturated) {
      const res = await toEdge(c, text, 'fits-edge', prepared);
      // the edge's own concurrency check is the authority: a job it turned away (before doing
      // any work) goes to a node instead
      if (res.status !== 429 || !pool.canAnyTake(need)) return res;
      await res.body?.cancel();
      return forward(c, body, need, 'edge-saturated', sessionBytes(model.config, need), ids);
    }
    if (!pool.canAnyTake(need)) {
      // no node could take it: run at the edge if the model's context allows, else say so
      const ctx = model.config.maxContext ?? Infinity;
      if (need <= ctx) return toEdge(c, text, edgeOk ? 'edge-saturated' : 'no-node-fits', prepared);
      return errorResponse(400, `prompt (${prompt}) + max_tokens (${maxTokens}) = ${need} tokens: more than the edge model's context (${ctx}) and every GPU node's`, 'invalid_request_error', 'max_tokens', 'context_length_exceeded');
    }
    const reason: RouteReason = edgeOk ? 'edge-saturated' : 'exceeds-edge-budget';
    return forward(c, body, need, reason, sessionBytes(model.config, need), ids);
  }

  /** `ids`: the prompt's tokens, when they were counted (null: routed by its text's bounds) */
  async function forward(c: Context, body: Record<string, unknown>, need: number, reason: RouteReason, stateBytes: number, ids: number[] | null): Promise<Response> {
    const tried = new Set<string>();
    const stream = body.stream === true;
    // the edge's saved state of this conversation's longest cached prefix, for hand-off
    const saved = ids ? (opts.local.prefixCache?.longestPrefix(ids) ?? null) : null;
    // the ids this router counted travel along with its tokenizer's fingerprint: a node with the
    // same tokenizer uses them instead of tokenizing the prompt again
    const tok = (await opts.local.model()).tokenizer;
    const counted = ids && tok ? { kle_prompt_ids: ids, kle_tokenizer: tok.fingerprint } : {};
    // encoded and signed only once a node that takes hand-offs is tried (it can be megabytes)
    let handoffBody: Promise<string> | null = null;
    const bodyFor = async (node: NodeConfig): Promise<string> => {
      if (node.handoff && saved && cfg.handoffKey) {
        const key = cfg.handoffKey;
        return (handoffBody ??= signHandoff(key, saved.blob as Uint8Array<ArrayBuffer>).then((mac) => JSON.stringify({ ...body, ...counted, kle_session: toBase64(saved.blob), kle_session_mac: mac })));
      }
      return JSON.stringify(node.model ? { ...body, model: node.model, ...counted } : { ...body, ...counted });
    };
    /** what the answer says about the state: moved with it, and reused by the node */
    const stateHeaders = (h: Headers, res: Response, node: NodeConfig) => {
      if (node.handoff && saved) h.set('x-kle-handoff-bytes', String(saved.blob.length));
      for (const k of ['x-kle-prefix-reused', 'x-kle-prefix-source', 'x-kle-prompt-ids']) if (res.headers.get(k)) h.set(k, res.headers.get(k)!);
    };
    let lastError = 'no node was available';
    for (let attempt = 0; attempt < Math.max(1, pool.size); attempt++) {
      const node = pool.choose(need, tried);
      if (!node) break;
      tried.add(node.name);
      pool.begin(node.name);
      const ctl = new AbortController();
      const onAbort = () => ctl.abort();
      c.req.raw.signal?.addEventListener('abort', onAbort);
      const timer = stallTolerantTimeout(() => ctl.abort(), cfg.firstByteTimeoutMs);
      let res: Response;
      try {
        res = await fetchImpl(`${node.url}${c.req.path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(node.token ? { authorization: `Bearer ${node.token}` } : {}) },
          body: await bodyFor(node),
          signal: ctl.signal,
        });
      } catch (e) {
        timer.clear();
        pool.end(node.name);
        if (c.req.raw.signal?.aborted) return errorResponse(499, 'client closed the request', 'invalid_request_error');
        lastError = `${node.name}: ${ctl.signal.aborted ? `no response within ${cfg.firstByteTimeoutMs} ms` : (e as Error).message}`;
        pool.failure(node.name, lastError);
        continue;
      }
      timer.clear();
      if (res.status === 429 || res.status >= 500) {
        await res.body?.cancel();
        pool.end(node.name);
        lastError = `${node.name}: HTTP ${res.status}`;
        if (res.status >= 500) pool.failure(node.name, lastError);
        continue;
      }
      pool.success(node.name);
      count(`gpu:${node.name}`, reason);
      const route = `gpu:${node.name}`;
      if (!res.ok || !stream || !res.body) {
        // whole answers are read here, so a node that dies mid-body is retried on another
        let buf: ArrayBuffer;
        try {
          buf = await res.arrayBuffer();
        } catch (e) {
          pool.end(node.name);
          lastError = `${node.name}: body failed (${(e as Error).message})`;
          pool.failure(node.name, lastError);
          continue;
        }
        pool.end(node.name);
        const h = new Headers({ 'content-type': res.headers.get('content-type') ?? 'application/json', 'x-kle-state-bytes': String(stateBytes) });
        stateHeaders(h, res, node);
        return withRoute(new Response(buf, { status: res.status, headers: h }), route, reason);
      }
      const out = withRoute(passThrough(res, node, ctl), route, reason);
      stateHeaders(out.headers, res, node);
      return out;
    }
    const retry = Math.ceil(cfg.breakerOpenMs / 1000);
    return errorResponse(503, `no GPU node can take this job of ${need} tokens now (${lastError})`, 'server_error', null, 'no_node_available', { 'retry-after': String(retry) });
  }

  /** Streams the node's SSE through unchanged; a break before [DONE] ends it with an error event. */
  function passThrough(res: Response, node: NodeConfig, ctl: AbortController): Response {
    const reader = res.body!.getReader();
    let tail = '';
    let ended = false;
    const end = () => {
      if (!ended) {
        ended = true;
        pool.end(node.name);
      }
    };
    const errorEvent = (msg: string) => enc.encode(`\n\ndata: ${JSON.stringify({ error: { message: msg, type: 'server_error', param: null, code: 'upstream_failed' } })}\n\n`);
    const dec = new TextDecoder();
    const body = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        try {
          const r = await reader.read();
          if (r.done) {
            end();
            if (!tail.includes('[DONE]')) {
              pool.failure(node.name, 'stream ended before [DONE]');
              ctrl.enqueue(errorEvent(`GPU node ${node.name} ended the stream before it was complete`));
            }
            ctrl.close();
            return;
          }
          tail = (tail + dec.decode(r.value, { stream: true })).slice(-64);
          ctrl.enqueue(r.value);
        } catch (e) {
          end();
          pool.failure(node.name, `stream broke: ${(e as Error).message}`);
          ctrl.enqueue(errorEvent(`GPU node ${node.name} failed mid-stream`));
          ctrl.close();
        }
      },
      cancel() {
        end();
        ctl.abort();
        void reader.cancel().catch(() => {});
      },
    });
    return new Response(body, { status: res.status, headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' } });
  }

  return app;
}
