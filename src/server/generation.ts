/**
 * One completion request, from its checked body and prompt tokens to the answer: the limits,
 * the session (resumed from a handed-off state or a cached prefix, then prefilled), and the
 * response, whole or as OpenAI's SSE chunks.
 */
import type { Context } from 'hono';
import type { GenerateOptions, Session as SessionType } from '../generate/session.js';
import { Session } from '../generate/session.js';
import type { Model } from '../model/model.js';
import { fromBase64 } from '../util/base64.js';
import { errorResponse } from './errors.js';
import { verifyHandoff } from './handoff-auth.js';
import type { Metrics } from './metrics.js';
import type { PrefixCache } from './prefix-cache.js';
import { promptParam, type OpenAIRequest } from './prompt.js';
import { kvBudgetOf, pinnableTokens, type KvBudget } from '../generate/kv-budget.js';
import { EngineError, type EngineModel } from '../engine/engine.js';
import { StepBatcher } from '../generate/batcher.js';
import { sessionStateBytes } from '../engine/layer-kinds.js';

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
  /** the MLA cache bound of a request that gives no kv_budget (0: none) */
  defaultKvBudget: number;
  /** largest kv_budget a request may ask for */
  maxKvBudget: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxPromptTokens: 8192, maxTokens: 2048, defaultMaxTokens: 256, maxBodyBytes: 1 << 20, maxConcurrent: 8,
  defaultKvBudget: 0, maxKvBudget: 1 << 20,
};

/** The MLA cache bound a request runs with (null: none): its kv_budget, else the server's default. */
export function kvBudgetFor(d: GenerationDeps, r: OpenAIRequest, model: Model | null): KvBudget | null {
  const b = r.body.kv_budget ?? (d.limits.defaultKvBudget || null);
  if (b === null) return null;
  const policy = r.body.kv_policy ?? undefined;
  // before the model is known, a learned policy is taken on trust: checked once it is
  const head = model ? model.config.kvImportanceHead : policy === 'learned';
  return kvBudgetOf({ kvBudget: b, keepPrompt: r.body.kv_keep_prompt ?? false, policy }, head);
}

/** Generations running in an app, and its limit. */
export class LoadTracker {
  active = 0;
  max = DEFAULT_LIMITS.maxConcurrent;
  get saturated(): boolean {
    return this.active >= this.max;
  }
}

/** What the completion routes share: the app's settings and state. */
export interface GenerationDeps {
  readonly modelId: string;
  readonly limits: Limits;
  readonly metrics: Metrics;
  readonly load: LoadTracker;
  readonly cache: PrefixCache | null;
  readonly getModel: () => Promise<Model>;
  /** secrets a handed-off state must be signed with; none: hand-offs are not taken */
  readonly handoffKeys: readonly string[];
  readonly tokenDelayMs?: number;
  readonly yieldToIo?: () => Promise<void>;
  /** the decode steps of concurrent generations batched per model (null: each steps alone) */
  readonly batchers: Map<EngineModel, StepBatcher> | null;
  /** prompt tokens prefilled between two turns of the event loop (other streams decode between) */
  readonly prefillChunk: number;
  /** the sessions generating now, with the model each belongs to (for /metrics) */
  readonly running: Map<SessionType, Model>;
  /** requests whose prompts are being prefilled */
  prefilling: number;
}

/** The batcher of a model's decode steps, made on first use. */
export function batcherFor(d: GenerationDeps, model: Model): StepBatcher | undefined {
  if (!d.batchers) return undefined;
  let b = d.batchers.get(model.engine);
  if (!b) d.batchers.set(model.engine, (b = new StepBatcher(model.engine)));
  return b;
}

/** a turn of the event loop, whatever the host */
const pause = (d: GenerationDeps) => (d.yieldToIo ? d.yieldToIo() : new Promise<void>((r) => setTimeout(r, 0)));

const enc = new TextEncoder();

