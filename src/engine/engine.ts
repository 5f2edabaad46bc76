/**
 * The engine: the C forward pass (engine/model) driven through any kernel backend. TypeScript
 * never loops over tensors here: it places weights once, then calls the engine once per
 * forward (a prefill batch or a decode step).
 */
import type { KimiConfig } from './config.js';
import { engineConfig } from './config.js';
import type { KernelBackend } from './backend.js';
import { WeightFormat, type WeightFormatName } from './kernels.js';
import type { KleFunctionName } from './kle-abi.js';
import { sessionBlobBytes } from './layer-kinds.js';
import { roleId, type TensorSlot } from './roles.js';
import { WasmBackend } from './wasm-backend.js';

/** Most tokens a session holds (the engine's limit on a blob's position, engine/model/session.c). */
export const MAX_SESSION_TOKENS = 2 ** 30;

/**
 * Which rows a bounded MLA cache keeps past its sink, window and pinned tokens (engine order:
 * KLE_KV_ATTENTION, KLE_KV_RECENT, KLE_KV_LEARNED): those the queries attended to most, the
 * newest, or those the model's importance head rates highest.
 */
export const KV_POLICIES = ['attention', 'recent', 'learned'] as const;
export type KvPolicy = (typeof KV_POLICIES)[number];

/** An engine call that failed, with the C error code. */
export class EngineError extends Error {
  constructor(
    readonly fn: string,
    readonly code: number,
    detail = '',
  ) {
    const what = { [-1]: 'invalid argument', [-2]: 'out of memory', [-3]: 'a required tensor is missing', [-4]: 'malformed state blob or blob of another model', [-5]: 'a CUDA call failed', [-6]: 'not done by this backend' }[code] ?? `error ${code}`;
    super(`${fn}: ${what}${detail ? ` (${detail})` : ''}`);
    this.name = 'EngineError';
  }
}

export type TensorNeed = 'unused' | 'required' | 'optional';

export interface TensorExpectation {
  readonly need: TensorNeed;
  readonly rows: number;
  readonly cols: number;
  /** true for matmul weights (any format), false for f32-only tensors (norms, gates, conv) */
  readonly anyFormat: boolean;
}

function check(fn: string, rc: number, detail?: string): void {
  if (rc !== 0) throw new EngineError(fn, rc, detail);
}

const gib = (n: number) => (n / 2 ** 30).toFixed(2);

/** A model placed in one backend's memory. */
export class EngineModel {
  private freed = false;
  private readonly sessions = new Set<EngineSession>();

  private constructor(
    readonly backend: KernelBackend,
    readonly config: KimiConfig,
    readonly handle: number,
  ) {}

  /** true once {@link free} ran */
  get isFreed(): boolean {
    return this.freed;
  }

  /** the handle, or an error after free(): the engine must never see a freed model */
  private live(): number {
    if (this.freed) throw new EngineError('kle_model', -1, 'the model was freed');
    return this.handle;
  }

  /** Creates an empty model for a checked config; tensors follow with {@link place}. */
  static create(backend: KernelBackend, config: KimiConfig): EngineModel {
    const { ints, floats } = engineConfig(config);
    const h = call(backend, 'kle_model_create', [ints, ints.length, floats, floats.length]);
    if (!h) throw new EngineError('kle_model_create', -1, 'the engine refused the config');
    return new EngineModel(backend, config, h);
  }

  /**
   * A model of seeded random weights made where they live (a GPU's matrices in device memory,
   * never in the host's), finalized and ready for sessions: benchmarks and the GPU node at full
   * size without a checkpoint. The same seed gives the same weights on every backend, so the CPU
   * engine checks the GPU's on it. Refused before anything is allocated when the weights and
   * 1 GiB for sessions do not fit the device, with the numbers. `'q8_0'` quantizes each block of
   * 32 values as a GGUF Q8_0 file holds them (half the bytes of BF16; the GPU keeps them so).
   *
   * @example
   * const m = EngineModel.synthesize(cuda, parseKimiConfig(kimi48bConfig), 7, 'bf16');
   */
  static synthesize(backend: KernelBackend, config: KimiConfig, seed: number, dtype: SynthDtype = 'bf16'): EngineModel {
    const m = EngineModel.create(backend, config);
    try {
      // the engine refuses it too (kle_model_synthesize); the numbers are said here
      m.checkFits(call(backend, 'kle_model_planned_bytes', [m.handle, WeightFormat[dtype]]), 'the model', ` in ${dtype}`);
      check('kle_model_synthesize', call(backend, 'kle_model_synthesize', [m.handle, seed | 0, WeightFormat[dtype]]));
      m.finalize();
      return m;
    } catch (e) {
      m.free();
      throw e;
    }
  }

