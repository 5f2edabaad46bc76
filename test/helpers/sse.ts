/** Reads an SSE response into its data payloads (JSON parsed, or the literal [DONE]). */
export async function readSse(res: Response): Promise<(Record<string, unknown> | '[DONE]')[]> {
  const text = await res.text();
  const out: (Record<string, unknown> | '[DONE]')[] = [];
  for (const block of text.split('\n\n')) {
    const line = block.split('\n').find((l) => l.startsWith('data: '));
    if (!line) continue;
    const data = line.slice(6);
    out.push(data === '[DONE]' ? '[DONE]' : (JSON.parse(data) as Record<string, unknown>));
  }
  return out;
}

/** The text of a streamed chat or completion. */
export function sseText(events: (Record<string, unknown> | '[DONE]')[]): string {
  let s = '';
  for (const e of events) {
    if (e === '[DONE]') continue;
    const c = (e.choices as { delta?: { content?: string }; text?: string }[] | undefined)?.[0];
    s += c?.delta?.content ?? c?.text ?? '';
  }
  return s;
}