/** An answer the request gets before any work: a limit it breaks, or null when it may run. */
export function refusal(d: GenerationDeps, r: OpenAIRequest, promptTokens: number | null, model: Model | null): Response | null {
  const req = r.body;
  if (req.model !== d.modelId) return errorResponse(404, `model '${req.model}' does not exist here (this server serves '${d.modelId}')`, 'invalid_request_error', 'model', 'model_not_found');
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? d.limits.defaultMaxTokens;
  if (maxTokens > d.limits.maxTokens) return errorResponse(400, `max_tokens ${maxTokens} exceeds this server's limit of ${d.limits.maxTokens}`, 'invalid_request_error', 'max_tokens', 'max_tokens_exceeded');
  if (req.kv_budget != null && req.kv_budget > d.limits.maxKvBudget) return errorResponse(400, `kv_budget ${req.kv_budget} exceeds this server's limit of ${d.limits.maxKvBudget}`, 'invalid_request_error', 'kv_budget', 'invalid_value');
  let kv: KvBudget | null;
  try {
    kv = kvBudgetFor(d, r, model);
  } catch (e) {
    return errorResponse(400, `kv_policy: ${(e as Error).message}`, 'invalid_request_error', 'kv_policy', 'invalid_value');
  }
  for (const field of ['kv_keep_prompt', 'kv_policy'] as const)
    if (req[field] != null && !kv) return errorResponse(400, `${field} needs a kv_budget (this server has no default one)`, 'invalid_request_error', field, 'invalid_value');
  if (promptTokens === null || !model) return null;
  const V = model.config.vocabSize;
  const badBias = Object.keys(req.logit_bias ?? {}).find((k) => Number(k) >= V);
  if (badBias !== undefined) return errorResponse(400, `logit_bias: token ${badBias} is outside the vocabulary (0..${V - 1})`, 'invalid_request_error', 'logit_bias', 'invalid_value');
  const ctx = model.config.maxContext ?? Infinity;
  const promptLimit = Math.min(d.limits.maxPromptTokens, ctx);
  if (promptTokens > promptLimit) return errorResponse(400, `the prompt has ${promptTokens} tokens; this server takes at most ${promptLimit}`, 'invalid_request_error', promptParam(r), 'context_length_exceeded');
  if (promptTokens + maxTokens > ctx) return errorResponse(400, `prompt (${promptTokens}) + max_tokens (${maxTokens}) exceeds the model's context of ${ctx}`, 'invalid_request_error', 'max_tokens', 'context_length_exceeded');
  if (kv?.keepPrompt && promptTokens > pinnableTokens(kv)) return errorResponse(400, `kv_keep_prompt: the prompt's ${promptTokens} tokens do not fit kv_budget ${kv.kvBudget} less its ${kv.sink} sink and ${kv.window} recent tokens (${pinnableTokens(kv)})`, 'invalid_request_error', 'kv_budget', 'invalid_value');
  if (d.load.active >= d.limits.maxConcurrent) return errorResponse(429, `${d.load.active} generations are running, the limit is ${d.limits.maxConcurrent}: retry shortly`, 'rate_limit_error', null, 'concurrency_limit', { 'retry-after': '1' });
  return deviceRefusal(d, model, kv ? Math.min(promptTokens + maxTokens, kv.kvBudget + SESSION_BATCH) : promptTokens + maxTokens);
}

/** rows a bounded cache holds at most beyond its budget: one forward batch (the GPU's) */
const SESSION_BATCH = 512;
/** device memory a session's activations and the driver take beside its state */
const SESSION_OVERHEAD = 2 ** 30;

/**
 * A GPU's memory bounds its sessions: a request whose session (its state at the context it may
 * reach, caches reserved in powers of two, and activations) does not fit the free memory waits
 * for running ones (503, Retry-After), or is refused for good when nothing runs (400); never a
 * device out-of-memory failure halfway. Backends on the host's memory are not checked here.
 */
