/**
 * Session: one conversation with a model. Prefill runs the chunked KDA kernels, decode the step
 * kernel; generate() streams tokens and text as an async iterator.
 */
import { yieldToEventLoop } from '../util/yield.js';
import { partsTotal, type EngineSession } from '../engine/engine.js';
import { StreamDecoder, type ChatMessage, type Tokenizer } from '../tokenizer/tokenizer.js';
import { kvBudgetOf, pinnableTokens, type KvBudget, type KvBudgetOptions } from './kv-budget.js';
import { Sampler, validateSampling, type SamplingOptions } from './sampler.js';
import type { StepBatcher } from './batcher.js';

/** What a session needs of its model (Model, src/model/model.ts, is one). */
export interface SessionHost {
  readonly tokenizer: Tokenizer | null;
  /** token ids that end generation */
  readonly eosTokenIds: readonly number[];
  createSession(opts?: SessionOptions): Session;
}

/** How a new session is set up. */
export interface SessionOptions {
  /** bound the MLA caches (docs/kv-budget.md): a number of tokens, or the full settings */
  kvBudget?: number | KvBudgetOptions;
}

export interface GenerateOptions extends SamplingOptions {
  /**
   * bound the MLA caches from this call on (a session without one gets it; one with another
   * budget must hold no more rows than the new one)
   */
  kvBudget?: number | KvBudgetOptions;
  /** most tokens to generate (default 256) */
  maxTokens?: number;
  /** strings that end generation; they are not part of the text returned */
  stop?: readonly string[];
  /** aborting ends generation after the current token (finishReason 'abort') */
  signal?: AbortSignal;
  /**
   * Decode steps go through this batcher, which runs them with the steps of other generations
   * of the same model in one forward (continuous batching; ./batcher.ts).
   */
  batcher?: StepBatcher;
  /**
   * Return to the event loop between tokens (default true) so timers, I/O and aborts run. A
   * consumer that already yields per token (a pull-based stream) turns it off.
   */
  yieldBetweenTokens?: boolean;
}

export type FinishReason = 'stop' | 'length' | 'abort';

export type GenerateEvent =
  | { readonly type: 'token'; readonly token: number; readonly text: string }
  | { readonly type: 'done'; readonly finishReason: FinishReason; readonly promptTokens: number; readonly completionTokens: number; readonly text: string };

const BLOB_MAGIC = 0x5745_4c4b; // "KLEW" little-endian: the session wrapper around the engine blob
const BLOB_VERSION = 1;

/** Tokens of history a session blob says it holds (its magic and version checked). */
function historyLength(blob: Uint8Array): number {
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  if (blob.length < 12 || dv.getUint32(0, true) !== BLOB_MAGIC) throw new Error('not a kimi-linear-edge session blob');
  if (dv.getUint32(4, true) !== BLOB_VERSION) throw new Error(`session blob version ${dv.getUint32(4, true)} is not ${BLOB_VERSION}`);
  return dv.getUint32(8, true);
}

/** lets timers, I/O and abort signals run between tokens (setImmediate where there is one) */

export class Session {
  /** every token this session has seen, for the repetition penalty and for save() */
  private history: number[] = [];
  /** prompt tokens pinned by keepPrompt so far */
  private pinned = 0;

  /** the MLA cache bound this session applies (null: none) */
  private budget: KvBudget | null = null;

  /** @internal use model.createSession() or Session.restore() */
  constructor(
    readonly model: SessionHost,
    private readonly engine: EngineSession,
    opts: SessionOptions = {},
  ) {
    if (opts.kvBudget !== undefined) this.setKvBudget(opts.kvBudget);
  }

  /**
   * Bounds every MLA layer's cache (docs/kv-budget.md): a number of tokens, or the full
   * settings. Throws a RangeError for bad settings or when the caches already hold more rows.
   * @example
   * const s = model.createSession({ kvBudget: { kvBudget: 2048, keepPrompt: true } });
   */
  setKvBudget(opts: number | KvBudgetOptions): void {
    const k = kvBudgetOf(typeof opts === 'number' ? { kvBudget: opts } : opts, this.engine.model.config.kvImportanceHead);
    const held = this.engine.kvLength;
    if (held > k.kvBudget) throw new RangeError(`kvBudget ${k.kvBudget} is below the ${held} rows the session's MLA caches already hold`);
    this.engine.setKvBudget(k.kvBudget, k.sink, k.window, k.decay, k.policy);
    this.budget = k;
  }

  /** The MLA cache bound in force (null: none); a restored session's comes from its blob, keepPrompt off. */
  get kvBudget(): KvBudget | null {
    return this.budget;
  }

  /** Rows each MLA layer's cache holds now (its memory: rows x (kv_lora_rank + rope) floats). */
  get kvLength(): number {
    return this.engine.kvLength;
  }

  /** Tokens seen so far. */
  get length(): number {
    return this.history.length;
  }

  /** The tokens seen so far (a copy). */
  get tokens(): number[] {
    return [...this.history];
  }

