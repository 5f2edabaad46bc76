/**
 * A GGUF's embedded vocabulary (tokenizer.ggml.*, BPE as llama.cpp's "gpt2" model) as HF
 * tokenizer files, so the same tokenizer library runs it. Pre-tokenizers: "kimi-k2" (Kimi's
 * tiktoken split pattern) and "gpt-2"/"default" (GPT-2's byte-level pattern).
 */
import type { GgufValue } from '../formats/gguf.js';
import { addedToken, byteLevelBpeJson, GPT2_PRE_TOKENIZER, kimiPreTokenizer } from './byte-level.js';
import { TokenizerError } from './tokenizer.js';

export function tokenizerFromGguf(md: ReadonlyMap<string, GgufValue>): { tokenizerJson: object; tokenizerConfig: Record<string, unknown> } | null {
  const model = md.get('tokenizer.ggml.model');
  if (model === undefined) return null;
  if (model !== 'gpt2') throw new TokenizerError(`tokenizer.ggml.model "${String(model)}" is not supported (gpt2 BPE only)`);
  const tokens = md.get('tokenizer.ggml.tokens');
  const types = md.get('tokenizer.ggml.token_type');
  const merges = md.get('tokenizer.ggml.merges');
  if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === 'string')) throw new TokenizerError('tokenizer.ggml.tokens is not a list of strings');
  if (!Array.isArray(merges) || !merges.every((t) => typeof t === 'string')) throw new TokenizerError('tokenizer.ggml.merges is not a list of strings');
  if (types !== undefined && (!Array.isArray(types) || types.length !== tokens.length)) throw new TokenizerError('tokenizer.ggml.token_type does not match the token list');
  const pre = md.get('tokenizer.ggml.pre') ?? 'default';
  let preTokenizer: object;
  if (pre === 'kimi-k2') preTokenizer = kimiPreTokenizer();
  else if (pre === 'gpt-2' || pre === 'default') preTokenizer = GPT2_PRE_TOKENIZER;
  else throw new TokenizerError(`tokenizer.ggml.pre "${String(pre)}" is not supported (kimi-k2, gpt-2)`);
  const vocab: Record<string, number> = {};
  const added: object[] = [];
  (tokens as string[]).forEach((t, i) => {
    const ty = types ? Number((types as GgufValue[])[i]) : 1;
    if (ty === 3 || ty === 4) added.push(addedToken(i, t, ty === 3));
    else if (ty !== 5) vocab[t] = i;
  });
  const byId = (key: string) => {
    const v = md.get(key);
    return v === undefined ? null : ((tokens as string[])[Number(v)] ?? null);
  };
  const tokenizerJson = byteLevelBpeJson({ vocab, merges: merges as string[], added, preTokenizer, ignoreMerges: pre === 'kimi-k2' });
  const tpl = md.get('tokenizer.chat_template');
  return {
    tokenizerJson,
    tokenizerConfig: { bos_token: byId('tokenizer.ggml.bos_token_id'), eos_token: byId('tokenizer.ggml.eos_token_id'), ...(typeof tpl === 'string' ? { chat_template: tpl } : {}) },
  };
}
