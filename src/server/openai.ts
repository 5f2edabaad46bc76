/**
 * The OpenAI routes as a sub-app (mounted at /v1 by createApp): POST /chat/completions and
 * /completions, GET /models. Bodies are size-limited and checked by Hono's body limit and zod
 * validator, unless the router in front already did that and built the prompt (PREPARED).
 */
import { zValidator } from '@hono/zod-validator';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import type { Model } from '../model/model.js';
import { errorResponse } from './errors.js';
import { generate, handoffOf, refusal, type GenerationDeps } from './generation.js';
import { jsonBodyOf } from './middleware.js';
import { buildPromptAsync, minPromptTokens, PREPARED, promptParam, type OpenAIRequest, type PreparedRequest } from './prompt.js';
import { chatRequest, completionRequest, describeIssue } from './schema.js';

function preparedOf(c: Context): PreparedRequest | undefined {
  return (c.env as Record<string, unknown> | undefined)?.[PREPARED] as PreparedRequest | undefined;
}

/** m, except for requests the router prepared */
function unlessPrepared<M extends MiddlewareHandler>(m: M): M {
  return ((c, next) => (preparedOf(c) ? next() : m(c, next))) as M;
}

const invalid = (r: { success: boolean; error?: unknown }) => {
  if (r.success) return undefined;
  const { message, param } = describeIssue(r.error as Parameters<typeof describeIssue>[0]);
  return errorResponse(400, message, 'invalid_request_error', param, 'invalid_value');
};

/** A prompt whose text alone proves it past the prompt limit, answered without tokenizing it. */
function promptTooLong(d: GenerationDeps, r: OpenAIRequest, model: Model): Response | null {
  const atLeast = minPromptTokens(model.tokenizer!, r);
  const limit = Math.min(d.limits.maxPromptTokens, model.config.maxContext ?? Infinity);
  if (atLeast <= limit) return null;
  return errorResponse(400, `the prompt has at least ${atLeast} tokens; this server takes at most ${limit}`, 'invalid_request_error', promptParam(r), 'context_length_exceeded');
}

async function complete(c: Context, d: GenerationDeps, r: OpenAIRequest, ids: number[] | undefined): Promise<Response> {
  const t0 = Date.now();
  const early = refusal(d, r, null, null);
  if (early) return early;
  const model = await d.getModel();
  let prompt = ids;
  // ids a router counted with the same tokenizer: no second tokenization
  const sent = r.body.kle_prompt_ids;
  if (!prompt && sent && model.tokenizer && r.body.kle_tokenizer === model.tokenizer.fingerprint) {
    const V = model.config.vocabSize;
    const bad = sent.findIndex((t) => t >= V);
    if (bad >= 0) return errorResponse(400, `kle_prompt_ids[${bad}] (${sent[bad]}) is outside the vocabulary (0..${V - 1})`, 'invalid_request_error', 'kle_prompt_ids', 'invalid_value');
    prompt = sent;
    c.header('x-kle-prompt-ids', 'used');
  }
  if (!prompt) {
    if (!model.tokenizer) return errorResponse(500, 'the model has no tokenizer', 'server_error');
    const tooLong = promptTooLong(d, r, model);
    if (tooLong) return tooLong;
    try {
      prompt = await buildPromptAsync(model.tokenizer, r);
    } catch (e) {
      return errorResponse(400, `cannot build the prompt: ${(e as Error).message}`, 'invalid_request_error', promptParam(r));
    }
  }
  if (!prompt.length) return errorResponse(400, 'the prompt is empty: there is no token to continue from', 'invalid_request_error', promptParam(r), 'empty_prompt');
  // checked first: nothing may wait between the concurrency check below and the generation's
  // start, which counts itself in before its first await
  const handoff = await handoffOf(d, r);
  if (handoff instanceof Response) return handoff;
  return refusal(d, r, prompt.length, model) ?? generate(c, d, model, r, prompt, handoff, t0);
}

export function openaiRoutes(d: GenerationDeps): Hono {
  const body = unlessPrepared(jsonBodyOf(d.limits.maxBodyBytes));
  return new Hono()
    .get('/models', (c) => c.json({ object: 'list', data: [{ id: d.modelId, object: 'model', created: 0, owned_by: 'kimi-linear-edge' }] }))
    .post('/chat/completions', body, unlessPrepared(zValidator('json', chatRequest, invalid)), (c) => {
      const p = preparedOf(c);
      return complete(c, d, p?.request ?? { kind: 'chat', body: c.req.valid('json') }, p?.ids);
    })
    .post('/completions', body, unlessPrepared(zValidator('json', completionRequest, invalid)), (c) => {
      const p = preparedOf(c);
      return complete(c, d, p?.request ?? { kind: 'completion', body: c.req.valid('json') }, p?.ids);
    });
}
