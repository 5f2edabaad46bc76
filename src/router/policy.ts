/**
 * Where a job runs. The prompt is counted with the model's own tokenizer and chat template; the
 * job's memory is its session state at the end (engine/layer-kinds.ts: what grows with context,
 * the MLA latent cache, plus what does not, KDA states and conv tails).
 */
import { buildPrompt, parseRequest } from '../server/prompt.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';

export type RouteReason = 'fits-edge' | 'exceeds-edge-budget' | 'edge-saturated' | 'no-node-fits' | 'kv-budget-bounds-edge';

/**
 * The MLA cache bound under which a job past the edge's token budget still runs at the edge
 * (docs/kv-budget.md), or 0: the request's kv_budget, else the router's default, if it is at most
 * what the edge decodes anyway (edgeMaxTokens) and the job fits edgeBudgetedMaxTokens.
 */
export function edgeBound(cfg: { edgeMaxTokens: number; edgeKvBudget: number; edgeBudgetedMaxTokens: number }, requested: unknown, need: number): number {
  const b = typeof requested === 'number' && Number.isInteger(requested) && requested > 0 ? requested : cfg.edgeKvBudget;
  return b > 0 && b <= cfg.edgeMaxTokens && need <= cfg.edgeBudgetedMaxTokens ? b : 0;
}

export interface JobEstimate {
  promptTokens: number;
  maxTokens: number;
  /** session state bytes at the end of the job */
  stateBytes: number;
}

/** Bytes of a session's state after `tokens` tokens: what save() would produce. */
export { sessionBlobBytes as sessionBytes } from '../engine/layer-kinds.js';

/** Prompt tokens of an OpenAI request body, as the server would build them (null if it is not a valid request). */
export function countPromptTokens(tok: Tokenizer, body: Record<string, unknown>): number | null {
  const parsed = parseRequest(Array.isArray(body.messages) ? 'chat' : 'completion', body);
  if (!parsed.ok) return null;
  try {
    return buildPrompt(tok, parsed.request).length;
  } catch {
    return null;
  }
}
