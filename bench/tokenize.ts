// npm run bench:tokenize [-- --mb 2]
// Encoding English (the Brown corpus, the first MB of its documents) in one thread: this
// runtime's AssemblyScript encoder (as/bpe.ts) against @huggingface/tokenizers (what the runtime
// used before) and js-tiktoken, on the same text, vocabularies and pattern, in the same run. Two
// vocabularies: the default model's (2,048 tokens) and one of Kimi's size (163,840 ranks: the first
// 163,840 of o200k_base from the js-tiktoken package, MIT, as tiktoken ranks and as an HF
// byte-level BPE), split with GPT-2's pattern; and the large vocabulary as a Kimi tokenizer is
// (Kimi's pattern, tiktoken's whole-piece rule). MB/s and tokens/s, medians of 5. Writes
// bench/results/tokenize-<machine>.json.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Tiktoken } from 'js-tiktoken/lite';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { tokenizerFromTiktoken } from '../src/tokenizer/tiktoken.js';
import { GPT2_PRE_TOKENIZER, byteToUnicode } from '../src/tokenizer/byte-level.js';
import { packageRoot } from '../src/node.js';
import { brownDocuments } from '../train/prepare.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { barChart } from './svg.js';
import o200k from 'js-tiktoken/ranks/o200k_base';
import { o200kRanks } from './kimi-vocab.js';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '1' } } });
const text = brownDocuments().map((d) => d.text).join('\n').slice(0, Number(values.mb) * 1_000_000);
const bytes = new TextEncoder().encode(text).length;
const GPT2_PAT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** js-tiktoken's ranks for an HF byte-level vocabulary: rank = id, so both give the same ids */
function ranksOfVocab(vocab: Record<string, number>): string {
  const u2b = new Map(byteToUnicode().map((c, b) => [c, b]));
  const byId = Object.entries(vocab).sort((a, b) => a[1] - b[1]);
  return byId.map(([tok, id]) => `! ${id} ${Buffer.from(Array.from(tok, (c) => u2b.get(c)!)).toString('base64')}`).join('\n');
}

function time(f: () => number[]): { ms: number; tokens: number; ids: number[] } {
  let ids: number[] = f();
  const t: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    ids = f();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { ms: t[2]!, tokens: ids.length, ids };
}

const rows: { vocabulary: string; pattern: string; encoder: string; mbPerS: number; tokensPerS: number; tokens: number; sameIds: boolean | null }[] = [];
function measure(vocabulary: string, pattern: string, encoders: Record<string, () => number[]>) {
  let ref: number[] | null = null;
  for (const [name, f] of Object.entries(encoders)) {
    const r = time(f);
    ref ??= r.ids;
    rows.push({ vocabulary, pattern, encoder: name, mbPerS: bytes / 1e6 / (r.ms / 1000), tokensPerS: r.tokens / (r.ms / 1000), tokens: r.tokens, sameIds: name === Object.keys(encoders)[0] ? null : JSON.stringify(r.ids) === JSON.stringify(ref) });
    console.error(`${vocabulary} ${pattern} ${name}: ${r.ms.toFixed(0)} ms`);
  }
}

// the default model's vocabulary
const dir = join(packageRoot(), 'models', 'default');
const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
const ours = new Tokenizer(tj, tc);
const hf = new HfTokenizer(tj, tc);
const tt = new Tiktoken({ pat_str: GPT2_PAT, special_tokens: {}, bpe_ranks: ranksOfVocab(tj.model.vocab) });
measure('default (2,048)', 'GPT-2', {
  'AssemblyScript (this runtime)': () => ours.encode(text),
  '@huggingface/tokenizers': () => hf.encode(text, { add_special_tokens: false }).ids,
  'js-tiktoken': () => tt.encode(text),
});

// Kimi's size
const t0 = performance.now();
const { model, ranks } = o200kRanks(163_840);
const kimiSize = tokenizerFromTiktoken(model, {}).tokenizerJson as { pre_tokenizer: unknown; model: { ignore_merges: boolean } };
console.error(`163,840-rank vocabulary made in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
const gpt2Split = { ...kimiSize, pre_tokenizer: GPT2_PRE_TOKENIZER, model: { ...kimiSize.model, ignore_merges: false } };
const oursBig = new Tokenizer(gpt2Split, {});
const hfBig = new HfTokenizer(gpt2Split as object, {});
const ttBig = new Tiktoken({ pat_str: GPT2_PAT, special_tokens: {}, bpe_ranks: ranks });
measure('Kimi-size (163,840)', 'GPT-2', {
  'AssemblyScript (this runtime)': () => oursBig.encode(text),
  '@huggingface/tokenizers': () => hfBig.encode(text, { add_special_tokens: false }).ids,
  'js-tiktoken': () => ttBig.encode(text),
});
const hfKimi = new HfTokenizer(kimiSize as object, {});
const ttKimi = new Tiktoken({ pat_str: (o200k as { pat_str: string }).pat_str, special_tokens: {}, bpe_ranks: ranks });
const kimiPattern = JSON.stringify(kimiSize.pre_tokenizer).includes('Han') ? "Kimi's" : 'its own';
const oursKimi = new Tokenizer(kimiSize, {});
measure('Kimi-size (163,840)', kimiPattern, {
  'AssemblyScript (this runtime)': () => oursKimi.encode(text),
  '@huggingface/tokenizers': () => hfKimi.encode(text, { add_special_tokens: false }).ids,
  "js-tiktoken (o200k's pattern)": () => ttKimi.encode(text),
});

console.log(`machine: ${JSON.stringify(machine())}\ntext: ${bytes} bytes of the Brown corpus (English), one thread, medians of 5\n`);
console.log(table(['vocabulary', 'pattern', 'encoder', 'MB/s', 'tokens/s', 'tokens', 'same ids as the first'], rows.map((r) => [r.vocabulary, r.pattern, r.encoder, r.mbPerS.toFixed(2), Math.round(r.tokensPerS).toLocaleString('en'), r.tokens, r.sameIds === null ? '-' : r.sameIds ? 'yes' : 'no'])));
writeResult('tokenize', { date: new Date().toISOString(), machine: machine(), bytes, rows });
const cases = [...new Set(rows.map((r) => `${r.vocabulary}, ${r.pattern}`))];
const encoders = [...new Set(rows.map((r) => r.encoder))];
writeFileSync(join(packageRoot(), 'bench', 'results', `tokenize-${machineTag()}.svg`), barChart(`Encoding English, one thread (${machine().cpu})`, 'MB/s', cases, encoders.map((e) => ({ name: e, values: cases.map((c) => rows.find((r) => `${r.vocabulary}, ${r.pattern}` === c && r.encoder === e)?.mbPerS ?? null) }))));
