/**
 * Kimi's tiktoken vocabulary (tiktoken.model: one "base64(token bytes) rank" per line, special
 * tokens after the last rank, named by tokenizer_config.json) as an HF byte-level BPE
 * tokenizer. tiktoken keeps no merge list; each token's merge is recovered by running BPE on its
 * bytes with the ranks below its own (the pair it ends as is the merge that made it).
 */
import { addedToken, byteLevelBpeJson, byteToUnicode, kimiPreTokenizer } from './byte-level.js';
import { TokenizerError } from './tokenizer.js';

/** Special tokens after the base vocabulary (Kimi reserves 256 + 2). */
const RESERVED_SPECIALS = 258;

function fromBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function tokenizerFromTiktoken(model: string, config: Record<string, unknown>): { tokenizerJson: object; tokenizerConfig: Record<string, unknown> } {
  // latin1 strings as byte keys: one char per byte
  const ranks = new Map<string, number>();
  const lines = model.split('\n');
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    const m = /^([A-Za-z0-9+/=]+) (\d+)$/.exec(line.trim());
    if (!m) throw new TokenizerError(`tiktoken.model line ${i + 1} is not "base64 rank"`);
    let bytes: Uint8Array;
    try {
      bytes = fromBase64(m[1]!);
    } catch {
      throw new TokenizerError(`tiktoken.model line ${i + 1}: bad base64`);
    }
    const key = String.fromCharCode(...bytes);
    if (ranks.has(key)) throw new TokenizerError(`tiktoken.model line ${i + 1}: token repeated`);
    ranks.set(key, Number(m[2]));
  });
  const n = ranks.size;
  const seen = new Set(ranks.values());
  for (let r = 0; r < n; r++) if (!seen.has(r)) throw new TokenizerError(`tiktoken.model: ranks are not 0..${n - 1} (${r} is missing)`);
  const b2u = byteToUnicode();
  const spell = (key: string) => Array.from(key, (c) => b2u[c.charCodeAt(0)]!).join('');
  const vocab: Record<string, number> = {};
  const merges: [number, string][] = [];
  for (const [key, rank] of ranks) {
    vocab[spell(key)] = rank;
    if (key.length < 2) continue;
    let parts = Array.from(key);
    for (;;) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = ranks.get(parts[i]! + parts[i + 1]!);
        if (r !== undefined && r < rank && r < bestRank) [best, bestRank] = [i, r];
      }
      if (best < 0) break;
      parts = [...parts.slice(0, best), parts[best]! + parts[best + 1]!, ...parts.slice(best + 2)];
    }
    if (parts.length !== 2) throw new TokenizerError(`tiktoken.model: token of rank ${rank} cannot be built from two lower-ranked tokens`);
    merges.push([rank, `${spell(parts[0]!)} ${spell(parts[1]!)}`]);
  }
  merges.sort((a, b) => a[0] - b[0]);
  const decoder = (config.added_tokens_decoder ?? {}) as Record<string, { content?: string }>;
  const added = Array.from({ length: RESERVED_SPECIALS }, (_, i) => {
    const id = n + i;
    return addedToken(id, decoder[String(id)]?.content ?? `<|reserved_token_${id}|>`, true);
  });
  // tiktoken takes a whole pre-token when it is in the vocabulary: ignore_merges does that
  const tokenizerJson = byteLevelBpeJson({ vocab, merges: merges.map(([, m]) => m), added, preTokenizer: kimiPreTokenizer(), ignoreMerges: true });
  return { tokenizerJson, tokenizerConfig: config };
}
