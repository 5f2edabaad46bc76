import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { byteToUnicode } from '../../src/tokenizer/byte-level.js';
import { tokenizerFromTiktoken } from '../../src/tokenizer/tiktoken.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { loadModel } from '../../src/model/load.js';
import { sourceFromFiles } from '../../src/formats/source.js';
import { allBackends, tinyDir } from '../helpers/tiny-model.js';

// A tiktoken.model made from the default tokenizer (byte tokens, then its merged tokens in
// merge order, ranks contiguous), with Kimi's special-token layout after the base vocabulary.
const tj = JSON.parse(readFileSync(join(tinyDir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges: string[] } };
const u2b = new Map(byteToUnicode().map((c, b) => [c, b]));
const toB64 = (spelled: string) => btoa(String.fromCharCode(...Array.from(spelled, (c) => u2b.get(c)!)));
const entries = Object.entries(tj.model.vocab).sort((a, b) => a[1] - b[1]);
const lines = entries.map(([s], rank) => `${toB64(s)} ${rank}`);
const nBase = entries.length;
const config = {
  bos_token: '[BOS]',
  eos_token: '<|im_end|>',
  added_tokens_decoder: { [nBase]: { content: '[BOS]' }, [nBase + 1]: { content: '<|im_end|>' }, [nBase + 3]: { content: '<|im_user|>' } },
};

describe("Kimi's tiktoken vocabulary", () => {
  const t = tokenizerFromTiktoken(lines.join('\n') + '\n', config);

  it('recovers the merge list from the ranks alone', () => {
    expect((t.tokenizerJson as { model: { merges: string[] } }).model.merges).toEqual(tj.model.merges);
  });

  it('tokenizes like the BPE it came from, splits with Kimi\'s pattern, round-trips text', () => {
    const kimi = new Tokenizer(t.tokenizerJson, t.tokenizerConfig);
    const hf = new Tokenizer(tj, {});
    const text = 'the quick brown fox jumps over the lazy dog';
    const spell = (tok: Tokenizer, ids: number[]) => ids.map((i) => tok.decode([i]));
    expect(spell(kimi, kimi.encode(text))).toEqual(spell(hf, hf.encode(text)));
    // \p{N}{1,3}: digits are split in threes before BPE
    const pieces = kimi.encode('1234567').map((i) => kimi.decode([i]));
    const prefixes = pieces.map((_, i) => pieces.slice(0, i + 1).join(''));
    expect(prefixes).toContain('123');
    expect(prefixes).toContain('123456');
    for (const s of ['Hello, World! 你好，世界 ünïcödé 🙂\n\ttabs', "It's   spaced\r\n"]) expect(kimi.decode(kimi.encode(s))).toBe(s);
    expect(kimi.encode('<|im_user|>hi<|im_end|>')[0]).toBe(nBase + 3);
    expect(kimi.decode([nBase + 5], false)).toBe(`<|reserved_token_${nBase + 5}|>`);
  });

  it('refuses a malformed file', () => {
    expect(() => tokenizerFromTiktoken('abc\n', {})).toThrow(/line 1 is not "base64 rank"/);
    expect(() => tokenizerFromTiktoken('YQ== 0\nYg== 2\n', {})).toThrow(/ranks are not 0\.\.1/);
  });

  it('loadModel takes tiktoken.model when there is no tokenizer.json', async () => {
    const [b] = await allBackends();
    const files = Object.fromEntries(['config.json', 'model.safetensors'].map((f) => [f, new Uint8Array(readFileSync(join(tinyDir, f)))]));
    const m = await loadModel(sourceFromFiles({ ...files, 'tiktoken.model': lines.join('\n'), 'tokenizer_config.json': JSON.stringify(config) }), { backend: b! });
    expect(m.tokenizer!.decode(m.tokenizer!.encode('hello world'))).toBe('hello world');
  });
});
