/**
 * The Hono app: an OpenAI-compatible API over one model. The same app runs in a Cloudflare
 * Worker (worker/index.ts), on Node (src/server/node.ts), Bun and Deno.
 *
 * @example
 * const app = createApp({ model, modelId: 'kimi-linear', apiKeys: ['secret'] });
 * export default app; // a Worker, or: serve({ fetch: app.fetch, port: 8787 }) on Node
 */
import { Hono, type Context } from 'hono';
import type { Model } from '../model/model.js';
import type { GenerateOptions } from '../generate/session.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { bearerAuth } from './auth.js';
import { errorResponse } from './errors.js';
import { Metrics } from './metrics.js';
import { PrefixCache } from './prefix-cache.js';
import { Session } from '../generate/session.js';
import { fromBase64 } from '../util/base64.js';
import { chatRequest, completionRequest, describeIssue, type ChatRequest, type CompletionRequest } from './schema.js';

export interface Limits {
  /** prompt tokens one request may send */
  maxPromptTokens: number;
  /** largest max_tokens accepted */
  maxTokens: number;
  /** max_tokens when a request gives none */
  defaultMaxTokens: number;
  /** request body bytes */
  maxBodyBytes: number;
  /** generations running at once (more get 429) */
  maxConcurrent: number;
}

export const DEFAULT_LIMITS: Limits = { maxPromptTokens: 8192, maxTokens: 2048, defaultMaxTokens: 256, maxBodyBytes: 1 << 20, maxConcurrent: 8 };

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
   * blob in base64). It is used only if it is this model's and its tokens are a prefix of the
   * prompt; otherwise the prompt is prefilled as usual.
   */
  acceptHandoff?: boolean;
}

/** Generations running in an app, and its limit. */
export class LoadTracker {
  active = 0;
  max = DEFAULT_LIMITS.maxConcurrent;
  get saturated(): boolean {
    return this.active >= this.max;
  }
}

const enc = new TextEncoder();

