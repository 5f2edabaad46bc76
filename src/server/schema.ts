/** Request schemas of the OpenAI-compatible endpoints (zod), with this server's extensions. */
import { z } from 'zod';

const stop = z.union([z.string(), z.array(z.string()).max(4)]).optional().nullable();

/** Sampling and length fields shared by both endpoints. */
const common = {
  model: z.string().min(1),
  stream: z.boolean().optional().nullable(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).optional().nullable(),
  max_tokens: z.number().int().min(0).optional().nullable(),
  max_completion_tokens: z.number().int().min(0).optional().nullable(),
  temperature: z.number().min(0).max(2).optional().nullable(),
  top_p: z.number().gt(0).max(1).optional().nullable(),
  /** not in OpenAI's API; vLLM and llama.cpp accept it too */
  top_k: z.number().int().min(0).optional().nullable(),
  repetition_penalty: z.number().gt(0).max(10).optional().nullable(),
  /** not in OpenAI's API (vLLM and llama.cpp have it): keep tokens at least this fraction as likely as the best */
  min_p: z.number().min(0).max(1).optional().nullable(),
  frequency_penalty: z.number().min(-2).max(2).optional().nullable(),
  presence_penalty: z.number().min(-2).max(2).optional().nullable(),
  /** token id (as a string key) -> bias added to its logit, as OpenAI's */
  logit_bias: z.record(z.string().regex(/^\d{1,9}$/, 'keys are token ids'), z.number().min(-100).max(100)).refine((o) => Object.keys(o).length <= 1024, 'at most 1024 entries').optional().nullable(),
  seed: z.number().int().optional().nullable(),
  stop,
  n: z.literal(1).optional().nullable(),
  user: z.string().optional(),
  /** this server's extension: a session state handed off by a router (base64 blob) and its HMAC */
  kle_session: z.string().optional(),
  kle_session_mac: z.string().optional(),
  /**
   * this server's extension: the prompt's token ids as a router counted them, and the fingerprint
   * of the tokenizer that made them; used instead of tokenizing again when the fingerprint is
   * this server's own
   */
  kle_prompt_ids: z.array(z.number().int().min(0)).optional(),
  kle_tokenizer: z.string().max(64).optional(),
  /**
   * this server's extension: bound each MLA layer's cache to this many tokens (docs/kv-budget.md);
   * at most the server's maxKvBudget. kv_keep_prompt keeps every prompt token.
   */
  kv_budget: z.number().int().min(1).optional().nullable(),
  kv_keep_prompt: z.boolean().optional().nullable(),
  /** which rows fill the budget: 'attention' scores, 'recent' only, or the model's 'learned' head */
  kv_policy: z.enum(['attention', 'recent', 'learned']).optional().nullable(),
};

const textPart = z.object({ type: z.literal('text'), text: z.string() });

export const chatRequest = z.object({
  ...common,
  messages: z
    .array(
      z.object({
        role: z.enum(['system', 'developer', 'user', 'assistant']),
        content: z.union([z.string(), z.array(textPart)]),
        name: z.string().optional(),
      }),
    )
    .min(1),
});

export const completionRequest = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1)]),
});

export type ChatRequest = z.infer<typeof chatRequest>;
export type CompletionRequest = z.infer<typeof completionRequest>;

/** "messages.0.content: Invalid input" from a zod error: the first issue, with its path. */
export function describeIssue(e: z.ZodError): { message: string; param: string | null } {
  const i = e.issues[0];
  if (!i) return { message: 'invalid request', param: null };
  const param = i.path.length ? i.path.join('.') : null;
  return { message: `${param ?? 'body'}: ${i.message}`, param };
}