function deviceRefusal(d: GenerationDeps, model: Model, tokens: number): Response | null {
  const free = model.engine.deviceFree();
  if (free === null) return null;
  const need = sessionStateBytes(model.config, 2 ** Math.ceil(Math.log2(Math.max(tokens, 64))), model.engine.kvFormat === 'bf16' ? 2 : 4) + SESSION_OVERHEAD;
  if (need <= free) return null;
  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  const what = `this request's session (${tokens} tokens of context) needs ${gib(need)} GiB of device memory; ${gib(free)} GiB are free`;
  if (d.load.active === 0) return errorResponse(400, `${what} with nothing else running: shorten the prompt or max_tokens, or set a kv_budget`, 'invalid_request_error', 'max_tokens', 'context_length_exceeded');
  return errorResponse(503, `${what} while ${d.load.active} generation${d.load.active > 1 ? 's' : ''} run: retry when they finish`, 'server_error', null, 'insufficient_device_memory', { 'retry-after': '5' });
}

/**
 * The handed-off state a request carries, once its signature is checked: null when it carries
 * none or this server takes no hand-offs, a 401/400 answer when it is unsigned, badly signed or
 * not base64.
 */
export async function handoffOf(d: GenerationDeps, r: OpenAIRequest): Promise<Uint8Array<ArrayBuffer> | null | Response> {
  const { kle_session: blob64, kle_session_mac: mac } = r.body;
  if (!d.handoffKeys.length || blob64 === undefined) return null;
  if (mac === undefined) return errorResponse(401, 'kle_session is not signed: session hand-offs are taken from a router that holds a hand-off key', 'invalid_request_error', 'kle_session_mac', 'unsigned_handoff');
  let blob: Uint8Array<ArrayBuffer>;
  try {
    blob = fromBase64(blob64);
  } catch {
    return errorResponse(400, 'kle_session is not base64', 'invalid_request_error', 'kle_session', 'invalid_value');
  }
  if (!(await verifyHandoff(d.handoffKeys, blob, mac))) return errorResponse(401, 'kle_session_mac is not the signature of kle_session under this node\'s hand-off keys', 'invalid_request_error', 'kle_session_mac', 'bad_handoff_signature');
  return blob;
}

/** true when a restored session runs under the bound a request asks for (none with none) */
function sameBound(s: SessionType, kv: KvBudget | null): boolean {
  const b = s.kvBudget;
  if (!b || !kv) return !b && !kv;
  return b.kvBudget === kv.kvBudget && b.sink === kv.sink && b.window === kv.window && Math.fround(b.decay) === Math.fround(kv.decay) && b.policy === kv.policy;
}

/**
 * A session whose state holds the prompt: resumed from a handed-off state or a cached prefix where
 * one fits, the rest prefilled. A bounded session (kv) resumes only a hand-off made under the same
 * bound, and skips the prefix cache, whose states are of unbounded sessions.
 */
async function openSession(d: GenerationDeps, model: Model, handoff: Uint8Array | null, prompt: number[], kv: KvBudget | null): Promise<{ session: SessionType; reused: number; source: string }> {
  const prefilled = (session: SessionType, reused: number, source: string) => prefill(d, session, prompt, reused, source);
  if (handoff) {
    let s: SessionType | null = null;
    try {
      s = Session.restore(model, handoff);
    } catch {
      // another model's state, or a damaged one: prefill from scratch
    }
    if (s && s.length <= prompt.length && s.tokens.every((t, i) => t === prompt[i]) && sameBound(s, kv) && !kv?.keepPrompt) return prefilled(s, s.length, 'handoff');
    s?.free();
  }
  if (kv) return prefilled(model.createSession({ kvBudget: kv }), 0, 'none');
  const hit = d.cache?.longestPrefix(prompt);
  if (hit) {
    let s: SessionType | null = null;
    try {
      s = Session.restore(model, hit.blob);
    } catch {
      // fall through to a fresh session
    }
    if (s) return prefilled(s, hit.tokens, 'cache');
  }
  return prefilled(model.createSession(), 0, 'none');
}

/** the prompt's remaining tokens, in chunks between which the running streams decode */
async function prefill(d: GenerationDeps, session: SessionType, prompt: number[], reused: number, source: string): Promise<{ session: SessionType; reused: number; source: string }> {
  try {
    if (reused < prompt.length) await session.prefillChunked(prompt.slice(reused), d.prefillChunk, () => pause(d));
  } catch (e) {
    session.free();
    throw e;
  }
  return { session, reused, source };
}