  /**
   * Refuses, before a byte is allocated, a model whose weights (`bytes`, as the backend will hold
   * them) and 1 GiB for sessions do not fit the backend's free memory; nothing on the CPU.
   * `what` and `format` (such as ' in bf16') name it in the message.
   */
  checkFits(bytes: number, what: string, format = ''): void {
    const free = this.deviceFree();
    if (free !== null && bytes + 2 ** 30 > free)
      throw new EngineError('kle_model_create', -2, `${what} needs ${gib(bytes)} GiB of device memory${format} (and 1 GiB for sessions); ${gib(free)} GiB are free on ${this.backend.name}`);
  }

  /**
   * Threads the model's CPU operations use: the native engine splits its matmuls by weight rows,
   * KDA and MLA heads (the same result to the bit), by default over every core; the wasm threads
   * build (`loadWasmBackend('threads')`) the same, over workers it starts here (until they have
   * started, the work runs on those already there); the other wasm builds (one thread per isolate
   * or page) and the GPU report 1. Sets them when `n` is given (1..256).
   * @example
   * model.engine.threads(1); // one core, as a benchmark against another single-thread engine
   */
  threads(n?: number): number {
    if (n !== undefined && !(Number.isInteger(n) && n >= 1 && n <= 256)) throw new RangeError(`threads: ${n} is not an integer in 1..256`);
    const r = call(this.backend, 'kle_model_threads', [this.live(), n ?? 0]);
    if (r < 0) throw new EngineError('kle_model_threads', r);
    if (n !== undefined && this.backend instanceof WasmBackend) this.backend.startThreads(this.live());
    return r;
  }

  /**
   * The arithmetic of the products (`kle_model_precision`). `'f32'`, every backend's default: f32
   * accuracy (the GPU multiplies f32 activations as a BF16 high part and remainder, the CPU as
   * three BF16 terms). `'bf16'`: on the CUDA backend, activations, MLA queries and attention
   * probabilities rounded to BF16 with one product each, as vLLM and FlashMLA run a BF16 model
   * (half the tensor-core work of prefill, batched decode steps and the MLA attention over a BF16
   * cache); on the native CPU engine where the processor has AVX-512 BF16, the activations of
   * BF16-weight matmuls of up to 3 tokens (decode; on AMD processors, prefill's too) rounded
   * to BF16, one vdpbf16ps per 32 products, as llama.cpp runs a BF16 model. Both at BF16's rounding (bench/README.md measures
   * them). Sets it when `mode` is given; returns the one in force; throws where the backend has
   * no BF16 products.
   * @example
   * try { model.engine.precision('bf16'); } catch { // f32 products only here }
   */
  precision(mode?: Precision): Precision {
    if (mode !== undefined && mode !== 'f32' && mode !== 'bf16') throw new RangeError(`precision: ${String(mode)} is not 'f32' or 'bf16'`);
    const r = call(this.backend, 'kle_model_precision', [this.live(), mode === undefined ? 0 : PRECISION_IDS[mode]]);
    if (r === -6 && mode === 'bf16') throw new EngineError('kle_model_precision', r, `BF16 precision needs the CUDA backend or the native engine on a processor with AVX-512 BF16, not ${this.backend.name}`);
    if (r < 0) throw new EngineError('kle_model_precision', r);
    return r === PRECISION_IDS.bf16 ? 'bf16' : 'f32';
  }