  /**
   * Runs prompt tokens through the model (chunked prefill); returns the last token's logits.
   * With a budget that keeps the prompt, these tokens are pinned.
   */
  prefill(tokens: readonly number[]): Float32Array {
    this.feed(tokens);
    return this.engine.logits()!;
  }

  /** Runs prompt tokens through the model, the logits left where the engine put them. */
  private feed(tokens: readonly number[]): void {
    const pin = this.budget?.keepPrompt === true;
    if (pin) {
      const room = pinnableTokens(this.budget!);
      const pinned = this.pinned + tokens.length;
      if (pinned > room) throw new RangeError(`keepPrompt: ${pinned} prompt tokens do not fit kvBudget ${this.budget!.kvBudget} less sink ${this.budget!.sink} and window ${this.budget!.window} (${room})`);
      this.engine.pin(true);
    }
    try {
      this.engine.step(tokens);
    } finally {
      if (pin) this.engine.pin(false);
    }
    if (pin) this.pinned += tokens.length;
    // one by one: push(...tokens) passes every token as an argument and overflows the stack
    // past ~120K tokens (a 128K-token prompt on a GPU node)
    for (const t of tokens) this.history.push(t);
  }

  /** Samples the next token from the current logits, runs it through the model, returns it. */
  decode(sampling: SamplingOptions | Sampler = {}): number {
    const logits = this.engine.logitsRef();
    if (!logits) throw new Error('decode needs a prefill first');
    const s = sampling instanceof Sampler ? sampling : new Sampler(sampling);
    const t = s.sample(logits, this.history);
    this.engine.step([t]);
    this.history.push(t);
    return t;
  }

  /** One token through the model: alone, or in a batcher's next step. */
  private advance(t: number, batcher: StepBatcher | undefined): Promise<void> | void {
    if (batcher && batcher.model === this.engine.model) return batcher.step(this.engine, t);
    this.engine.step([t]);
  }

  /**
   * prefill() in chunks of `chunk` tokens with `pause` awaited between them, so that the decode
   * steps of other generations run between the chunks of a long prompt.
   */
  async prefillChunked(tokens: readonly number[], chunk: number, pause: () => Promise<void>): Promise<void> {
    if (!(Number.isInteger(chunk) && chunk > 0)) throw new RangeError(`chunk must be a positive integer, got ${chunk}`);
    for (let i = 0; i < tokens.length; i += chunk) {
      if (i > 0) await pause();
      this.feed(tokens.slice(i, i + chunk));
    }
  }

  /** The last token's logits (a copy), or null before any token. */
  logits(): Float32Array | null {
    return this.engine.logits();
  }

  /**
   * Generates from a prompt: text (tokenized as is), chat messages (through the model's chat
   * template), or token ids. Continues the conversation this session holds.
   */
  async *generate(prompt: string | readonly ChatMessage[] | readonly number[], opts: GenerateOptions = {}): AsyncGenerator<GenerateEvent> {
    validateSampling(opts);
    const maxTokens = opts.maxTokens ?? 256;
    if (!(Number.isInteger(maxTokens) && maxTokens >= 0)) throw new RangeError(`maxTokens must be a non-negative integer, got ${maxTokens}`);
    if (opts.kvBudget !== undefined) this.setKvBudget(opts.kvBudget);
    const tok = this.model.tokenizer;
    let ids: number[];
    if (typeof prompt === 'string') {
      if (!tok) throw new Error('this model has no tokenizer: pass token ids');
      ids = tok.encode(prompt);
    } else if (prompt.length && typeof prompt[0] === 'object') {
      if (!tok) throw new Error('this model has no tokenizer: pass token ids');
      ids = tok.encode(tok.applyChatTemplate(prompt as readonly ChatMessage[]));
    } else ids = [...(prompt as readonly number[])];
    if (!ids.length && !this.engine.logitsRef()) throw new RangeError('the prompt is empty');
    // model_max_length bounds the whole conversation: the prompt must fit, generation stops there
    const ctx = this.engine.model.config.maxContext ?? Infinity;
    if (this.history.length + ids.length > ctx) throw new RangeError(`the prompt (${ids.length} tokens, after ${this.history.length}) passes the model's context of ${ctx} tokens`);
    if (ids.length) this.feed(ids);
    const sampler = new Sampler(opts);
    const eos = new Set(this.model.eosTokenIds);
    const stops = (opts.stop ?? []).filter((s) => s.length > 0);
    const dec = tok ? new StreamDecoder(tok) : null;
    let text = '', pending = '', n = 0;
    let reason: FinishReason = 'length';
    const done = (): GenerateEvent => ({ type: 'done', finishReason: reason, promptTokens: ids.length, completionTokens: n, text });
    while (n < maxTokens && this.history.length < ctx) {
      if (opts.signal?.aborted) {
        reason = 'abort';
        break;
      }
      const t = sampler.sample(this.engine.logitsRef()!, this.history);
      n++;
      if (eos.has(t)) {
        await this.advance(t, opts.batcher);
        this.history.push(t);
        reason = 'stop';
        break;
      }
      await this.advance(t, opts.batcher);
      this.history.push(t);
      pending += dec ? dec.push(t) : '';
      // hold back text that could still become a stop string
      const hit = stops.map((s) => pending.indexOf(s)).filter((i) => i >= 0);
      if (hit.length) {
        const cut = Math.min(...hit);
        const piece = pending.slice(0, cut);
        text += piece;
        yield { type: 'token', token: t, text: piece };
        reason = 'stop';
        break;
      }
      let keep = 0;
      for (const s of stops) for (let k = Math.min(s.length - 1, pending.length); k > keep; k--) if (s.startsWith(pending.slice(pending.length - k))) keep = k;
      const piece = pending.slice(0, pending.length - keep);
      pending = pending.slice(pending.length - keep);
      text += piece;
      yield { type: 'token', token: t, text: piece };
      if (opts.yieldBetweenTokens !== false) await yieldToEventLoop();
    }
    if (reason !== 'stop' || !stops.length) {
      const rest = pending + (dec ? dec.flush() : '');
      text += rest;
      if (rest) yield { type: 'token', token: -1, text: rest };
    }
    yield done();
  }