export function createApp(opts: ServerOptions): Hono {
  const limits: Limits = { ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(opts.limits ?? {}).filter(([, v]) => v !== undefined)) };
  const metrics = opts.metrics ?? new Metrics();
  const modelId = opts.modelId ?? 'kimi-linear';
  let modelPromise: Promise<Model> | null = null;
  const getModel = () => (modelPromise ??= typeof opts.model === 'function' ? opts.model() : Promise.resolve(opts.model));
  const load = opts.load ?? new LoadTracker();
  const cache = opts.prefixCache === undefined ? new PrefixCache() : opts.prefixCache;
  load.max = limits.maxConcurrent;
  const app = new Hono();

  app.use('*', async (c, next) => {
    const t0 = Date.now();
    await next();
    const route = c.req.routePath === '*' || !c.req.routePath ? 'other' : c.req.routePath;
    metrics.requests.inc({ route, status: String(c.res.status) });
    if (!c.res.headers.get('content-type')?.startsWith('text/event-stream')) metrics.duration.observe((Date.now() - t0) / 1e3, { route });
  });

  app.use('/v1/*', bearerAuth(opts.apiKeys));
  app.use('/metrics', bearerAuth(opts.apiKeys));

  app.get('/health', async (c) => {
    const m = await getModel();
    const mem = (m.backend as { memory?: WebAssembly.Memory }).memory;
    return c.json({ status: 'ok', model: modelId, backend: m.backend.name, layers: m.config.numLayers, activeSessions: load.active, maxConcurrent: limits.maxConcurrent, engineMemoryBytes: mem ? mem.buffer.byteLength : null });
  });

  app.get('/metrics', () => new Response(metrics.render(), { headers: { 'content-type': 'text/plain; version=0.0.4' } }));

  app.get('/v1/models', (c) => c.json({ object: 'list', data: [{ id: modelId, object: 'model', created: 0, owned_by: 'kimi-linear-edge' }] }));

  app.post('/v1/chat/completions', (c) => handle(c, 'chat'));
  app.post('/v1/completions', (c) => handle(c, 'completion'));

  app.notFound((c) => errorResponse(404, `no route for ${c.req.method} ${new URL(c.req.url).pathname}`, 'not_found_error'));
  app.onError((e) => errorResponse(500, `internal error: ${e.message}`, 'server_error'));

  async function readBody(c: Context): Promise<unknown | Response> {
    const len = Number(c.req.header('content-length') ?? NaN);
    if (len > limits.maxBodyBytes) return errorResponse(413, `request body of ${len} bytes exceeds the limit of ${limits.maxBodyBytes}`, 'invalid_request_error', null, 'body_too_large');
    const buf = await c.req.arrayBuffer();
    if (buf.byteLength > limits.maxBodyBytes) return errorResponse(413, `request body exceeds the limit of ${limits.maxBodyBytes} bytes`, 'invalid_request_error', null, 'body_too_large');
    try {
      return JSON.parse(new TextDecoder().decode(buf)) as unknown;
    } catch (e) {
      return errorResponse(400, `request body is not valid JSON (${(e as Error).message})`, 'invalid_request_error', null, 'invalid_json');
    }
  }

  async function handle(c: Context, kind: 'chat' | 'completion'): Promise<Response> {
    const t0 = Date.now();
    const body = await readBody(c);
    if (body instanceof Response) return body;
    const parsed = (kind === 'chat' ? chatRequest : completionRequest).safeParse(body);
    if (!parsed.success) {
      const { message, param } = describeIssue(parsed.error);
      return errorResponse(400, message, 'invalid_request_error', param, 'invalid_value');
    }
    const req = parsed.data as ChatRequest | CompletionRequest;
    if (req.model !== modelId) return errorResponse(404, `model '${req.model}' does not exist here (this server serves '${modelId}')`, 'invalid_request_error', 'model', 'model_not_found');
    const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? limits.defaultMaxTokens;
    if (maxTokens > limits.maxTokens) return errorResponse(400, `max_tokens ${maxTokens} exceeds this server's limit of ${limits.maxTokens}`, 'invalid_request_error', 'max_tokens', 'max_tokens_exceeded');
    const model = await getModel();
    const tok = model.tokenizer;
    if (!tok) return errorResponse(500, 'the model has no tokenizer', 'server_error');
    let prompt: number[];
    try {
      if (kind === 'chat') {
        const messages: ChatMessage[] = (req as ChatRequest).messages.map((m) => ({
          role: m.role === 'developer' ? 'system' : m.role,
          content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
        }));
        prompt = tok.encode(tok.applyChatTemplate(messages));
      } else {
        const p = (req as CompletionRequest).prompt;
        prompt = tok.encode(typeof p === 'string' ? p : p[0]!);
      }
    } catch (e) {
      return errorResponse(400, `cannot build the prompt: ${(e as Error).message}`, 'invalid_request_error', kind === 'chat' ? 'messages' : 'prompt');
    }
    const ctx = model.config.maxContext ?? Infinity;
    const promptLimit = Math.min(limits.maxPromptTokens, ctx);
    if (prompt.length > promptLimit) return errorResponse(400, `the prompt has ${prompt.length} tokens; this server takes at most ${promptLimit}`, 'invalid_request_error', kind === 'chat' ? 'messages' : 'prompt', 'context_length_exceeded');
    if (prompt.length + maxTokens > ctx) return errorResponse(400, `prompt (${prompt.length}) + max_tokens (${maxTokens}) exceeds the model's context of ${ctx}`, 'invalid_request_error', 'max_tokens', 'context_length_exceeded');
    if (load.active >= limits.maxConcurrent) return errorResponse(429, `${load.active} generations are running, the limit is ${limits.maxConcurrent}: retry shortly`, 'rate_limit_error', null, 'concurrency_limit', { 'retry-after': '1' });

    const stopList = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
    const ac = new AbortController();
    const gen: GenerateOptions = {
      maxTokens,
      temperature: req.temperature ?? 1,
      topP: req.top_p ?? undefined,
      topK: req.top_k ?? undefined,
      repetitionPenalty: req.repetition_penalty ?? undefined,
      seed: req.seed ?? undefined,
      stop: stopList,
      signal: ac.signal,
    };
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${crypto.randomUUID().replace(/-/g, '')}`;
    const created = Math.floor(Date.now() / 1000);
    load.active++;
    metrics.activeSessions = load.active;
    // resume from a handed-off state or a cached prefix: only the rest of the prompt is prefilled
    let session: Session | null = null;
    let reused = 0, reusedFrom = 'none';
    const handoff = (body as { kle_session?: unknown }).kle_session;
    if (opts.acceptHandoff && typeof handoff === 'string') {
      try {
        const s = Session.restore(model, fromBase64(handoff));
        if (s.length <= prompt.length && s.tokens.every((t, i) => t === prompt[i])) [session, reused, reusedFrom] = [s, s.length, 'handoff'];
        else s.free();
      } catch {
        // another model's state, or a damaged one: prefill from scratch
      }
    }
    if (!session && cache) {
      const hit = cache.longestPrefix(prompt);
      if (hit) {
        try {
          session = Session.restore(model, hit.blob);
          [reused, reusedFrom] = [hit.tokens, 'cache'];
        } catch {
          session = null;
        }
      }
    }
    session ??= model.createSession();
    try {
      if (reused < prompt.length) session.prefill(prompt.slice(reused));
    } catch (e) {
      session.free();
      load.active--;
      metrics.activeSessions = load.active;
      return errorResponse(500, `prefill failed: ${(e as Error).message}`, 'server_error');
    }
    cache?.put(prompt, session.save());
    const resumeHeaders = { 'x-kle-prefix-reused': String(reused), 'x-kle-prefix-source': reusedFrom };
    let tFirst = 0;
    let finished = false;
    // runs once: from the end of generation, or from a client disconnect (in workerd a
    // cancelled request's pending timers may never fire, so the cancel itself must clean up)
    const finish = (completion: number) => {
      if (finished) return;
      finished = true;
      session.free();
      load.active--;
      metrics.activeSessions = load.active;
      metrics.tokens.inc({ kind: 'prompt' }, prompt.length);
      metrics.tokens.inc({ kind: 'completion' }, completion);
      if (tFirst) {
        metrics.ttft.observe((tFirst - t0) / 1e3);
        if (completion > 1) metrics.tpot.observe((Date.now() - tFirst) / 1e3 / (completion - 1));
      }
      if (req.stream) metrics.duration.observe((Date.now() - t0) / 1e3, { route: c.req.routePath });
    };
    const usage = (completion: number) => ({ prompt_tokens: prompt.length, completion_tokens: completion, total_tokens: prompt.length + completion });
    const reason = (r: string) => (r === 'length' ? 'length' : 'stop');

    if (!req.stream) {
      // a client that disconnects stops the generation (its answer could not be delivered)
      c.req.raw.signal?.addEventListener('abort', () => ac.abort());
      let text = '', completion = 0, fr = 'stop';
      try {
        for await (const ev of session.generate([], gen)) {
          if (opts.tokenDelayMs) await new Promise((r) => setTimeout(r, opts.tokenDelayMs));
          if (ev.type === 'token') {
            tFirst ||= Date.now();
            text += ev.text;
          } else {
            completion = ev.completionTokens;
            fr = reason(ev.finishReason);
          }
        }
      } finally {
        finish(completion);
      }
      const choice = kind === 'chat' ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: fr } : { index: 0, text, logprobs: null, finish_reason: fr };
      return c.json({ id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created, model: modelId, choices: [choice], usage: usage(completion) }, 200, resumeHeaders);
    }

    const includeUsage = req.stream_options?.include_usage === true;
    const object = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const chunk = (choice: object, extra: object = {}) => `data: ${JSON.stringify({ id, object, created, model: modelId, choices: [choice], ...extra })}\n\n`;
    const delta = (text: string, fr: string | null) => (kind === 'chat' ? { index: 0, delta: text ? { content: text } : {}, logprobs: null, finish_reason: fr } : { index: 0, text, logprobs: null, finish_reason: fr });
    let completion = 0;
    let closed = false;
    // a client that disconnects aborts the request's signal (Node; workerd with the
    // enable_request_signal flag): stop and free the session even if the stream is never
    // cancelled or pulled again
    c.req.raw.signal?.addEventListener('abort', () => {
      closed = true;
      ac.abort();
      finish(completion);
    });
    // Pull-based: one token per pull, so the consumer drives generation. A client that stops
    // reading stops it, and a cancelled request (which in workerd may never run its pending
    // timers again) leaves nothing behind: cancel() frees the session.
    const events = session.generate([], { ...gen, yieldBetweenTokens: false });
    const stream = new ReadableStream<Uint8Array>(
      {
        start(ctrl) {
          if (kind === 'chat') ctrl.enqueue(enc.encode(chunk({ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null })));
        },
        async pull(ctrl) {
          if (closed) return;
          try {
            for (;;) {
              if (opts.tokenDelayMs) await new Promise((r) => setTimeout(r, opts.tokenDelayMs));
              if (opts.yieldToIo && completion > 0) await opts.yieldToIo();
              const r = await events.next();
              if (r.done || ac.signal.aborted) {
                closed = true;
                finish(completion);
                if (!ac.signal.aborted) ctrl.close();
                return;
              }
              const ev = r.value;
              if (ev.type === 'token') {
                tFirst ||= Date.now();
                if (ev.token >= 0) completion++;
                if (ev.text) {
                  ctrl.enqueue(enc.encode(chunk(delta(ev.text, null))));
                  return;
                }
                continue;
              }
              completion = ev.completionTokens;
              let tail = chunk(delta('', reason(ev.finishReason)));
              if (includeUsage) tail += `data: ${JSON.stringify({ id, object, created, model: modelId, choices: [], usage: usage(completion) })}\n\n`;
              ctrl.enqueue(enc.encode(tail + 'data: [DONE]\n\n'));
            }
          } catch (e) {
            // a failure after the headers went out: say so in the stream, never end it silently
            closed = true;
            ctrl.enqueue(enc.encode(`data: ${JSON.stringify({ error: { message: (e as Error).message, type: 'server_error', param: null, code: null } })}\n\n`));
            finish(completion);
            ctrl.close();
          }
        },
        cancel() {
          closed = true;
          ac.abort();
          finish(completion);
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(stream, { headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', ...resumeHeaders } });
  }

  return app;
}
