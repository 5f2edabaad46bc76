/**
 * One prompt builder for the app and the router: an OpenAI request body is checked against its
 * endpoint's schema, its messages go through the model's chat template, and the text through
 * the tokenizer. The router hands what it built to the edge app (PREPARED in the app's env), so
 * a request that stays at the edge is parsed and tokenized once.
 */
import type { ChatMessage, Tokenizer } from '../tokenizer/tokenizer.js';
import { chatRequest, completionRequest, describeIssue, type ChatRequest, type CompletionRequest } from './schema.js';

export type Endpoint = 'chat' | 'completion';

/** A checked request of one endpoint. */
export type OpenAIRequest = { kind: 'chat'; body: ChatRequest } | { kind: 'completion'; body: CompletionRequest };

/** A request with its prompt's token ids, as the router hands it to the edge app. */
export interface PreparedRequest {
  readonly request: OpenAIRequest;
  readonly ids: number[];
}

/** The key of a PreparedRequest in the env the router passes to the edge app's fetch. */
export const PREPARED = 'kle.prepared';

/** The endpoint of a path, or null for other routes. */
export function endpointOf(path: string): Endpoint | null {
  return path.endsWith('/chat/completions') ? 'chat' : path.endsWith('/completions') ? 'completion' : null;
}

/** The schema of an endpoint's body. */
export function schemaOf(kind: Endpoint): typeof chatRequest | typeof completionRequest {
  return kind === 'chat' ? chatRequest : completionRequest;
}

/** Checks a parsed JSON body against its endpoint's schema. */
export function parseRequest(kind: Endpoint, body: unknown): { ok: true; request: OpenAIRequest } | { ok: false; message: string; param: string | null } {
  const r = schemaOf(kind).safeParse(body);
  if (!r.success) return { ok: false, ...describeIssue(r.error) };
  return { ok: true, request: kind === 'chat' ? { kind, body: r.data as ChatRequest } : { kind, body: r.data as CompletionRequest } };
}

/** The parameter a prompt error names. */
export function promptParam(r: OpenAIRequest): 'messages' | 'prompt' {
  return r.kind === 'chat' ? 'messages' : 'prompt';
}

/** The prompt's token ids: chat messages through the model's chat template, or the completion prompt as is. Throws when the template or tokenizer refuses the input. */
export function buildPrompt(tok: Tokenizer, r: OpenAIRequest): number[] {
  if (r.kind === 'completion') {
    const p = r.body.prompt;
    return tok.encode(typeof p === 'string' ? p : p[0]!);
  }
  return tok.encode(tok.applyChatTemplate(chatMessages(r.body)));
}

/** buildPrompt without holding the event loop over a long prompt (Tokenizer.encodeAsync). */
export async function buildPromptAsync(tok: Tokenizer, r: OpenAIRequest): Promise<number[]> {
  if (r.kind === 'completion') {
    const p = r.body.prompt;
    return tok.encodeAsync(typeof p === 'string' ? p : p[0]!);
  }
  return tok.encodeAsync(tok.applyChatTemplate(chatMessages(r.body)));
}

/** A chat request's messages in the chat template's terms. */
function chatMessages(body: ChatRequest): ChatMessage[] {
  return body.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
}

/**
 * A lower bound on the prompt's tokens from its text alone, without tokenizing (a megabyte of
 * text holds the event loop for seconds): every token stands for at most `maxTokenBytes` bytes,
 * and a string's UTF-16 length is at most its UTF-8 length.
 */
export function minPromptTokens(tok: Tokenizer, r: OpenAIRequest): number {
  const texts = r.kind === 'chat' ? r.body.messages.map((m) => (typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''))) : [typeof r.body.prompt === 'string' ? r.body.prompt : r.body.prompt[0]!];
  let units = 0;
  for (const t of texts) units += t.length;
  return Math.floor(units / tok.maxTokenBytes);
}

/**
 * An upper bound on the prompt's tokens without tokenizing: a token stands for at least one
 * byte of the text the chat template renders (special tokens included), so its UTF-8 length
 * bounds the count. Throws where buildPrompt would (a template that refuses the messages).
 */
export function maxPromptTokens(tok: Tokenizer, r: OpenAIRequest): number {
  const text = r.kind === 'completion' ? (typeof r.body.prompt === 'string' ? r.body.prompt : r.body.prompt[0]!) : tok.applyChatTemplate(chatMessages(r.body));
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const pair = c >= 0xd800 && c < 0xdc00 && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    bytes += c < 0x80 ? 1 : c < 0x800 ? 2 : pair ? 4 : 3; // a lone surrogate encodes as U+FFFD: 3
    if (pair) i++;
  }
  return bytes;
}