  /**
   * Resolves once the threads set by {@link threads} are all serving (wasm threads start as
   * workers, asynchronously; elsewhere at once), or after `timeoutMs`, with those serving then.
   */
  async threadsReady(timeoutMs = 10_000): Promise<number> {
    const want = this.threads();
    const t0 = Date.now();
    for (;;) {
      const have = this.backend instanceof WasmBackend ? 1 + this.backend.threadsServing(this.live()) : want;
      if (have >= want || Date.now() - t0 > timeoutMs) return have;
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Free bytes of the backend's own memory (a GPU's), or null where it is the host's. */
  deviceFree(): number | null {
    const n = call(this.backend, 'kle_model_device_free', [this.live()]);
    return n < 0 ? null : n;
  }

  /** What the config expects of a tensor slot. */
  expect(s: TensorSlot): TensorExpectation {
    const out = new Int32Array(3);
    const r = call(this.backend, 'kle_model_tensor_expect', [this.live(), roleId(s.role), s.layer, s.expert, out]);
    if (r < 0) throw new EngineError('kle_model_tensor_expect', r);
    return { need: (['unused', 'required', 'optional'] as const)[r]!, rows: out[0]!, cols: out[1]!, anyFormat: out[2] === 1 };
  }

  /**
   * Places a tensor: `bytes` are rows x cols values in format fmt (GGUF block layout for the
   * quantized ones). The engine checks the shape and format against the config first.
   */
  place(s: TensorSlot, fmt: WeightFormatName, rows: number, cols: number, bytes: Uint8Array): void {
    const w = this.allocTensor(s, fmt, rows, cols);
    w.write(bytes);
    w.end();
  }

  /**
   * Allocates a tensor in engine memory and returns a writer that takes its bytes in order, in
   * chunks of any size (a streamed file goes straight into engine memory).
   */
  allocTensor(s: TensorSlot, fmt: WeightFormatName, rows: number, cols: number): { write(chunk: Uint8Array): void; end(): void } {
    const addr = call(this.backend, 'kle_model_tensor', [this.live(), roleId(s.role), s.layer, s.expert, WeightFormat[fmt], rows, cols]);
    if (!addr) throw new EngineError('kle_model_tensor', -1, `${s.role} layer ${s.layer} expert ${s.expert}: ${fmt} [${rows}, ${cols}] does not fit the config, or memory ran out`);
    const total = call(this.backend, 'kle_row_bytes', [WeightFormat[fmt], cols]) * rows;
    let off = 0;
    return {
      write: (chunk) => {
        if (off + chunk.length > total) throw new EngineError('kle_model_tensor', -1, `${s.role}: ${off + chunk.length} bytes written into ${total}`);
        writeBytes(this.backend, addr + off, chunk);
        off += chunk.length;
      },
      end: () => {
        if (off !== total) throw new EngineError('kle_model_tensor', -1, `${s.role}: ${off} bytes written, ${total} expected`);
        // a GPU takes the tensor now: the host never holds more than the tensors being read
        check('kle_model_tensor_ready', call(this.backend, 'kle_model_tensor_ready', [this.live(), roleId(s.role), s.layer, s.expert]), `${s.role} layer ${s.layer}`);
      },
    };
  }

  /** Checks that every required tensor is there and prepares derived weights. */
  finalize(): void {
    check('kle_model_finalize', call(this.backend, 'kle_model_finalize', [this.live()]));
  }

  /** Bytes of weights in engine memory. */
  bytes(): number {
    return call(this.backend, 'kle_model_bytes', [this.live()]);
  }

  /**
   * A new session. `kvFormat` sets its MLA caches' format (default: {@link kvFormat}); 'bf16'
   * only where the backend keeps them so.
   * @example
   * const exact = model.createSession({ kvFormat: 'f32' }); // f32 caches on a GPU, for parity checks
   */
  createSession(opts: { kvFormat?: KvFormat } = {}): EngineSession {
    const s = call(this.backend, 'kle_session_create', [this.live()]);
    if (!s) throw new EngineError('kle_session_create', -2);
    const session = new EngineSession(this, s, () => this.sessions.delete(session));
    this.sessions.add(session);
    if (opts.kvFormat !== undefined) {
      try {
        session.setKvFormat(opts.kvFormat);
      } catch (e) {
        session.free();
        throw e;
      }
    }
    return session;
  }

  /** The most sessions {@link stepBatch} takes at once (64 on the CPU, 512 on the GPU). */
  get maxBatch(): number {
    return call(this.backend, 'kle_model_batch', [this.live()]);
  }

  /**
   * One decode step for several of this model's sessions at once, a token each (continuous
   * batching): weights are read once for all of them, each session's state and cache are its
   * own, and each ends with the logits its own forward of the token would give (to float
   * rounding). At most the backend's batch (64 on the CPU, 512 on the GPU); no session with a
   * kv budget.
   * @example
   * model.stepBatch([a, b], [ta, tb]); // then a.logitsRef(), b.logitsRef()
   */
  stepBatch(sessions: readonly EngineSession[], tokens: ArrayLike<number>): void {
    const n = sessions.length, V = this.config.vocabSize;
    if (n === 0 || tokens.length !== n) throw new RangeError(`stepBatch: ${n} sessions and ${tokens.length} tokens`);
    const handles = new Uint8Array(8 * n), dv = new DataView(handles.buffer);
    sessions.forEach((s, i) => {
      if (s.model !== this) throw new RangeError(`stepBatch: session ${i} belongs to another model`);
      const h = s.liveHandle();
      dv.setUint32(8 * i, h >>> 0, true);
      dv.setUint32(8 * i + 4, Math.floor(h / 2 ** 32), true);
      const t = tokens[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= V) throw new RangeError(`token ${t} at ${i} is outside the vocabulary (0..${V - 1})`);
    });
    check('kle_model_step_batch', call(this.backend, 'kle_model_step_batch', [this.live(), handles, Int32Array.from(tokens), n]),
      `${n} sessions (each once, no kv budget, at most the backend's batch)`);
  }

  private defaultKv: KvFormat | null = null;
  /**
   * The MLA caches' format a new session gets: 'bf16' on the GPU where its attention kernel
   * takes the shapes (half the memory and half the bytes a decode step reads), else 'f32'.
   */
  get kvFormat(): KvFormat {
    if (!this.defaultKv) {
      const s = this.createSession();
      this.defaultKv = s.kvFormat;
      s.free();
    }
    return this.defaultKv;
  }

  /** Frees the model and any of its sessions still open (they would point into it). */
  free(): void {
    if (this.freed) return;
    for (const s of [...this.sessions]) s.free();
    this.freed = true;
    call(this.backend, 'kle_model_free', [this.handle]);
  }
}

/**
 * A draw on the device (kle_session_sample): the sampler's settings and this step's penalty
 * lists, as src/generate/sampler.ts keeps them.
 */
export interface DeviceDraw {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  /** ln(min_p), -Infinity for none */
  readonly logMinP: number;
  readonly repetitionPenalty: number;
  readonly frequencyPenalty: number;
  readonly presencePenalty: number;
  /** the context's distinct tokens, how often each came, and their logit bias (0: none) */
  readonly toks: Int32Array;
  readonly counts: Int32Array;
  readonly cbias: Float64Array;
  /** the other tokens with a logit bias */
  readonly btoks: Int32Array;
  readonly bvals: Float64Array;
  /** the draw: u = uBits / 2^32 */
  readonly uBits: number;
}

/**
 * Where a session's last logits are. `address` is in the engine's memory (the wasm engine's, for
 * a sampler to read in place); on a GPU reading it copies the logits to the host, and `draw`
 * samples on the device instead, so they never leave it.
 */
export interface LogitsRef {
  readonly backend: KernelBackend;
  readonly address: number;
  readonly vocabSize: number;
  copy(): Float32Array;
  draw?(d: DeviceDraw): number;
}

/** How a session's MLA caches hold their values (KDA states are always f32). */
export type KvFormat = 'f32' | 'bf16';
/** the formats EngineModel.synthesize stores matrices in */
export type SynthDtype = 'f32' | 'bf16' | 'q8_0';
/** The arithmetic of a model's tensor-core products ({@link EngineModel.precision}). */
export type Precision = 'f32' | 'bf16';
/** kle.h's KLE_PRECISION_F32 and KLE_PRECISION_BF16 */
const PRECISION_IDS: Record<Precision, number> = { f32: 1, bf16: 2 };
const KV_FORMAT_IDS: Record<KvFormat, number> = { f32: WeightFormat.f32, bf16: WeightFormat.bf16 };

/** One conversation's state in the engine: KDA states, conv tails, MLA caches, logits. */
export class EngineSession {
  private freed = false;

