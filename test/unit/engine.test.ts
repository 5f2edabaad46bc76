import { describe, expect, it } from 'vitest';
import { EngineError } from '../../src/engine/engine.js';
import { placeHfModel } from '../../src/weights/hf-loader.js';
import { syntheticWeights } from '../../src/weights/synthetic.js';
import { allBackends, argmax, tinyConfig, loadTiny, tokens } from '../helpers/tiny-model.js';

const V = 512;

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('the engine on the default model (every backend)', async () => {
  const backends = await allBackends();
  const models = await Promise.all(backends.map((b) => loadTiny(b)));

  for (const [bi, b] of backends.entries()) {
    describe(b.name, () => {
      const model = models[bi]!;
      const toks = tokens(150, V);

      it('prefill of 150 tokens (batches of 64, ragged tail) gives the logits of decoding them one by one', () => {
        const all = model.createSession().forward(toks, true);
        const s = model.createSession();
        let worst = 0, scale = 0;
        toks.forEach((t, i) => {
          const l = s.forward([t]);
          worst = Math.max(worst, maxAbsDiff(l, all.subarray(i * V, (i + 1) * V)));
          scale = Math.max(scale, ...l.map(Math.abs));
          expect(argmax(l)).toBe(argmax(all, i * V, V));
        });
        expect(scale).toBeGreaterThan(1); // not a flat model
        expect(worst / scale).toBeLessThan(1e-5);
        expect(s.pos).toBe(150);
      });

      // BF16 precision (kle_model_precision) exists natively where the processor multiplies BF16
      // pairs (AVX-512 BF16; synthetic-model.test.ts checks what it does); wasm refuses it
      it('multiplies at f32 accuracy by default; BF16 precision is refused with the reason where there are no BF16 products', () => {
        expect(model.precision()).toBe('f32');
        expect(model.precision('f32')).toBe('f32');
        let offered = true;
        try {
          model.precision('bf16');
        } catch (e) {
          offered = false;
          expect((e as Error).message).toMatch(/needs the CUDA backend or the native engine on a processor with AVX-512 BF16/);
        }
        if (b.name !== 'native') expect(offered).toBe(false);
        expect(model.precision('f32')).toBe('f32');
        expect(() => model.precision('fp8' as 'f32')).toThrow(RangeError);
        expect(model.precision()).toBe('f32');
      });

      it('a prefill split anywhere equals one prefill', () => {
        const one = model.createSession().forward(toks);
        const s = model.createSession();
        s.forward(toks.slice(0, 70));
        s.forward(toks.slice(70, 71));
        const split = s.forward(toks.slice(71));
        expect(maxAbsDiff(one, split) / Math.max(...one.map(Math.abs))).toBeLessThan(1e-5);
      });

      it('save -> restore -> continue gives the same tokens as not stopping', () => {
        const a = model.createSession();
        a.forward(toks.slice(0, 90));
        const blob = a.save();
        const b2 = model.createSession();
        b2.load(blob);
        expect(b2.pos).toBe(90);
        expect(b2.logits()).toEqual(a.logits());
        const greedy = (s: typeof a) => {
          const out: number[] = [];
          let l = s.logits()!;
          for (let i = 0; i < 20; i++) {
            const t = argmax(l);
            out.push(t);
            l = s.forward([t]);
          }
          return out;
        };
        expect(greedy(b2)).toEqual(greedy(a));
      });

      it('rejects a blob that is corrupt, truncated or from another model, and keeps its state', async () => {
        const s = model.createSession();
        s.forward(toks.slice(0, 20));
        const before = s.logits()!;
        const good = s.save();
        const corrupt = good.slice();
        corrupt[good.length >> 1]! ^= 1;
        const other = await placeHfModel(b, tinyConfig(), [{ name: 'other.safetensors', bytes: syntheticWeights(tinyConfig(), 99, { dtype: 'BF16' }) }]);
        const os = other.createSession();
        os.forward(toks.slice(0, 20));
        for (const bad of [corrupt, good.subarray(0, good.length - 9), os.save(), new Uint8Array(3)]) {
          expect(() => s.load(bad)).toThrow(EngineError);
          expect(s.pos).toBe(20);
          expect(s.logits()).toEqual(before);
        }
        other.free();
      });

      it('saves and loads a blob in parts: the same bytes as save(), the same state after', () => {
        const a = model.createSession();
        a.forward(toks.slice(0, 33));
        const whole = a.save();
        expect(a.stateSize()).toBe(whole.length);
        const parts = [...a.saveParts(1000)];
        expect(parts.length).toBe(Math.ceil(whole.length / 1000));
        expect(parts.slice(0, -1).every((p) => p.length === 1000)).toBe(true);
        const joined = new Uint8Array(whole.length);
        parts.reduce((off, p) => (joined.set(p, off), off + p.length), 0);
        expect(joined).toEqual(whole);
        // any split of the bytes loads, from an array or from a generator with its total
        const c = model.createSession();
        c.loadParts([whole.subarray(0, 7), whole.subarray(7, 12345), whole.subarray(12345)]);
        expect(c.save()).toEqual(whole);
        const d = model.createSession();
        d.loadParts((function* () { yield* parts; })(), whole.length);
        expect(d.pos).toBe(33);
        const t = argmax(a.logits()!);
        expect(d.forward([t])).toEqual(a.forward([t]));
      });

      it('loading parts that are short, long, corrupt or without a total throws and keeps the state', () => {
        const s = model.createSession();
        s.forward(toks.slice(0, 12));
        const before = s.save();
        const other = model.createSession();
        other.forward(toks.slice(0, 30));
        const blob = other.save();
        const flipped = blob.slice();
        flipped[blob.length - 20]! ^= 4;
        const cases: [() => void, RegExp | typeof EngineError][] = [
          [() => s.loadParts([blob.subarray(0, 100)], blob.length), /hold 100 bytes/],
          [() => s.loadParts([blob, new Uint8Array(1)], blob.length), /pass the/],
          [() => s.loadParts([flipped.subarray(0, 50), flipped.subarray(50)]), EngineError],
          [() => s.loadParts((function* () { yield blob; })()), /totalBytes/],
        ];
        for (const [f, err] of cases) {
          expect(f).toThrow(err);
          expect(s.save()).toEqual(before);
        }
        expect(() => [...s.saveParts(0)]).toThrow(RangeError);
      });

      it('keeps MLA caches in f32 on the CPU; a format is set on a fresh session only', () => {
        expect(model.kvFormat).toBe('f32');
        const s = model.createSession({ kvFormat: 'f32' });
        expect(s.kvFormat).toBe('f32');
        expect(() => s.setKvFormat('bf16')).toThrow(/kle_session_set_kv_format: invalid argument \(bf16 on /);
        expect(() => model.createSession({ kvFormat: 'bf16' })).toThrow(/invalid argument/);
        expect(() => s.setKvFormat('f16' as 'f32')).toThrow(RangeError);
        s.step(toks.slice(0, 3));
        expect(s.logitsRef()).not.toBeNull();
        expect(() => s.setKvFormat('f32')).toThrow(/3 tokens already in the session/);
        s.free();
      });

      it('refuses token ids outside the vocabulary before touching the state', () => {
        const s = model.createSession();
        expect(() => s.forward([1, V])).toThrow(/outside the vocabulary/);
        expect(() => s.forward([-1])).toThrow(RangeError);
        expect(() => s.forward([])).toThrow(RangeError);
        expect(s.pos).toBe(0);
      });
    });
  }

  it('every backend gives the same logits (float32 rounding apart)', () => {
    const toks = tokens(40, V, 3);
    const outs = models.map((m) => m.createSession().forward(toks, true));
    const scale = Math.max(...outs[0]!.map(Math.abs));
    for (const o of outs.slice(1)) expect(maxAbsDiff(o, outs[0]!) / scale).toBeLessThan(1e-5);
  });
});
