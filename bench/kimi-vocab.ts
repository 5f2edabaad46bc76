// A vocabulary of Kimi's size for benchmarks (Kimi's own tiktoken.model is not in the npm
// registry): the first ranks of o200k_base from the js-tiktoken package (MIT), in tiktoken.model's
// form, and a model directory that serves Kimi-Linear-48B-A3B's config with it.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import o200k from 'js-tiktoken/ranks/o200k_base';
import { defaultModelDir } from '../src/node.js';
import { KIMI_LINEAR_48B_CONFIG, type ConfigJson } from '../src/weights/synthetic.js';

/** tiktoken.model's text (base64 rank per line) and js-tiktoken's rank text of o200k_base's first n ranks */
export function o200kRanks(n: number): { model: string; ranks: string } {
  const lines: string[] = [];
  const kept: string[] = [];
  for (const line of (o200k as { bpe_ranks: string }).bpe_ranks.split('\n').filter(Boolean)) {
    const [, off, ...toks] = line.split(' ');
    const o = Number(off);
    const take = toks.slice(0, Math.max(0, n - o));
    take.forEach((t, i) => lines.push(`${t} ${o + i}`));
    if (take.length) kept.push(['!', String(o), ...take].join(' '));
  }
  return { model: lines.join('\n'), ranks: kept.join('\n') };
}

/** Kimi keeps 256 + 2 ids for special tokens after its ranks (src/tokenizer/tiktoken.ts) */
const SPECIALS = ['[BOS]', '[EOS]', '<|im_end|>', '<|im_user|>', '<|im_assistant|>', '<|im_system|>', '<|im_middle|>', '[PAD]'];

/**
 * Writes a model directory for `config` (default Kimi-Linear-48B-A3B's) with no weights: its
 * config.json, a tiktoken.model of vocab_size - 258 ranks, and a tokenizer_config.json naming the
 * chat tokens and carrying the default model's chat template. Served with synthesized weights
 * (gpu-node --synthetic-weights), it is the full-size model behind the real HTTP path.
 */
export function writeKimiSizeModelDir(dir: string, config: ConfigJson = KIMI_LINEAR_48B_CONFIG): void {
  const V = Number(config.vocab_size), n = V - 258;
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 1));
  writeFileSync(join(dir, 'tiktoken.model'), `${o200kRanks(n).model}\n`);
  const base = JSON.parse(readFileSync(join(defaultModelDir(), 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  const added = Object.fromEntries(SPECIALS.map((content, i) => [String(n + i), { content, special: true }]));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...base, added_tokens_decoder: added, bos_token: '[BOS]', eos_token: '<|im_end|>', pad_token: '[PAD]' }));
}