  /** True once the session or its model was freed. */
  get isFreed(): boolean {
    return this.freed || this.model.isFreed;
  }

  /** @internal the handle, checked live (for the model's batched step) */
  liveHandle(): number {
    return this.live();
  }

  /** the handle, or an error once it or its model was freed (the engine would read freed memory) */
  private live(): number {
    if (this.freed || this.model.isFreed) throw new EngineError('kle_session', -1, this.freed ? 'the session was freed' : 'its model was freed');
    return this.handle;
  }

  /** made by {@link EngineModel.createSession} */
  constructor(
    readonly model: EngineModel,
    readonly handle: number,
    private readonly onFree: () => void = () => {},
  ) {}

  /**
   * Runs tokens through the model and returns the last token's logits (a copy), or every
   * token's ([n * vocab]) with `all`. One token uses the decode kernels, more the prefill ones.
   */
  forward(tokens: ArrayLike<number>, all = false): Float32Array {
    const out = new Float32Array(all ? tokens.length * this.model.config.vocabSize : this.model.config.vocabSize);
    this.run(tokens, out, all);
    return out;
  }

  /**
   * Runs tokens through the model without copying logits out: read them with
   * {@link logitsRef} (in place, or drawn from on a GPU) or {@link logits}.
   */
  step(tokens: ArrayLike<number>): void {
    this.run(tokens, null, false);
  }

