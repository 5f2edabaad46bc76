// Sampling on the GPU (kle_session_sample, kernels-cuda/src/sample.cu) against the runtime's
// sampler (as/sampler.ts) on the same logits with the same seeds: the same draws u, so the same
// tokens except where float rounding moves a boundary (the two sum the mass in different
// orders), and never a token outside the reference's kept set. Logits of Kimi's vocabulary
// size are put in a GPU session through a state blob. Skipped without a GPU.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { CudaBackend } from '../../src/engine/cuda-backend.js';
import type { EngineSession } from '../../src/engine/engine.js';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { Sampler, type SamplingOptions } from '../../src/generate/sampler.js';
import { ReferenceSampler } from '../../src/generate/sampler-reference.js';
import { gaussianLogits as gaussian, KIMI_VOCAB, logitsSession } from '../helpers/gpu-logits.js';

const addon = join(packageRoot(), 'build', 'cuda', 'kle-cuda.node');
let cuda: CudaBackend | null = null;
let reason = 'build/cuda/kle-cuda.node is not built (npm run build:cuda needs nvcc)';
if (existsSync(addon)) {
  try {
    cuda = CudaBackend.load(addon);
  } catch (e) {
    reason = (e as Error).message;
  }
}
if (!cuda) console.log(`CUDA sampling tests skipped: ${reason}`);
beforeEach(() => new Promise<void>((resolve) => setTimeout(resolve, 0)));

const V = KIMI_VOCAB;

const LOGITS: Record<string, () => Float32Array> = {
  'Gaussian, sd 3': () => gaussian(1, 3),
  'Gaussian, sd 10 (peaked)': () => gaussian(2, 10),
  'Gaussian, sd 0.5 (flat)': () => gaussian(3, 0.5),
  'quantized to 0.5 (ties)': () => gaussian(4, 3, 0.5),
};
const MODES: Record<string, SamplingOptions> = {
  greedy: { temperature: 0 },
  'temperature 0.7': { temperature: 0.7 },
  'top-k 40': { temperature: 0.7, topK: 40 },
  'top-k 7': { temperature: 1, topK: 7 },
  'top-p 0.9': { temperature: 0.7, topP: 0.9 },
  'top-p 0.5 after top-k 200': { temperature: 1, topK: 200, topP: 0.5 },
  'min-p 0.05': { temperature: 0.7, minP: 0.05 },
  'top-p 0.95 then min-p 0.2': { temperature: 1, topP: 0.95, minP: 0.2 },
  'penalties and logit bias': { temperature: 0.7, repetitionPenalty: 1.3, frequencyPenalty: 0.5, presencePenalty: 0.3, logitBias: { 3: 5, 10: -100, 4999: 2 } },
};
const context = Array.from({ length: 300 }, (_, i) => (i * 7919) % 600);
// fewer under compute-sanitizer (kernels-cuda/run-gpu.sh sets KLE_PARITY_QUICK there)
const DRAWS = process.env.KLE_PARITY_QUICK ? 20 : 200;

const agree = { same: 0, draws: 0 };
afterAll(() => {
  if (agree.draws) console.log(`GPU sampling: ${agree.same} of ${agree.draws} draws the host's token`);
});

describe.skipIf(!cuda)('sampling on the GPU', () => {
  let session: EngineSession;
  let setLogits: (l: Float32Array) => void;

  it('a session of Kimi\'s vocabulary on the GPU', () => {
    const ls = logitsSession(cuda!, V);
    session = ls.session;
    setLogits = ls.set;
    expect(session.logitsRef()?.draw).toBeTypeOf('function');
  });

  for (const [lname, make] of Object.entries(LOGITS))
    for (const [mname, o] of Object.entries(MODES))
      it(`${lname}, ${mname}: the host's tokens for the same seed, inside the reference's set`, () => {
        const l = make();
        setLogits(l);
        const d = new ReferenceSampler(o).distribution(l, context);
        const kept = new Set(d.ids);
        const host = new Sampler({ ...o, seed: 9 }), dev = new Sampler({ ...o, seed: 9 }), again = new Sampler({ ...o, seed: 9 });
        let same = 0;
        for (let i = 0; i < DRAWS; i++) {
          const a = host.sample(l, context), b = dev.sample(session.logitsRef()!, context);
          expect(kept.has(b), `token ${b} is outside the reference's ${kept.size}`).toBe(true);
          same += a === b ? 1 : 0;
          // the blocks meet in integer atomics and fixed-order sums: a seed draws the same token every time
          if (i < 20) expect(again.sample(session.logitsRef()!, context)).toBe(b);
        }
        agree.same += same;
        agree.draws += DRAWS;
        // a draw lands within rounding of a boundary between two tokens' mass about once in
        // 1e6: every draw agrees in practice; greedy must
        if (o.temperature === 0) expect(same).toBe(DRAWS);
        else expect(same, `${same} of ${DRAWS} the same`).toBeGreaterThanOrEqual(DRAWS - Math.ceil(DRAWS / 100));
      });

  it('a vocabulary that leaves the last blocks of a draw short or empty: the host\'s tokens', () => {
    for (const V2 of [1_000, 37]) {
      const small = logitsSession(cuda!, V2);
      const l = gaussian(6, 3, 0, V2);
      small.set(l);
      for (const o of [MODES.greedy!, MODES['top-k 7']!, MODES['top-p 0.9']!, MODES['top-p 0.95 then min-p 0.2']!]) {
        const host = new Sampler({ ...o, seed: 3 }), dev = new Sampler({ ...o, seed: 3 });
        let same = 0;
        for (let i = 0; i < 50; i++) same += host.sample(l) === dev.sample(small.session.logitsRef()!) ? 1 : 0;
        expect(same, `V ${V2}: ${same} of 50 the same`).toBeGreaterThanOrEqual(49);
      }
    }
  });

  it('refuses settings out of range, and the logits stay readable', () => {
    const l = gaussian(5, 3);
    setLogits(l);
    const ref = session.logitsRef()!;
    const bad = { temperature: 0.7, topK: 0, topP: 1.5, logMinP: -Infinity, repetitionPenalty: 1, frequencyPenalty: 0, presencePenalty: 0, toks: new Int32Array(0), counts: new Int32Array(0), cbias: new Float64Array(0), btoks: new Int32Array(0), bvals: new Float64Array(0), uBits: 0 };
    expect(() => ref.draw!(bad)).toThrow(/invalid argument/);
    expect(() => ref.draw!({ ...bad, topP: 1, uBits: 2 ** 32 })).toThrow(/invalid argument/);
    expect(() => ref.draw!({ ...bad, topP: 1, toks: new Int32Array(1) })).toThrow(/differ in length/);
    expect(ref.copy()).toEqual(l);
  });
});
