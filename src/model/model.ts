/** Model: the loaded weights, config and tokenizer; sessions come from here. */
import type { KernelBackend } from '../engine/backend.js';
import type { EngineModel } from '../engine/engine.js';
import type { KimiConfig } from '../engine/config.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { Session, type SessionOptions } from '../generate/session.js';

export class Model {
  /** token ids that end generation: the config's eos ids and the tokenizer's eos token */
  readonly eosTokenIds: readonly number[];

  constructor(
    readonly engine: EngineModel,
    readonly tokenizer: Tokenizer | null,
    /** where the model came from (a directory, URL, bucket prefix) */
    readonly name: string,
  ) {
    const eos = new Set(engine.config.eosTokenIds);
    const t = tokenizer?.eosToken ? tokenizer.tokenToId(tokenizer.eosToken) : undefined;
    if (t !== undefined) eos.add(t);
    this.eosTokenIds = [...eos];
  }

  get config(): KimiConfig {
    return this.engine.config;
  }

  get backend(): KernelBackend {
    return this.engine.backend;
  }

  /** Bytes of weights in engine memory. */
  get weightBytes(): number {
    return this.engine.bytes();
  }

  /**
   * A new conversation. `kvBudget` bounds its MLA caches (docs/kv-budget.md).
   * @example
   * const s = model.createSession({ kvBudget: 1024 });
   */
  createSession(opts: SessionOptions = {}): Session {
    const e = this.engine.createSession();
    try {
      return new Session(this, e, opts);
    } catch (err) {
      e.free();
      throw err;
    }
  }

  free(): void {
    this.engine.free();
  }
}
