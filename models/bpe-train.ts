// A small byte-level BPE trainer: builds the tokenizer.json of the default model (from the Brown
// corpus's training split, train/prepare.ts) and of the random test fixture (from
// models/corpus.txt). Training is a build step; tokenizing at run time is done by
// @huggingface/tokenizers from the files this writes.

import { addedToken, byteLevelBpeJson, byteToUnicode, GPT2_PRE_TOKENIZER } from '../src/tokenizer/byte-level.js';
import { TINY_CONFIG } from '../src/weights/synthetic.js';

export { byteToUnicode };

// GPT-2's pre-tokenization pattern (what the ByteLevel pre-tokenizer applies)
const WORDS = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/**
 * Learns `nMerges` merges; ties go to the lexicographically first pair, so it is reproducible.
 * Pair counts are kept up to date incrementally (only the words holding the merged pair are
 * re-counted), so a corpus of a million words trains in seconds rather than hours.
 */
export function trainBpe(text: string, nMerges: number): { merges: [string, string][]; tokens: string[] } {
  const b2u = byteToUnicode();
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const w of text.match(WORDS) ?? []) {
    const sym = [...enc.encode(w)].map((b) => b2u[b]!).join(' ');
    counts.set(sym, (counts.get(sym) ?? 0) + 1);
  }
  const words = [...counts.entries()].map(([s, n]) => ({ syms: s.split(' '), n }));
  const pairs = new Map<string, number>();
  const where = new Map<string, Set<number>>();
  const count = (wi: number, sign: 1 | -1) => {
    const { syms, n } = words[wi]!;
    for (let i = 0; i + 1 < syms.length; i++) {
      const k = `${syms[i]} ${syms[i + 1]}`;
      const c = (pairs.get(k) ?? 0) + sign * n;
      if (c) pairs.set(k, c);
      else pairs.delete(k);
      if (sign > 0) {
        let s = where.get(k);
        if (!s) where.set(k, (s = new Set()));
        s.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) count(wi, 1);
  const merges: [string, string][] = [];
  const tokens: string[] = [];
  for (let m = 0; m < nMerges; m++) {
    let best = '', bestN = 0;
    for (const [k, n] of pairs) if (n > bestN || (n === bestN && k < best)) [best, bestN] = [k, n];
    if (!bestN) break;
    const [a, b] = best.split(' ') as [string, string];
    merges.push([a, b]);
    tokens.push(a + b);
    for (const wi of where.get(best) ?? []) {
      const w = words[wi]!;
      if (!w.syms.some((s, i) => s === a && w.syms[i + 1] === b)) continue;
      count(wi, -1);
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w.syms[i]!);
      }
      w.syms = out;
      count(wi, 1);
    }
    where.delete(best);
  }
  return { merges, tokens };
}

/** Special tokens after the 256 byte tokens, Kimi's names; eos is <|im_end|> as in Kimi's config. */
const SPECIALS = ['[BOS]', '<|im_end|>', '[PAD]', '<|im_user|>', '<|im_assistant|>', '<|im_system|>', '<|im_middle|>', '[EOS]'];

/** Kimi's chat format: <|im_ROLE|>ROLE<|im_middle|>CONTENT<|im_end|>, assistant turn opened last. */
const CHAT_TEMPLATE =
  "{%- for message in messages -%}" +
  "{%- if message['role'] == 'system' -%}<|im_system|>system<|im_middle|>" +
  "{%- elif message['role'] == 'user' -%}<|im_user|>user<|im_middle|>" +
  "{%- else -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}" +
  "{{ message['content'] }}<|im_end|>" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}";

/**
 * tokenizer.json and tokenizer_config.json for a byte-level BPE of `vocabSize` tokens learned from
 * `corpus`: 256 byte tokens, Kimi's special tokens, then the merges.
 */
export function tokenizerFiles(vocabSize: number, corpus: string): { tokenizer: string; tokenizerConfig: string } {
  const { merges, tokens } = trainBpe(corpus, vocabSize - 256 - SPECIALS.length);
  const vocab: Record<string, number> = {};
  byteToUnicode().forEach((ch, i) => (vocab[ch] = i));
  tokens.forEach((t, i) => (vocab[t] = 256 + SPECIALS.length + i));
  const added = SPECIALS.map((content, i) => addedToken(256 + i, content, true));
  const tokenizer = byteLevelBpeJson({ vocab, merges: merges.map(([a, b]) => `${a} ${b}`), added, preTokenizer: GPT2_PRE_TOKENIZER, ignoreMerges: false });
  const tokenizerConfig = {
    bos_token: '[BOS]',
    eos_token: '<|im_end|>',
    pad_token: '[PAD]',
    model_max_length: TINY_CONFIG.model_max_length,
    clean_up_tokenization_spaces: false,
    chat_template: CHAT_TEMPLATE,
    added_tokens_decoder: Object.fromEntries(added.map((t) => [String(t.id), { content: t.content, special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }])),
  };
  return { tokenizer: JSON.stringify(tokenizer) + '\n', tokenizerConfig: JSON.stringify(tokenizerConfig, null, 2) + '\n' };
}

