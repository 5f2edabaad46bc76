// Sizes computed from untrusted numbers (a config, a tensor's shape, a blob's position) are
// checked in 64 bits on every backend: on wasm, where size_t is 32 bits, a 4 GiB tensor or a
// forged blob position used to wrap into a small size, after which the loader wrote, and the
// next decode read, outside the allocation.
import { describe, expect, it } from 'vitest';
import { parseKimiConfig } from '../../src/engine/config.js';
import { EngineModel } from '../../src/engine/engine.js';
import { syntheticWeights, TINY_CONFIG } from '../../src/weights/synthetic.js';
import { placeHfModel } from '../../src/weights/hf-loader.js';
import { allBackends, tinyDir, loadTiny, tokens } from '../helpers/tiny-model.js';

/** FNV-1a 64 of bytes, as the blob's trailer (engine/model/session.c) */
function fnv64(b: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const x of b) h = BigInt.asUintN(64, (h ^ BigInt(x)) * 0x100000001b3n);
  return h;
}

describe('sizes from untrusted numbers, on every backend', async () => {
  const backends = await allBackends();
  for (const b of backends) {
    describe(b.name, () => {
      it('a 4 GiB tensor is refused or allocated whole, never wrapped; the engine keeps working', async () => {
        const before = await loadTiny(b);
        const toks = tokens(20, 512, 3);
        const want = before.createSession().forward(toks);
        // an F32 embedding of 65536 x 16384: exactly 4 GiB
        const big = EngineModel.create(b, parseKimiConfig({ ...TINY_CONFIG, vocab_size: 65536, hidden_size: 16384 }));
        let writer: ReturnType<EngineModel['allocTensor']> | null = null;
        try {
          writer = big.allocTensor({ role: 'TOK_EMBD', layer: -1, expert: 0 }, 'f32', 65536, 16384);
        } catch (e) {
          expect(String(e)).toMatch(/does not fit the config, or memory ran out/);
        }
        // wasm32 cannot hold it; a 64-bit host may (then it is the whole 4 GiB, lazily mapped)
        if (b.name.startsWith('wasm')) expect(writer).toBeNull();
        big.free();
        expect(before.createSession().forward(toks)).toEqual(want);
        before.free();
      });

      it('a blob whose position is forged to wrap its size in 32 bits (checksum made right) is refused', async () => {
        const m = await loadTiny(b);
        const s = m.createSession();
        s.forward(tokens(10, 512, 4));
        const blob = s.save();
        // the default model's MLA row is 64 + 16 floats (320 bytes a token): 2^26 more tokens
        // add 5 * 2^32 bytes, the same size modulo 2^32
        const forged = blob.slice();
        const dv = new DataView(forged.buffer);
        dv.setUint32(20, dv.getUint32(20, true) + 2 ** 26, true);
        dv.setBigUint64(forged.length - 8, fnv64(forged.subarray(0, forged.length - 8)), true);
        const t = m.createSession();
        expect(() => t.load(forged)).toThrow(/malformed state blob/);
        expect(t.pos).toBe(0);
        t.load(blob);
        expect(t.forward([7])).toEqual(s.forward([7]));
        m.free();
      });

      it('a tensor past 34 MB finalizes and runs (the weight fingerprint\'s offsets do not wrap a 32-bit long)', async () => {
        // a tied 163,840 x 64 F32 embedding: 42 MB, whose (bytes - 1) * 63 passes 2^31
        const cfg = { ...TINY_CONFIG, vocab_size: 163_840, hidden_size: 64, tie_word_embeddings: true };
        const m = await placeHfModel(b, cfg, [{ name: 'model.safetensors', bytes: syntheticWeights(cfg, 9) }]);
        const logits = m.createSession().forward([1, 2, 163_839]);
        expect(logits.length).toBe(163_840);
        expect(logits.every(Number.isFinite)).toBe(true);
        m.free();
      });

      it('a config whose head count times head size wraps 32 bits is refused', () => {
        const la = { ...TINY_CONFIG.linear_attn_config, num_heads: 2 ** 22 + 1, head_dim: 1024 };
        expect(() => EngineModel.create(b, parseKimiConfig({ ...TINY_CONFIG, linear_attn_config: la }))).toThrow(/refused the config/);
      });
    });
  }
});

describe('a session blob is checked whole before it is used', async () => {
  const { Session } = await import('../../src/generate/session.js');
  const { loadModel } = await import('../../src/model/load.js');
  const { sourceFromDirectory } = await import('../../src/formats/node-source.js');
  const backends = await allBackends();
  for (const b of backends) {
    it(`${b.name}: history ids outside the vocabulary, non-finite state and absurd part totals are refused`, async () => {
      const model = await loadModel(sourceFromDirectory(tinyDir), { backend: b });
      const s = model.createSession();
      s.prefill(tokens(12, 512, 6));
      const blob = s.save();
      const dv = new DataView(blob.buffer);
      const n = dv.getUint32(8, true);
      for (const bad of [99999, -5, 512]) {
        const forged = blob.slice();
        new DataView(forged.buffer).setInt32(12 + 4 * 3, bad, true);
        expect(() => Session.restore(model, forged)).toThrow(/outside the vocabulary/);
      }
      // NaN in the first KDA conv tail, the engine's checksum made right
      const forged = blob.slice();
      const engine = forged.subarray(12 + 4 * n);
      new DataView(engine.buffer, engine.byteOffset).setFloat32(32 + 4 * 5, NaN, true);
      new DataView(engine.buffer, engine.byteOffset).setBigUint64(engine.length - 8, fnv64(engine.subarray(0, engine.length - 8)), true);
      expect(() => Session.restore(model, forged)).toThrow(/malformed state blob/);
      // a petabyte announced: refused before any memory is asked for
      expect(() => Session.restoreParts(model, [blob], 1e15)).toThrow(/more than any state of this model can have/);
      expect(Session.restore(model, blob).tokens).toEqual(s.tokens);
      model.free();
    });
  }
});