  private run(tokens: ArrayLike<number>, out: Float32Array | null, all: boolean): void {
    const n = tokens.length;
    const V = this.model.config.vocabSize;
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= V) throw new RangeError(`token ${t} at ${i} is outside the vocabulary (0..${V - 1})`);
    }
    if (n === 0) throw new RangeError('forward needs at least one token');
    check('kle_session_forward', call(this.model.backend, 'kle_session_forward', [this.live(), Int32Array.from(tokens), n, out, all ? 1 : 0]));
  }

  /** Tokens seen so far. */
  get pos(): number {
    return call(this.model.backend, 'kle_session_pos', [this.live()]);
  }

  /**
   * Where the last token's logits are, for a sampler to read in place (on the wasm backend the
   * address is in the engine's memory), or null before the first token.
   */
  logitsRef(): LogitsRef | null {
    const b = this.model.backend, V = this.model.config.vocabSize;
    if (!call(b, 'kle_session_has_logits', [this.live()])) return null;
    const address = () => {
      const a = call(b, 'kle_session_logits', [this.live()]);
      if (!a) throw new EngineError('kle_session_logits', -5, 'copying the logits to the host');
      return a;
    };
    if (b.name !== 'cuda') {
      const a = address();
      return { backend: b, address: a, vocabSize: V, copy: () => readF32(b, a, V) };
    }
    return {
      backend: b,
      get address() {
        return address();
      },
      vocabSize: V,
      copy: () => readF32(b, address(), V),
      draw: (d) => this.draw(d),
    };
  }

  /** A token drawn on the device from the last logits (kle_session_sample). */
  private draw(d: DeviceDraw): number {
    const n = d.toks.length, nb = d.btoks.length;
    if (d.counts.length !== n || d.cbias.length !== n || d.bvals.length !== nb) throw new RangeError('draw: the penalty lists differ in length');
    const bytes = (a: Float64Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const params = Float32Array.of(d.temperature, d.topP, d.logMinP, d.repetitionPenalty, d.frequencyPenalty, d.presencePenalty);
    const rc = call(this.model.backend, 'kle_session_sample', [this.live(), params, d.topK, d.toks, d.counts, bytes(d.cbias), n, d.btoks, bytes(d.bvals), nb, d.uBits]);
    if (rc < 0) throw new EngineError('kle_session_sample', rc, JSON.stringify({ ...d, toks: n, counts: undefined, cbias: undefined, btoks: nb, bvals: undefined }));
    return rc;
  }

  /** The last token's logits (a copy), or null before the first token. */
  logits(): Float32Array | null {
    const addr = call(this.model.backend, 'kle_session_logits', [this.live()]);
    return addr ? readF32(this.model.backend, addr, this.model.config.vocabSize) : null;
  }

  /**
   * Bounds every MLA layer's cache to `budget` rows (docs/kv-budget.md); `budget` 0 removes the
   * bound while no row was dropped yet. Throws when the engine refuses the settings (budget not
   * above sink + window, decay outside [0, 1], or more rows cached than the budget).
   */
  setKvBudget(budget: number, sink: number, window: number, decay: number, policy: KvPolicy = 'attention'): void {
    check('kle_session_set_kv_budget', call(this.model.backend, 'kle_session_set_kv_budget', [this.live(), budget, sink, window, decay, KV_POLICIES.indexOf(policy)]),
      `budget ${budget}, sink ${sink}, window ${window}, decay ${decay}, policy ${policy}, ${this.kvLength} rows cached`);
  }

  /** The MLA cache bound in force (budget 0: none), as set or as a loaded blob carried it. */
  kvSettings(): { kvBudget: number; sink: number; window: number; decay: number; policy: KvPolicy } {
    const out = new Int32Array(4), decay = new Float32Array(1);
    check('kle_session_kv_settings', call(this.model.backend, 'kle_session_kv_settings', [this.live(), out, decay]));
    return { kvBudget: out[0]!, sink: out[1]!, window: out[2]!, decay: decay[0]!, policy: KV_POLICIES[out[3]!] ?? 'attention' };
  }

  /** Rows each MLA cache holds now (the position, without a budget). */
  get kvLength(): number {
    return call(this.model.backend, 'kle_session_kv_len', [this.live()]);
  }

  /**
   * Benchmarks at long context: this fresh session's state as if `tokens` tokens had been
   * forwarded (seeded values in the MLA caches and KDA states, made on the backend; no logits).
   */
  synthesize(tokens: number, seed: number): void {
    check('kle_session_synthesize', call(this.model.backend, 'kle_session_synthesize', [this.live(), tokens, seed | 0]), `${tokens} tokens`);
  }

  /** The MLA caches' format (state blobs hold f32 either way: a BF16 cache converts on the way). */
  get kvFormat(): KvFormat {
    return call(this.model.backend, 'kle_session_kv_format', [this.live()]) === KV_FORMAT_IDS.bf16 ? 'bf16' : 'f32';
  }

  /** Sets the MLA caches' format of a fresh session; throws once it holds tokens, or for a format the backend does not keep. */
  setKvFormat(fmt: KvFormat): void {
    if (!(fmt in KV_FORMAT_IDS)) throw new RangeError(`kvFormat must be 'f32' or 'bf16', got ${String(fmt)}`);
    check('kle_session_set_kv_format', call(this.model.backend, 'kle_session_set_kv_format', [this.live(), KV_FORMAT_IDS[fmt]]),
      `${fmt} on ${this.model.backend.name}${this.pos ? `, ${this.pos} tokens already in the session` : ''}`);
  }

  /** Tokens forwarded while pinning is on are never dropped by the budget. */
  pin(on: boolean): void {
    check('kle_session_pin', call(this.model.backend, 'kle_session_pin', [this.live(), on ? 1 : 0]));
  }

  /** Bytes of the session's state blob ({@link save}), without making it. */
  stateSize(): number {
    return call(this.model.backend, 'kle_session_state_size', [this.live()]);
  }

  /** The session's state as a versioned blob (see engine/model/session.c). */
  save(): Uint8Array {
    const n = this.stateSize();
    const out = new Uint8Array(n);
    check('kle_session_state_save', call(this.model.backend, 'kle_session_state_save', [this.live(), out, n]));
    return out;
  }

  /** Replaces this session's state with a blob; throws (state unchanged) if it is not one of this model's. */
  load(blob: Uint8Array): void {
    check('kle_session_state_load', call(this.model.backend, 'kle_session_state_load', [this.live(), blob, blob.length]));
  }

  /**
   * The state blob in parts of at most `partBytes` bytes, whose concatenation is {@link save}'s
   * blob: for sessions whose blob passes what one array holds (4 GiB in Node; an MLA cache of a
   * long context). The engine keeps one copy of the blob until the parts are all taken or the
   * loop stops.
   * @example
   * for (const part of session.saveParts()) await file.write(part);
   */
  *saveParts(partBytes = 1 << 30): Generator<Uint8Array, void, undefined> {
    if (!Number.isInteger(partBytes) || partBytes < 1) throw new RangeError(`partBytes ${partBytes} is not a positive integer`);
    const b = this.model.backend;
    const n = this.stateSize();
    const buf = engineBuffer(b, n);
    try {
      check('kle_session_state_save_at', call(b, 'kle_session_state_save_at', [this.live(), buf, n]));
      for (let off = 0; off < n; off += partBytes) yield readBytes(b, buf + off, Math.min(partBytes, n - off));
    } finally {
      call(b, 'kle_buffer_free', [buf]);
    }
  }

  /**
   * Replaces this session's state with a blob given in parts (as {@link saveParts} makes them,
   * any sizes); `totalBytes` is needed when `parts` is not an array. Throws, state unchanged,
   * if the parts do not add up to `totalBytes` or the blob is not one of this model's.
   */
  loadParts(parts: Iterable<Uint8Array>, totalBytes?: number): void {
    const n = partsTotal('loadParts', parts, totalBytes);
    // refused before any memory is asked for: no blob of this model is larger
    const most = sessionBlobBytes(this.model.config, MAX_SESSION_TOKENS, MAX_SESSION_TOKENS);
    if (n > most) throw new RangeError(`loadParts: ${n} bytes announced, more than any state of this model can have (${most} at ${MAX_SESSION_TOKENS} tokens)`);
    const b = this.model.backend;
    const buf = engineBuffer(b, n);
    try {
      let off = 0;
      for (const part of parts) {
        if (off + part.length > n) throw new RangeError(`loadParts: the parts pass the ${n} bytes announced`);
        writeBytes(b, buf + off, part);
        off += part.length;
      }
      if (off !== n) throw new RangeError(`loadParts: the parts hold ${off} bytes, not the ${n} announced`);
      check('kle_session_state_load_at', call(b, 'kle_session_state_load_at', [this.live(), buf, n]));
    } finally {
      call(b, 'kle_buffer_free', [buf]);
    }
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.onFree();
    call(this.model.backend, 'kle_session_free', [this.handle]);
  }
}

