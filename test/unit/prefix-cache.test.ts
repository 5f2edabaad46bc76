// The prefix cache's radix tree against the plain scan it replaced (kept here as the reference):
// the same answers and the same least-recently-used evictions for random puts and lookups.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PrefixCache } from '../../src/server/prefix-cache.js';

/** every saved state compared with the prompt: simple and slow */
class ScanCache {
  private entries: { tokens: number[]; blob: Uint8Array }[] = [];
  constructor(readonly maxBytes: number) {}
  put(tokens: readonly number[], blob: Uint8Array): void {
    if (!tokens.length || blob.length > this.maxBytes) return;
    this.entries = this.entries.filter((e) => !(e.tokens.length === tokens.length && e.tokens.every((t, i) => t === tokens[i])));
    this.entries.push({ tokens: [...tokens], blob });
    let bytes = this.entries.reduce((a, e) => a + e.blob.length, 0);
    while (bytes > this.maxBytes) bytes -= this.entries.shift()!.blob.length;
  }
  longestPrefix(tokens: readonly number[]): { tokens: number; blob: Uint8Array } | null {
    let best: (typeof this.entries)[number] | null = null;
    for (const e of this.entries) if (e.tokens.length <= tokens.length && (!best || e.tokens.length > best.tokens.length) && e.tokens.every((t, i) => t === tokens[i])) best = e;
    if (!best) return null;
    this.entries = [...this.entries.filter((e) => e !== best), best];
    return { tokens: best.tokens.length, blob: best.blob };
  }
  get size(): number {
    return this.entries.length;
  }
}

describe('the prefix cache', () => {
  it('answers and evicts as a scan of every entry would', () => {
    const seq = fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 12 });
    const op = fc.oneof(fc.record({ put: seq, bytes: fc.integer({ min: 1, max: 40 }) }), fc.record({ get: seq }));
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), fc.integer({ min: 10, max: 120 }), (ops, max) => {
        const a = new PrefixCache(max), b = new ScanCache(max);
        ops.forEach((o, i) => {
          if ('put' in o) {
            const blob = new Uint8Array(o.bytes).fill(i);
            a.put(o.put, blob);
            b.put(o.put, blob);
          } else expect(a.longestPrefix(o.get)).toEqual(b.longestPrefix(o.get));
          expect(a.size).toBe(b.size);
        });
      }),
      { numRuns: 500 },
    );
  });

  it('finds the longest saved prefix of a long prompt among many', () => {
    const c = new PrefixCache();
    const base = Array.from({ length: 4000 }, (_, i) => i % 97);
    for (let n = 100; n <= 4000; n += 100) c.put(base.slice(0, n), new Uint8Array([n % 256]));
    c.put([...base.slice(0, 250), 5000], new Uint8Array([1]));
    expect(c.longestPrefix([...base.slice(0, 1234), 7])).toEqual({ tokens: 1200, blob: new Uint8Array([1200 % 256]) });
    expect(c.longestPrefix([...base.slice(0, 250), 5000, 1])?.tokens).toBe(251);
    expect(c.longestPrefix([1, 2, 3])).toBeNull();
  });
});
