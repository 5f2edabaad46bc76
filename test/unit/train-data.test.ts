// The training recipe's data step is reproducible: the embedded default model's tokenizer is
// exactly what train/prepare.ts learns from the Brown corpus's training split, and the held-out
// token ids the tests score are what it writes. Also the detokenizer on the corpus's markup.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tokenizerFiles } from '../../models/bpe-train.js';
import { brownSplits, detokenizeBrown, idsFile } from '../../train/prepare.js';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { idsFromU16 } from '../../src/verify/perplexity.js';

describe('train/prepare.ts', () => {
  it('strips the tags and glues punctuation and quotes back to their words', () => {
    expect(detokenizeBrown("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, (/( it's/pps+bez )/) ./.\n\n\tNext/ap ./.\n")).toBe('The jury said "no", (it\'s).\nNext.');
  });

  it('learns the default model\'s tokenizer from the training split and writes the held-out ids the tests use', () => {
    const { train, heldout, trainText } = brownSplits();
    expect(train.length).toBe(450);
    expect(heldout.length).toBe(50);
    expect(new Set(train.map((d) => d.name)).has(heldout[0]!.name)).toBe(false);
    const dir = join(packageRoot(), 'models', 'default');
    const { tokenizer } = tokenizerFiles(2048, trainText);
    expect(tokenizer).toBe(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    const tok = new Tokenizer(JSON.parse(tokenizer), JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')));
    const ids = idsFile(tok, tok.tokenToId('[BOS]')!, heldout.slice(0, 3));
    const want = idsFromU16(readFileSync(join(packageRoot(), 'test', 'fixtures', 'brown-heldout-16x256.u16')));
    expect(ids.length).toBeGreaterThan(want.length);
    expect(Array.from(ids.subarray(0, want.length))).toEqual(Array.from(want));
  }, 60_000);
});
