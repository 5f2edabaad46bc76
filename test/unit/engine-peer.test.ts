// Our logits against Moonshot's modeling_kimi.py + fla run on the same weights (see
// test/fixtures/README.md for the exact versions and commands).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { parseSafetensors, tensorF32 } from '../../src/formats/safetensors.js';
import { allBackends, argmax, loadTiny } from '../helpers/tiny-model.js';

const dir = join(packageRoot(), 'test', 'fixtures', 'peer');
const toks = (JSON.parse(readFileSync(join(dir, 'tokens.json'), 'utf8')) as { tokens: number[] }).tokens;
const peer = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'peer_logits.safetensors'))));
const V = 512;

function compare(ours: Float32Array, ref: Float32Array) {
  let maxAbs = 0, num = 0, den = 0, agree = 0;
  for (let t = 0; t < toks.length; t++) {
    for (let j = 0; j < V; j++) {
      const d = ours[t * V + j]! - ref[t * V + j]!;
      maxAbs = Math.max(maxAbs, Math.abs(d));
      num += d * d;
      den += ref[t * V + j]! ** 2;
    }
    if (argmax(ours, t * V, V) === argmax(ref, t * V, V)) agree++;
  }
  return { maxAbs, relL2: Math.sqrt(num / den), argmaxAgree: agree / toks.length };
}

describe('logits against the reference implementation (modeling_kimi.py + fla, float32 on an H100)', async () => {
  const backends = await allBackends();
  for (const b of backends) {
    const ours = (await loadTiny(b)).createSession().forward(toks, true);
    it(`${b.name}: matches the reference's token-by-token pass (fused_recurrent_kda, float32)`, () => {
      const r = compare(ours, tensorF32(peer.tensors.get('logits_decode')!));
      // measured: max abs 4.6e-5 on logits up to 16, rel L2 1.3e-6
      expect(r.maxAbs).toBeLessThan(5e-4);
      expect(r.relL2).toBeLessThan(1e-5);
      expect(r.argmaxAgree).toBe(1);
    });
    it(`${b.name}: matches the reference's one-pass prefill (chunk_kda, which multiplies in TF32)`, () => {
      const r = compare(ours, tensorF32(peer.tensors.get('logits_prefill')!));
      // the reference's own prefill and decode differ by 1.0e-2 max abs: its Triton dots run in TF32
      expect(r.maxAbs).toBeLessThan(3e-2);
      expect(r.relL2).toBeLessThan(1e-3);
      expect(r.argmaxAgree).toBe(1);
    });
  }
});

// A second implementation nobody here wrote: llama.cpp's Kimi-Linear, on the GGUF that
// `kimi-edge convert` makes of the same model (which also shows llama.cpp loads our GGUF files).
describe("logits against llama.cpp's Kimi-Linear on our GGUF of the same weights", async () => {
  const ll = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'llama_logits.safetensors'))));
  const backends = await allBackends();
  for (const b of backends) {
    const ours = (await loadTiny(b)).createSession().forward(toks, true);
    for (const [name, bound] of [['logits_batch', 5e-4], ['logits_one_by_one', 1e-3]] as const) {
      it(`${b.name}: ${name}`, () => {
        const r = compare(ours, tensorF32(ll.tensors.get(name)!));
        // measured: rel L2 1.3e-4 (batch) and 3.1e-4 (one by one), max abs 3.7e-3 / 6.7e-3;
        // llama.cpp keeps its MLA cache in f16, which accounts for the difference
        expect(r.relL2).toBeLessThan(bound);
        expect(r.argmaxAgree).toBe(1);
      });
    }
  }
});
