// Trained checkpoints from the recipe in train/, against PyTorch: the embedded default model
// (Kimi Linear, 3 KDA : 1 MLA, MoE) and a small GDN-H model (one decay per head) from the
// architecture sweep. train/export.py wrote each one's reference: a float64 PyTorch forward of
// the exported weights over 96 held-out tokens, every position's logits. The held-out loss the
// engine computes (kimi-edge eval's protocol) is held to train/evaluate.py's on the same
// checkpoint and tokens.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSafetensors, tensorF32 } from '../../src/formats/safetensors.js';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { placeHfModel } from '../../src/weights/hf-loader.js';
import { relErr } from '../../src/verify/relerr.js';
import { heldoutLoss, idsFromU16 } from '../../src/verify/perplexity.js';
import { allBackends, argmax, configIn, weightsIn } from '../helpers/tiny-model.js';

const root = packageRoot();
const fixtures = join(root, 'test', 'fixtures');
const CHECKPOINTS = {
  'the default model (Kimi Linear)': { dir: join(root, 'models', 'default'), reference: join(fixtures, 'default-reference.safetensors') },
  'a GDN-H model from the sweep': { dir: join(fixtures, 'gdnh-small'), reference: join(fixtures, 'gdnh-small-reference.safetensors') },
};
// measured 1.9e-7 (default) and 2.1e-7 (GDN-H) natively; f32 summation order is the only difference
const TOL = 1e-5;

function load(dir: string) {
  return { config: configIn(dir), weights: weightsIn(dir) };
}

describe('trained checkpoints against PyTorch (float64)', async () => {
  const backends = await allBackends();
  for (const [name, c] of Object.entries(CHECKPOINTS)) {
    it(`${name}: every position's logits, prefill and token by token, on every backend`, async () => {
      const { config, weights } = load(c.dir);
      const ref = parseSafetensors(new Uint8Array(readFileSync(c.reference)));
      const toks = Array.from(tensorF32(ref.tensors.get('tokens')!));
      const want = tensorF32(ref.tensors.get('logits')!);
      for (const b of backends) {
        const m = await placeHfModel(b, config, [{ name: 'model.safetensors', bytes: weights }]);
        const V = m.config.vocabSize;
        const prefill = m.createSession().forward(toks, true);
        const s = m.createSession();
        const stepped = new Float32Array(toks.length * V);
        toks.forEach((t, i) => stepped.set(s.forward([t]), i * V));
        for (const got of [prefill, stepped]) {
          expect(relErr(got, want), b.name).toBeLessThan(TOL);
          for (let i = 0; i < toks.length; i++) expect(argmax(got, i * V, V)).toBe(argmax(want, i * V, V));
        }
        m.free();
      }
    });
  }

  it('the default model: the engine\'s held-out loss is PyTorch\'s (16 windows of 256 Brown tokens)', async () => {
    const pt = JSON.parse(readFileSync(join(fixtures, 'default-eval-pytorch.json'), 'utf8')) as { loss_first16: number; bigram: { loss: number } };
    const ids = idsFromU16(readFileSync(join(fixtures, 'brown-heldout-16x256.u16')));
    const { config, weights } = load(CHECKPOINTS['the default model (Kimi Linear)'].dir);
    for (const be of backends) {
      const m = await placeHfModel(be, config, [{ name: 'model.safetensors', bytes: weights }]);
      const r = heldoutLoss(m, ids);
      expect(r.tokens).toBe(16 * 256);
      // f32 logits, log-softmax in float64 on both sides: measured difference below 1e-5 nats
      expect(Math.abs(r.loss - pt.loss_first16), be.name).toBeLessThan(1e-4);
      // and it learned: well under the smoothed bigram baseline's loss on the whole held-out split
      expect(r.loss).toBeLessThan(pt.bigram.loss - 0.5);
      m.free();
    }
  });

  it('held-out loss refuses token ids outside the vocabulary and streams too short for one window', async () => {
    const { config, weights } = load(CHECKPOINTS['a GDN-H model from the sweep'].dir);
    const m = await placeHfModel(backends[0]!, config, [{ name: 'model.safetensors', bytes: weights }]);
    expect(() => heldoutLoss(m, [1, 2, 99999], { ctx: 2 })).toThrow(/outside the vocabulary/);
    expect(() => heldoutLoss(m, [1, 2], { ctx: 2 })).toThrow(/no window/);
    m.free();
  });
});