function call(b: KernelBackend, fn: KleFunctionName, args: Parameters<KernelBackend['call']>[1]): number {
  return b.call(fn, args);
}

/** Copies bytes to an engine address: straight into linear memory for wasm. */
function writeBytes(b: KernelBackend, addr: number, bytes: Uint8Array): void {
  if (b instanceof WasmBackend) new Uint8Array(b.memory.buffer, addr, bytes.length).set(bytes);
  else check('kle_mem_write', b.call('kle_mem_write', [addr, bytes, bytes.length]));
}

/**
 * The bytes a blob given in parts holds: `totalBytes`, or the parts' sum when they are an array
 * (an iterable may be read only once, so it cannot be summed ahead).
 */
export function partsTotal(who: string, parts: Iterable<Uint8Array>, totalBytes?: number): number {
  const n = totalBytes ?? (Array.isArray(parts) ? (parts as readonly Uint8Array[]).reduce((a, p) => a + p.length, 0) : NaN);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${who}: give totalBytes when the parts are not an array`);
  return n;
}

/** n bytes of engine memory, for blobs passed in parts; throws when the engine has no room. */
function engineBuffer(b: KernelBackend, n: number): number {
  const addr = call(b, 'kle_buffer_alloc', [n]);
  if (!addr) throw new EngineError('kle_buffer_alloc', -2, `${n} bytes`);
  return addr;
}

function readBytes(b: KernelBackend, addr: number, n: number): Uint8Array {
  if (b instanceof WasmBackend) return new Uint8Array(b.memory.buffer, addr, n).slice();
  const out = new Uint8Array(n);
  check('kle_mem_read', b.call('kle_mem_read', [addr, out, n]));
  return out;
}

function readF32(b: KernelBackend, addr: number, n: number): Float32Array {
  return new Float32Array(readBytes(b, addr, 4 * n).buffer);
}
