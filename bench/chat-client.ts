// The client side of the GPU benches (bench/gpu-node.ts, bench/gpu-route.ts): long prompts of a
// measured token count, and one streamed /v1/chat/completions request timed as a user sees it.
import type { Tokenizer } from '../src/tokenizer/tokenizer.js';

const WORDS = ['kernel', 'state', 'latent', 'decode', 'chunk', 'router', 'edge', 'gate', 'expert', 'cache', 'token', 'delta'];

/**
 * A prompt of at least n tokens of `tok`: numbered lines of varied words; `salt` changes every
 * line, so concurrent prompts share no prefix (a prefix cache would otherwise serve them).
 */
export function promptOf(tok: Tokenizer, n: number, salt = 0): { text: string; tokens: number } {
  const lines: string[] = [];
  let est = 0, block: string[] = [];
  for (let i = 0; est < n; i++) {
    const j = i + salt * 7919;
    block.push(`${salt}.${i}: ${WORDS[j % 12]} ${WORDS[(j * 7) % 12]} ${WORDS[(j * 5 + 3) % 12]} ${(j * 2654435761) % 1000}.`);
    // counted a block at a time (a whole-text count each time would be quadratic at 1M tokens)
    if (block.length === 32) {
      est += tok.encode(`${block.join('\n')}\n`).length;
      lines.push(...block);
      block = [];
    }
  }
  lines.push(...block);
  const text = `${lines.join('\n')}\nSummarize the list above.`;
  return { text, tokens: tok.encode(text).length };
}

export interface ChatRun {
  label: string;
  promptChars: number;
  promptTokens: number;
  /** ms from sending the request to the first content event */
  ttftMs: number;
  completionTokens: number;
  /** completion tokens after the first over the time between the first and the last */
  decodeTokPerS: number;
  totalMs: number;
  /** the router's x-kle-route header (edge, gpu:<name>), if any */
  route: string | null;
  /** performance.now() of the request, its first and its last content event */
  t0: number;
  first: number;
  last: number;
  /** performance.now() of every content event (a token whose bytes end no character sends none) */
  times: number[];
}

/** One streamed chat completion, greedy, usage included; throws on an HTTP or stream error. */
export async function streamChat(url: string, label: string, text: string, o: { maxTokens: number; model?: string }): Promise<ChatRun> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: o.model ?? 'kimi-linear-default', stream: true, stream_options: { include_usage: true }, max_tokens: o.maxTokens, temperature: 0, messages: [{ role: 'user', content: text }] }),
  });
  if (!res.ok || !res.body) throw new Error(`${label}: HTTP ${res.status}: ${await res.text()}`);
  const times: number[] = [];
  let first = 0, last = 0, usage: { prompt_tokens: number; completion_tokens: number } | null = null, buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6)) as { choices: { delta?: { content?: string } }[]; usage?: { prompt_tokens: number; completion_tokens: number }; error?: unknown };
      if (j.error) throw new Error(`${label}: ${JSON.stringify(j.error)}`);
      if (j.usage) usage = j.usage;
      if (j.choices[0]?.delta?.content !== undefined) {
        const now = performance.now();
        if (!first) first = now;
        last = now;
        times.push(now);
      }
    }
  }
  if (!usage) throw new Error(`${label}: no usage in the stream`);
  return {
    label, promptChars: text.length, promptTokens: usage.prompt_tokens, ttftMs: first - t0, completionTokens: usage.completion_tokens,
    decodeTokPerS: usage.completion_tokens > 1 ? (usage.completion_tokens - 1) / ((last - first) / 1000) : NaN,
    totalMs: performance.now() - t0, route: res.headers.get('x-kle-route'), t0, first, last, times,
  };
}
