// The AssemblyScript BPE encoder (as/bpe.ts, src/tokenizer/fast-bpe.ts) gives exactly the ids
// @huggingface/tokenizers gives, with GPT-2's split (two byte-level vocabularies) and with Kimi's
// (a Kimi-format vocabulary of Kimi's size: the first 163,840 ranks of o200k_base from the
// js-tiktoken package, through tiktoken.ts, ignore_merges on), on the whole Brown corpus and on
// text made to break it:
// emoji and other astral characters, CJK, combining marks, lone surrogates, every kind of
// whitespace, digits of many scripts, long runs of one character, added tokens run together,
// and seeded random strings over all of Unicode.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { brownDocuments } from '../../train/prepare.js';
import { tokenizerFromTiktoken } from '../../src/tokenizer/tiktoken.js';
import o200k from 'js-tiktoken/ranks/o200k_base';

const root = packageRoot();
function kimiSize(): { tj: unknown; tc: Record<string, unknown> } {
  const lines: string[] = [];
  for (const line of (o200k as { bpe_ranks: string }).bpe_ranks.split('\n').filter(Boolean)) {
    const [, off, ...toks] = line.split(' ');
    toks.forEach((t, i) => {
      if (Number(off) + i < 163_840) lines.push(`${t} ${Number(off) + i}`);
    });
  }
  return { tj: tokenizerFromTiktoken(lines.join('\n'), {}).tokenizerJson, tc: {} };
}

const fromDir = (dir: string) => () => ({ tj: JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as unknown, tc: JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown> });
const TOKENIZERS: Record<string, () => { tj: unknown; tc: Record<string, unknown> }> = {
  'the default model (GPT-2 split, 2,048)': fromDir(join(root, 'models', 'default')),
  'the random tiny model (GPT-2 split, 512)': fromDir(join(root, 'test', 'fixtures', 'random-tiny')),
  "Kimi's split, 163,840 ranks, ignore_merges": kimiSize,
};

const ADVERSARIAL = [
  '', ' ', '  ', '\n', 'a  b', 'a \n b', '\n\n\nx', 'x\n', 'x \n', ' \t\r\n\u000b\f x',
  "it's I'll we've they're he'd 'S 'st 'll' ''' 're're", '😀👍🏽👨‍👩‍👧 emoji🙂x', '中文字符测试，標點！', '日本語のテキスト', '한국어 텍스트',
  'e\u0301 combining o\u0308\u0304 marks \u0301 alone', '\ud800 lone \udc00 surrogates \udbff', 'a'.repeat(20000), 'ab'.repeat(5000),
  ' '.repeat(3000) + 'x', '\n'.repeat(3000), '1234567890 12 1', '٣٤٥ ۱۲۳ ४५६ ௧௨', '\u00a0nbsp\u2028ls\u2029ps\u3000ideo\ufeffbom',
  'tab\there', '<|im_end|>hello<|im_user|>', 'x<|im_end|><|im_end|>y', '[BOS][BOS] [EOS]', '<|im_end', 'mixed 123abc !!! ... --- ???',
  'Ünïcödé ñandú façade', 'x\u200dy zero\u200bwidth', '\u0000nul\u0001ctl', 'Ⅻ ⅷ ½ ² ₃', '𝕏𝕪𝕫 𝟘𝟙', 'ﬁ ligature', 'İstanbul ǅ ǈ',
];

function randomStrings(n: number, seed: number): string[] {
  let s = seed >>> 0;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
  const pools = [[0x20, 0x7e], [0x80, 0x24f], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff], [0x600, 0x6ff], [0x900, 0x97f], [0x2000, 0x206f], [0x3000, 0x30ff], [0x4e00, 0x4fff], [0xac00, 0xacff], [0xd800, 0xdfff], [0xfe00, 0xffff], [0x1f300, 0x1f6ff], [0x10000, 0x10ffff]];
  return Array.from({ length: n }, () => {
    let out = '';
    const len = 1 + Math.floor(r() * 40);
    for (let i = 0; i < len; i++) {
      const [lo, hi] = pools[Math.floor(r() * pools.length)]!;
      out += r() < 0.3 ? ' ' : String.fromCodePoint(lo! + Math.floor(r() * (hi! - lo! + 1)));
    }
    return out;
  });
}

