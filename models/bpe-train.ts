// A small byte-level BPE trainer: builds the default model's tokenizer.json from the text in
// models/corpus.txt. Training lives here (a build step); tokenizing at run time is done by
// @huggingface/tokenizers from the files this writes.

import { byteToUnicode } from '../src/tokenizer/byte-level.js';

export { byteToUnicode };

// GPT-2's pre-tokenization pattern (what the ByteLevel pre-tokenizer applies)
const WORDS = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Learns `nMerges` merges; ties go to the lexicographically first pair, so it is reproducible. */
export function trainBpe(text: string, nMerges: number): { merges: [string, string][]; tokens: string[] } {
  const b2u = byteToUnicode();
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const w of text.match(WORDS) ?? []) {
    const sym = [...enc.encode(w)].map((b) => b2u[b]!).join(' ');
    counts.set(sym, (counts.get(sym) ?? 0) + 1);
  }
  let words = [...counts.entries()].map(([s, n]) => ({ syms: s.split(' '), n }));
  const merges: [string, string][] = [];
  const tokens: string[] = [];
  for (let m = 0; m < nMerges; m++) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of words)
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = `${syms[i]} ${syms[i + 1]}`;
        pairs.set(k, (pairs.get(k) ?? 0) + n);
      }
    let best = '', bestN = 0;
    for (const [k, n] of pairs) if (n > bestN || (n === bestN && k < best)) [best, bestN] = [k, n];
    if (!bestN) break;
    const [a, b] = best.split(' ') as [string, string];
    merges.push([a, b]);
    tokens.push(a + b);
    words = words.map(({ syms, n }) => {
      const out: string[] = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] === a && syms[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(syms[i]!);
      }
      return { syms: out, n };
    });
  }
  return { merges, tokens };
}
