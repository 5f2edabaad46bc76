// Continuous batching's engine step (EngineModel.stepBatch, kle_model_step_batch): several
// sessions at different lengths advance one token each in one forward, and each ends where its
// own forward of that token would have left it. Every CPU backend here; the GPU in
// test/unit/cuda-parity.test.ts.
import { describe, expect, it } from 'vitest';
import type { EngineModel, EngineSession } from '../../src/engine/engine.js';
import { StepBatcher } from '../../src/generate/batcher.js';
import { allBackends, argmax, loadTiny, tokens } from '../helpers/tiny-model.js';

const V = 512;

function relDiff(a: Float32Array, b: Float32Array): number {
  let d = 0, s = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    s = Math.max(s, Math.abs(b[i]!));
  }
  return d / s;
}

describe('a batched decode step (every CPU backend)', async () => {
  const backends = await allBackends();
  const models = await Promise.all(backends.map((b) => loadTiny(b)));
  for (const [bi, b] of backends.entries()) {
    const model: EngineModel = models[bi]!;
    it(`${b.name}: 5 sessions of different lengths, 12 greedy steps, each as its own forward would go`, () => {
      // prompts that cross the caches' growth (64 rows) at different steps
      const prompts = [10, 40, 70, 3, 100].map((n, i) => tokens(n, V, 20 + i));
      const batched: EngineSession[] = [], alone: EngineSession[] = [];
      for (const p of prompts) {
        for (const list of [batched, alone]) {
          const s = model.createSession();
          s.step(p);
          list.push(s);
        }
      }
      let worst = 0;
      for (let step = 0; step < 12; step++) {
        const next = batched.map((s) => argmax(s.logits()!));
        model.stepBatch(batched, next);
        alone.forEach((s, i) => {
          expect(argmax(s.logits()!), `session ${i} step ${step}: alone picks the batch's token`).toBe(next[i]);
          s.step([next[i]!]);
        });
        batched.forEach((s, i) => {
          worst = Math.max(worst, relDiff(s.logits()!, alone[i]!.logits()!));
          expect(s.pos).toBe(alone[i]!.pos);
        });
      }
      // one sum order for all rows of a matmul against one row alone: float rounding only
      console.log(`  ${b.name}: batched vs alone, worst relative logit difference ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-5);
      // the states match too: a blob of each continues the same way
      const nxt = tokens(6, V, 30);
      const go = (s: EngineSession) => nxt.map((t) => argmax(s.forward([t])));
      const other = model.createSession(), again = model.createSession();
      other.load(batched[2]!.save());
      again.load(alone[2]!.save());
      expect(go(other)).toEqual(go(again));
      other.free();
      again.free();
      for (const s of [...batched, ...alone]) s.free();
    });

    it(`${b.name}: refuses a batch it cannot run before touching any session`, () => {
      const [a, c, d] = [model.createSession(), model.createSession(), model.createSession()];
      for (const s of [a, c, d]) s.step([1, 2]);
      const before = a.logits()!;
      expect(() => model.stepBatch([a, a], [3, 4])).toThrow(/kle_model_step_batch: invalid argument/);
      d.setKvBudget(64, 2, 8, 0.9);
      expect(() => model.stepBatch([a, d], [3, 4])).toThrow(/invalid argument/);
      expect(() => model.stepBatch([a, c], [3])).toThrow(RangeError);
      expect(() => model.stepBatch([a, c], [3, V])).toThrow(/outside the vocabulary/);
      const other = models[(bi + 1) % models.length]!;
      if (other !== model) expect(() => model.stepBatch([a, other.createSession()], [3, 4])).toThrow(/another model/);
      c.free();
      expect(() => model.stepBatch([a, c], [3, 4])).toThrow(/freed/);
      expect(a.pos).toBe(2);
      expect(a.logits()).toEqual(before);
      for (const s of [a, d]) s.free();
    });
  }
});

describe('the step batcher (src/generate/batcher.ts)', async () => {
  const [b] = await allBackends();
  const model = await loadTiny(b!);
  it('runs the steps asked for in one turn as one forward; a session freed meanwhile fails alone', async () => {
    const batcher = new StepBatcher(model);
    const ss = [0, 1, 2, 3].map((i) => {
      const s = model.createSession();
      s.step(tokens(5 + i, V, 50 + i));
      return s;
    });
    const ref = ss.map((s) => {
      const r = model.createSession();
      r.load(s.save());
      r.step([7]);
      const t = argmax(r.logits()!);
      r.free();
      return t;
    });
    const steps = ss.map((s) => batcher.step(s, 7));
    ss[1]!.free();
    const results = await Promise.allSettled(steps);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/freed while its step waited/);
    expect(batcher.stats).toMatchObject({ steps: 1, tokens: 3, lastBatch: 3 });
    for (const i of [0, 2, 3]) expect(argmax(ss[i]!.logits()!)).toBe(ref[i]);
    for (const i of [0, 2, 3]) ss[i]!.free();
  });
});
