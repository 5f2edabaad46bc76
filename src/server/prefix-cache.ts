/**
 * Saved session states keyed by the prompt tokens they hold, so a conversation's next turn
 * resumes after its shared prefix instead of prefilling it again, and so a conversation that
 * outgrows the edge can move to a GPU node with its state. Least recently used entries go first
 * once the byte budget is spent.
 */

interface Entry {
  tokens: number[];
  blob: Uint8Array;
}

export class PrefixCache {
  private entries: Entry[] = [];
  private bytes = 0;

  constructor(readonly maxBytes = 64 << 20) {}

  put(tokens: readonly number[], blob: Uint8Array): void {
    if (!tokens.length || blob.length > this.maxBytes) return; // no prefix of anything to resume
    this.entries = this.entries.filter((e) => !(e.tokens.length === tokens.length && e.tokens.every((t, i) => t === tokens[i])));
    this.entries.push({ tokens: [...tokens], blob });
    this.bytes = this.entries.reduce((a, e) => a + e.blob.length, 0);
    while (this.bytes > this.maxBytes) this.bytes -= this.entries.shift()!.blob.length;
  }

  /** The saved state whose tokens are the longest prefix of `tokens` (at least one token). */
  longestPrefix(tokens: readonly number[]): { tokens: number; blob: Uint8Array } | null {
    let best: Entry | null = null;
    for (const e of this.entries) {
      if (e.tokens.length > tokens.length || (best && e.tokens.length <= best.tokens.length)) continue;
      if (e.tokens.every((t, i) => t === tokens[i])) best = e;
    }
    if (!best) return null;
    // most recently used last
    this.entries = [...this.entries.filter((e) => e !== best), best];
    return { tokens: best.tokens.length, blob: best.blob };
  }

  get size(): number {
    return this.entries.length;
  }
}
