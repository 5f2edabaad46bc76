/**
 * Where a job runs. The prompt is counted with the model's own tokenizer and chat template; the
 * job's memory is estimated from what grows with context (the MLA latent cache: MLA layers x
 * (kv_lora_rank + rope dim) floats per token) plus what does not (KDA states and conv tails).
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

/** Bytes of a session's state after `tokens` tokens (what save() would produce, near enough). */
export function sessionBytes(c: KimiConfig, tokens: number): number {
  const kda = c.layerKinds.filter((k) => k === 'kda').length;
  const mla = c.layerKinds.length - kda;
  const HK = c.kda.numHeads * c.kda.headDim;
  const kdaBytes = kda * 4 * (c.kda.numHeads * c.kda.headDim * c.kda.headDim + 3 * (c.kda.convKernel - 1) * HK);
  return kdaBytes + mla * 4 * (c.mla.kvLoraRank + c.mla.qkRopeHeadDim) * tokens + 4 * c.vocabSize;
}

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