  /** The session as a versioned blob: token history + the engine's state (KDA, MLA, logits). */
  save(): Uint8Array {
    const head = this.header();
    const engine = this.engine.save();
    const out = new Uint8Array(head.length + engine.length);
    out.set(head);
    out.set(engine, head.length);
    return out;
  }

  /**
   * {@link save}'s blob in parts (their concatenation is the same bytes; engine parts at most
   * `partBytes`): for sessions whose blob passes what one array holds (4 GiB in Node), such as a
   * long context's MLA caches. {@link Session.restoreParts} takes them back.
   * @example
   * for (const part of session.saveParts()) await file.write(part);
   */
  *saveParts(partBytes = 1 << 30): Generator<Uint8Array, void, undefined> {
    yield this.header();
    yield* this.engine.saveParts(partBytes);
  }

  /** A session continuing where a saved one stopped; throws if the blob is not this model's. */
  static restore(model: SessionHost, blob: Uint8Array): Session {
    const n = historyLength(blob);
    if (12 + 4 * n > blob.length) throw new Error('session blob is truncated');
    return Session.rebuild(model, blob.subarray(12, 12 + 4 * n), (e) => e.load(blob.subarray(12 + 4 * n)));
  }

  /**
   * {@link restore} from a blob in parts split anywhere (as {@link saveParts} makes them);
   * `totalBytes` is needed when `parts` is not an array.
   */
  static restoreParts(model: SessionHost, parts: Iterable<Uint8Array>, totalBytes?: number): Session {
    const total = partsTotal('restoreParts', parts, totalBytes);
    const it = parts[Symbol.iterator]();
    let got = new Uint8Array(0);
    const upTo = (len: number): void => {
      while (got.length < len) {
        const r = it.next();
        if (r.done) throw new Error('session blob is truncated');
        const joined = new Uint8Array(got.length + r.value.length);
        joined.set(got);
        joined.set(r.value, got.length);
        got = joined;
      }
    };
    upTo(12);
    const head = 12 + 4 * historyLength(got);
    upTo(head);
    const lead = got.subarray(head);
    function* engineParts(): Generator<Uint8Array> {
      if (lead.length) yield lead;
      for (let r = it.next(); !r.done; r = it.next()) yield r.value;
    }
    return Session.rebuild(model, got.subarray(12, head), (e) => e.loadParts(engineParts(), total - head));
  }

  private header(): Uint8Array {
    const out = new Uint8Array(12 + 4 * this.history.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, BLOB_MAGIC, true);
    dv.setUint32(4, BLOB_VERSION, true);
    dv.setUint32(8, this.history.length, true);
    this.history.forEach((t, i) => dv.setInt32(12 + 4 * i, t, true));
    return out;
  }

  /** A new session of `model` with this history, its engine state set by `load`. */
  private static rebuild(model: SessionHost, history: Uint8Array, load: (e: EngineSession) => void): Session {
    const n = history.length / 4;
    const s = model.createSession();
    try {
      // the history is outside the engine's checksum: every id must be a token of this model
      const V = s.engine.model.config.vocabSize;
      const dv0 = new DataView(history.buffer, history.byteOffset, history.byteLength);
      for (let i = 0; i < n; i++) {
        const t = dv0.getInt32(4 * i, true);
        if (t < 0 || t >= V) throw new Error(`session blob: history token ${t} at ${i} is outside the vocabulary (0..${V - 1})`);
      }
      load(s.engine);
      if (s.engine.pos !== n) throw new Error(`session blob holds ${n} tokens of history but ${s.engine.pos} of state`);
    } catch (e) {
      s.free();
      throw e;
    }
    const dv = new DataView(history.buffer, history.byteOffset, history.byteLength);
    for (let i = 0; i < n; i++) s.history.push(dv.getInt32(4 * i, true));
    // the engine's blob carries the bound's settings; keepPrompt is the host's and starts off
    const k = s.engine.kvSettings();
    s.budget = k.kvBudget ? { ...k, keepPrompt: false } : null;
    return s;
  }

  /** Frees the session's engine memory (KDA states, MLA caches). */
  free(): void {
    this.engine.free();
  }
}
