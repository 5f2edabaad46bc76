// The engine's whole forward pass against an independent float64 one (src/verify/model-ref64.ts)
// on small models: the default model, linear-attention layers with one decay per head (Gated
// DeltaNet's gate, the layer-kind seam), and grouped MoE routing with and without the selection
// bias (a missing bias is a zero bias).
import { describe, expect, it } from 'vitest';
import type { KernelBackend } from '../../src/engine/backend.js';
import { parseKimiConfig, type KimiConfig } from '../../src/engine/config.js';
import { placeHfCheckpoint } from '../../src/weights/hf-loader.js';
import { parseSafetensors, tensorF32 } from '../../src/formats/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/formats/safetensors-writer.js';
import { syntheticWeights, TINY_CONFIG, type SyntheticOptions, withHeadGate } from '../../src/weights/synthetic.js';
import { modelForward64, routeRef, safetensorsGetter } from '../../src/verify/model-ref64.js';
import { relErr } from '../../src/verify/relerr.js';
import { allBackends, argmax, tinyConfig, tinyWeights, tokens } from '../helpers/tiny-model.js';

// f32 engine vs float64: measured 8.7e-7 .. 1.24e-6 on these models; the bar leaves room for
// summation order and nothing else (a wrong gate or routing rule moves logits by 1e-2 or more)
const TOL = 2e-5;

interface Case {
  config: KimiConfig;
  weights: Uint8Array;
}

function makeCase(json: Record<string, unknown>, seed: number, opts: SyntheticOptions & { dropBias?: boolean } = {}): Case {
  const config = parseKimiConfig(json);
  let weights = syntheticWeights(json, seed, opts);
  if (opts.dropBias) {
    const f = parseSafetensors(weights);
    const kept: Record<string, TensorToWrite> = {};
    for (const [name, t] of f.tensors) if (!name.endsWith('e_score_correction_bias')) kept[name] = { dtype: 'F32', shape: [...t.shape], data: tensorF32(t) };
    weights = writeSafetensors(kept, { format: 'pt' });
  }
  return { config, weights };
}

function reference(c: Case, toks: number[]): Float64Array {
  return modelForward64(c.config, safetensorsGetter(c.weights), toks);
}

async function engineLogits(b: KernelBackend, c: Case, toks: number[]): Promise<{ prefill: Float32Array; decode: Float32Array }> {
  const m = await placeHfCheckpoint(b, c.config, [{ name: 'w.safetensors', bytes: c.weights }]);
  const V = c.config.vocabSize;
  const prefill = m.createSession().forward(toks, true);
  const s = m.createSession();
  const decode = new Float32Array(toks.length * V);
  toks.forEach((t, i) => decode.set(s.forward([t]), i * V));
  m.free();
  return { prefill, decode };
}

const grouped = { ...TINY_CONFIG, num_expert_group: 4, topk_group: 2, num_experts_per_token: 2 };

describe('the engine against the float64 model', async () => {
  const backends = await allBackends();
  const cases: Record<string, () => Case> = {
    'the default model': () => ({ config: parseKimiConfig(tinyConfig()), weights: tinyWeights() }),
    'one decay per head (Gated DeltaNet gate)': () => makeCase(withHeadGate(TINY_CONFIG), 21),
    'one decay per head, lower-bound gate': () =>
      makeCase(withHeadGate({ ...TINY_CONFIG, linear_attn_config: { ...TINY_CONFIG.linear_attn_config, gate_lower_bound: -5 } }), 22),
    'grouped routing (4 groups, 2 kept) with the selection bias': () => makeCase(grouped, 23),
    'grouped routing without the selection bias (a zero bias)': () => makeCase(grouped, 23, { dropBias: true }),
  };
  for (const [name, make] of Object.entries(cases)) {
    it(`${name}: prefill and decode on every backend`, async () => {
      const c = make();
      const toks = tokens(80, c.config.vocabSize, 5);
      const ref = reference(c, toks);
      for (const b of backends) {
        const { prefill, decode } = await engineLogits(b, c, toks);
        for (const got of [prefill, decode]) {
          expect(relErr(got, ref), `${b.name}`).toBeLessThan(TOL);
          let agree = 0;
          for (let t = 0; t < toks.length; t++) agree += argmax(got, t * c.config.vocabSize, c.config.vocabSize) === argmax(Float32Array.from(ref.subarray(t * c.config.vocabSize, (t + 1) * c.config.vocabSize))) ? 1 : 0;
          expect(agree / toks.length).toBeGreaterThanOrEqual(0.98);
        }
      }
    });
  }

  it('a per-head gate changes the model (the seam is not a no-op)', async () => {
    const toks = tokens(40, 512, 6);
    const perChannel = makeCase({ ...TINY_CONFIG }, 21);
    const perHead = makeCase(withHeadGate(TINY_CONFIG), 21);
    const a = await engineLogits(backends[0]!, perChannel, toks), b = reference(perHead, toks);
    expect(relErr(a.prefill, b)).toBeGreaterThan(1e-2);
  });

  it('routing without a bias scores groups by their two best experts, as with a zero bias', () => {
    const c = parseKimiConfig(grouped);
    // group 0 has the single best expert, group 1 the best pair: the pair's group must win
    const logits = [3, -4, 2, 2, -4, -4, -4, -4].map((x) => x / 2);
    const one = { ...c.moe!, topkGroup: 1 };
    const none = routeRef(one, logits, undefined);
    expect(none).toEqual(routeRef(one, logits, new Array(8).fill(0)));
    expect([...none.idx].sort()).toEqual([2, 3]);
  });
});
