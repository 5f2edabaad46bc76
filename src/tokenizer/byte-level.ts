/** GPT-2's byte -> printable-character table, as byte-level BPE vocabularies spell bytes. */
export function byteToUnicode(): string[] {
  const keep = new Set<number>();
  for (let b = 33; b <= 126; b++) keep.add(b);
  for (let b = 161; b <= 172; b++) keep.add(b);
  for (let b = 174; b <= 255; b++) keep.add(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(keep.has(b) ? b : 256 + extra++);
  return out;
}

/** GPT-2's byte-level pre-tokenizer (its split pattern, then bytes as characters). */
export const GPT2_PRE_TOKENIZER = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true } as const;

/** Kimi's pre-tokenization pattern (tokenization_kimi.py), Oniguruma syntax as tokenizers uses. */
export const KIMI_PATTERN = [
  '[\\p{Han}]+',
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  '\\p{N}{1,3}',
  ' ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*',
  '\\s*[\\r\\n]+',
  '\\s+(?!\\S)',
  '\\s+',
].join('|');

export function kimiPreTokenizer(): object {
  return {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: KIMI_PATTERN }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    ],
  };
}

/** An entry of tokenizer.json's added_tokens. */
export function addedToken(id: number, content: string, special: boolean) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special };
}

/**
 * An HF tokenizer.json for a byte-level BPE vocabulary: the one layout the default model, Kimi's
 * tiktoken files and GGUF vocabularies all come to.
 */
export function byteLevelBpeJson(o: { vocab: Record<string, number>; merges: string[]; added: object[]; preTokenizer: object; ignoreMerges: boolean }): object {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: o.added,
    normalizer: null,
    pre_tokenizer: o.preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: o.ignoreMerges, vocab: o.vocab, merges: o.merges },
  };
}