/** Runs a checked request whose prompt is `prompt` (refusal() said yes) and answers it. */
export async function generate(c: Context, d: GenerationDeps, model: Model, r: OpenAIRequest, prompt: number[], handoff: Uint8Array | null, t0: number): Promise<Response> {
  const req = r.body;
  const kind = r.kind;
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? d.limits.defaultMaxTokens;
  const ac = new AbortController();
  const gen: GenerateOptions = {
    maxTokens,
    temperature: req.temperature ?? 1,
    topP: req.top_p ?? undefined,
    topK: req.top_k ?? undefined,
    repetitionPenalty: req.repetition_penalty ?? undefined,
    minP: req.min_p ?? undefined,
    frequencyPenalty: req.frequency_penalty ?? undefined,
    presencePenalty: req.presence_penalty ?? undefined,
    logitBias: req.logit_bias ? Object.fromEntries(Object.entries(req.logit_bias).map(([k, v]) => [Number(k), v])) : undefined,
    seed: req.seed ?? undefined,
    stop: req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop,
    signal: ac.signal,
  };
  const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${crypto.randomUUID().replace(/-/g, '')}`;
  const created = Math.floor(Date.now() / 1000);
  const { load, metrics, modelId } = d;
  load.active++;
  metrics.activeSessions = load.active;
  let opened: Awaited<ReturnType<typeof openSession>>;
  const kv = kvBudgetFor(d, r, model);
  d.prefilling++;
  try {
    opened = await openSession(d, model, handoff, prompt, kv);
  } catch (e) {
    load.active--;
    metrics.activeSessions = load.active;
    // memory ran out after all (another process took the GPU's, say): a retry may find it
    if (e instanceof EngineError && e.code === -2) return errorResponse(503, `prefill ran out of memory: ${e.message}`, 'server_error', null, 'insufficient_device_memory', { 'retry-after': '5' });
    return errorResponse(500, `prefill failed: ${(e as Error).message}`, 'server_error');
  } finally {
    d.prefilling--;
  }
  const { session } = opened;
  d.running.set(session, model);
  gen.batcher = batcherFor(d, model);
  if (!kv) d.cache?.put(prompt, session.save());
  const resumeHeaders: Record<string, string> = { 'x-kle-prefix-reused': String(opened.reused), 'x-kle-prefix-source': opened.source, ...(kv ? { 'x-kle-kv-budget': String(kv.kvBudget) } : {}) };
  let tFirst = 0;
  let finished = false;
  // runs once: from the end of generation, or from a client disconnect (in workerd a
  // cancelled request's pending timers may never fire, so the cancel itself must clean up)
  const finish = (completion: number) => {
    if (finished) return;
    finished = true;
    d.running.delete(session);
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
  const reason = (fr: string) => (fr === 'length' ? 'length' : 'stop');
  const tokenDelay = () => (d.tokenDelayMs ? new Promise((res) => setTimeout(res, d.tokenDelayMs)) : null);

  if (!req.stream) {
    // a client that disconnects stops the generation (its answer could not be delivered)
    c.req.raw.signal?.addEventListener('abort', () => ac.abort());
    let text = '', completion = 0, fr = 'stop';
    try {
      for await (const ev of session.generate([], gen)) {
        await tokenDelay();
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
  // Pull-based, not pushed from a loop: one token per pull, so the consumer drives generation.
  // workerd needs this: a client that stops reading stops the work, and a cancelled request
  // (whose pending timers workerd may never run again) leaves nothing behind, as cancel()
  // frees the session.
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
            await tokenDelay();
            if (d.yieldToIo && completion > 0) await d.yieldToIo();
            const next = await events.next();
            if (next.done || ac.signal.aborted) {
              closed = true;
              finish(completion);
              if (!ac.signal.aborted) ctrl.close();
              return;
            }
            const ev = next.value;
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
          // (a stream the client left has no one to tell)
          const gone = closed;
          closed = true;
          finish(completion);
          if (gone) return;
          ctrl.enqueue(enc.encode(`data: ${JSON.stringify({ error: { message: (e as Error).message, type: 'server_error', param: null, code: null } })}\n\n`));
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
  // no Connection header of our own: a client that sent Connection: close gets its socket closed
  return new Response(stream, { headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...resumeHeaders } });
}