describe('the AssemblyScript BPE encoder', () => {
  for (const [name, make] of Object.entries(TOKENIZERS)) {
    const { tj, tc } = make();
    const hf = new HfTokenizer(tj as object, tc);
    const ours = new Tokenizer(tj, tc);
    const want = (t: string) => hf.encode(t, { add_special_tokens: false }).ids;

    it(`${name}: is used, and equals @huggingface/tokenizers on all 500 Brown documents`, () => {
      expect(ours.fastEncoder).toBe(true);
      const docs = brownDocuments();
      expect(docs.length).toBe(500);
      let tokens = 0;
      for (const d of docs) {
        const got = ours.encode(d.text);
        expect(got, d.name).toEqual(want(d.text));
        tokens += got.length;
      }
      expect(tokens).toBeGreaterThan(500_000);
    }, 120_000);

    it(`${name}: equals it on adversarial text and 3,000 random strings over all of Unicode`, () => {
      for (const t of ADVERSARIAL) expect(ours.encode(t), JSON.stringify(t.slice(0, 60))).toEqual(want(t));
      for (const t of randomStrings(3000, 7)) expect(ours.encode(t), JSON.stringify(t)).toEqual(want(t));
    }, 60_000);
  }
});

describe('encodeAsync: a long text in pieces, the event loop turning between them', () => {
  it('gives encode()\'s ids for GPT-2\'s split and Kimi\'s, and lets timers run meanwhile', async () => {
    const text = brownDocuments().map((d) => d.text).join('\n') + ' ' + ADVERSARIAL.join(' x ');
    for (const make of [TOKENIZERS['the default model (GPT-2 split, 2,048)']!, TOKENIZERS["Kimi's split, 163,840 ranks, ignore_merges"]!]) {
      const { tj, tc } = make();
      const tok = new Tokenizer(tj, tc);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 0);
      const chunked = await tok.encodeAsync(text, 1 << 16);
      clearInterval(timer);
      expect(chunked).toEqual(tok.encode(text));
      // about 90 pieces of 64 K characters: the interval ran between them
      expect(ticks).toBeGreaterThan(20);
    }
  }, 60_000);
});

describe('decode over the byte table: @huggingface/tokenizers\' text', () => {
  it('for encoded Brown text, random id sequences (specials, split UTF-8, unknown ids), with and without skipping specials and cleaning up spaces', () => {
    const docs = brownDocuments().slice(0, 60).map((d) => d.text);
    for (const [name, make] of Object.entries(TOKENIZERS)) {
      const { tj, tc } = make();
      for (const cleanUp of [false, true]) {
        const cfg = { ...tc, clean_up_tokenization_spaces: cleanUp };
        const hf = new HfTokenizer(tj as object, cfg);
        const ours = new Tokenizer(tj, cfg);
        const V = (hf as unknown as { model: { vocab: unknown[] } }).model.vocab.length;
        let s = 99;
        const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
        const cases = [...docs.map((d) => ours.encode(d)), ...Array.from({ length: 300 }, () => Array.from({ length: 1 + Math.floor(r() * 30) }, () => Math.floor(r() * (V + 3))))];
        for (const ids of cases) {
          for (const skip of [true, false]) expect(ours.decode(ids, skip), `${name} cleanUp ${cleanUp} skip ${skip} ${ids.slice(0, 8)}`).toBe(hf.decode(ids, { skip_special_tokens: skip }));
        }
      }
    }
  }, 120_000);
});

describe('the encoder on odd vocabularies, as @huggingface/tokenizers reads them', () => {
  it('a repeated merge takes its last rank; a merge whose result the vocabulary lacks and a byte it lacks are dropped', () => {
    const { tj, tc } = TOKENIZERS['the random tiny model (GPT-2 split, 512)']!();
    const base = tj as { model: { vocab: Record<string, number>; merges: string[] } };
    const vocab = { ...base.model.vocab };
    delete vocab['x']; // a byte token gone
    delete vocab['Ġthe']; // a merge's result gone
    const merges = [...base.model.merges, base.model.merges[0]!, base.model.merges[3]!];
    const odd = { ...base, model: { ...base.model, vocab, merges } };
    const hf = new HfTokenizer(odd as object, tc);
    const ours = new Tokenizer(odd, tc);
    expect(ours.fastEncoder).toBe(true);
    for (const t of ['the theory of the thing', 'xylophone box', 'The quick brown fox jumps over the lazy dog', ...ADVERSARIAL.slice(0, 20)]) expect(ours.encode(t), t).toEqual(hf.encode(t, { add_special_tokens: false }).ids);
  });
});
