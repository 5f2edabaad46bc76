/**
 * The bounded MLA cache's settings (docs/kv-budget.md): what a session, a generate() call and a
 * request's `kv_budget` give, checked and completed with the defaults the engine then applies.
 */
import { KV_POLICIES, MAX_SESSION_TOKENS, type KvPolicy } from '../engine/engine.js';

/** How a session bounds its MLA caches. Only `kvBudget` is required. */
export interface KvBudgetOptions {
  /** most rows each MLA layer's cache keeps (tokens); KDA layers are not affected */
  kvBudget: number;
  /** first tokens always kept, the attention sinks (default {@link KV_DEFAULTS}.sink, at most budget / 4) */
  sink?: number;
  /** most recent tokens always kept (default budget / 4) */
  window?: number;
  /** per-query decay of a row's attention score, in [0, 1] (default {@link KV_DEFAULTS}.decay, 1: none) */
  decay?: number;
  /** keep every prompt token (the prompt must then fit the budget less sink and window); default false */
  keepPrompt?: boolean;
  /**
   * the rest of the budget: rows attended to most ('attention'), the newest ('recent'), or those
   * the model's importance head rates highest ('learned', the default when the model has one)
   */
  policy?: KvPolicy;
}

/** The settings with every default filled in. */
export type KvBudget = Required<KvBudgetOptions>;

/**
 * Defaults: four sink tokens (StreamingLLM's), a recent window of a quarter of the budget, and
 * scores that do not decay (H2O's accumulated attention): on the trained default model's held-out
 * documents decay 1 cost half the perplexity of 0.5 .. 0.99 at budgets of 12.5% and 25% of the
 * length (bench:kv-quality). A decay below 1 weighs recent queries more.
 */
export const KV_DEFAULTS = { sink: 4, windowFraction: 0.25, decay: 1 } as const;

function nonNegInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${String(v)}`);
  return v;
}

/**
 * Checks the options and fills in the defaults; throws a RangeError that names the setting at
 * fault. `learnedHead`: the model has an importance head ('learned' is then the default policy).
 */
export function kvBudgetOf(o: KvBudgetOptions, learnedHead = false): KvBudget {
  const b = o.kvBudget;
  if (typeof b !== 'number' || !Number.isInteger(b) || b < 1 || b > MAX_SESSION_TOKENS) throw new RangeError(`kvBudget must be an integer from 1 to ${MAX_SESSION_TOKENS}, got ${String(b)}`);
  const sink = o.sink === undefined ? Math.min(KV_DEFAULTS.sink, Math.floor(b / 4)) : nonNegInt('sink', o.sink);
  const window = o.window === undefined ? Math.floor(b * KV_DEFAULTS.windowFraction) : nonNegInt('window', o.window);
  if (sink + window >= b) throw new RangeError(`kvBudget ${b} must exceed sink (${sink}) + window (${window})`);
  const decay = o.decay ?? KV_DEFAULTS.decay;
  if (typeof decay !== 'number' || !(decay >= 0 && decay <= 1)) throw new RangeError(`decay must be a number in [0, 1], got ${String(decay)}`);
  const keepPrompt = o.keepPrompt ?? false;
  if (typeof keepPrompt !== 'boolean') throw new RangeError(`keepPrompt must be a boolean, got ${String(keepPrompt)}`);
  const policy = o.policy ?? (learnedHead ? 'learned' : 'attention');
  if (!KV_POLICIES.includes(policy)) throw new RangeError(`policy must be one of ${KV_POLICIES.join(', ')}, got ${String(policy)}`);
  if (policy === 'learned' && !learnedHead) throw new RangeError("policy 'learned' needs a model with an importance head (config kv_importance_head)");
  return { kvBudget: b, sink, window, decay, keepPrompt, policy };
}

/** Prompt tokens a budget can pin (keepPrompt): what is left after the sink and the window. */
export function pinnableTokens(k: KvBudget): number {
  return k.kvBudget - k.sink - k.window;
}
