/**
 * Where a job runs. The prompt is counted with the model's own tokenizer and chat template; the
 * job's memory is its session state at the end (engine/layer-kinds.ts: what grows with context,
 * the MLA latent cache, plus what does not, KDA states and conv tails).
 */
import type { KimiConfig } from '../engine/config.js';
import type { Tokenizer, ChatMessage } from '../tokenizer/tokenizer.js';

export type RouteReason = 'fits-edge' | 'exceeds-edge-budget' | 'edge-saturated' | 'no-node-fits';

export interface JobEstimate {
  promptTokens: number;
  maxTokens: number;
  /** session state bytes at the end of the job */
  stateBytes: number;
}

/** Bytes of a session's state after `tokens` tokens: what save() would produce. */
export { sessionBlobBytes as sessionBytes } from '../engine/layer-kinds.js';

/** Prompt tokens of an OpenAI request body, by the model's tokenizer (null if not countable). */
export function countPromptTokens(tok: Tokenizer, body: Record<string, unknown>): number | null {
  return promptTokenIds(tok, body)?.length ?? null;
}

/** The prompt's token ids, as the server would build them (chat template included). */
export function promptTokenIds(tok: Tokenizer, body: Record<string, unknown>): number[] | null {
  try {
    if (Array.isArray(body.messages)) {
      const msgs = (body.messages as { role: string; content: unknown }[]).map((m) => ({
        role: (m.role === 'developer' ? 'system' : m.role) as ChatMessage['role'],
        content: typeof m.content === 'string' ? m.content : Array.isArray(m.content) ? (m.content as { text?: string }[]).map((p) => p.text ?? '').join('') : '',
      }));
      return tok.encode(tok.applyChatTemplate(msgs));
    }
    const p = body.prompt;
    if (typeof p === 'string') return tok.encode(p);
    if (Array.isArray(p) && typeof p[0] === 'string') return tok.encode(p[0]);
  } catch {
    return null;
  }
  return null;
}
