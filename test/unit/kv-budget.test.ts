// The bounded MLA cache (docs/kv-budget.md) on every CPU backend: the engine's choice of rows
// against the float64 model with full attention and a plain sort (src/verify/model-ref64.ts),
// no change at all while the budget holds the context, bounded memory, state blobs that carry
// the compacted caches, and the errors bad settings and forged blobs get.
import { describe, expect, it } from 'vitest';
import type { KernelBackend } from '../../src/engine/backend.js';
import { parseKimiConfig, type KimiConfig } from '../../src/engine/config.js';
import type { EngineModel } from '../../src/engine/engine.js';
import { layerKinds, sessionBlobBytes } from '../../src/engine/layer-kinds.js';
import { parseSafetensors } from '../../src/formats/safetensors.js';
import { kvBudgetOf } from '../../src/generate/kv-budget.js';
import { modelForward64, safetensorsGetter, type RefKvBudget, type RefOptions } from '../../src/verify/model-ref64.js';
import { relErr } from '../../src/verify/relerr.js';
import { placeHfCheckpoint } from '../../src/weights/hf-loader.js';
import { syntheticWeights, TINY_CONFIG } from '../../src/weights/synthetic.js';
import { Model } from '../../src/model/model.js';
import { Kernels } from '../../src/engine/kernels.js';
import { sourceFromFiles } from '../../src/formats/source.js';
import { loadModel } from '../../src/model/load.js';
import { hfToGguf } from '../../src/weights/to-gguf.js';
import { allBackends, tokens } from '../helpers/tiny-model.js';

// f32 engine vs float64, as model-ref64.test.ts: summation order only. A different choice of
// rows moves the logits by 1e-2 or more.
const TOL = 2e-5;

// two MLA layers (2 and 4, counted from 1), each choosing its own rows
const TWO_MLA = {
  ...TINY_CONFIG,
  linear_attn_config: { ...TINY_CONFIG.linear_attn_config, kda_layers: [1, 3], full_attn_layers: [2, 4] },
};

interface Case {
  config: KimiConfig;
  weights: Uint8Array;
}

function makeCase(): Case {
  return { config: parseKimiConfig(TWO_MLA), weights: syntheticWeights(TWO_MLA, 41) };
}

function reference(c: Case, toks: number[], opts: RefOptions): Float64Array {
  return modelForward64(c.config, safetensorsGetter(c.weights), toks, opts);
}

async function load(b: KernelBackend, c: Case): Promise<EngineModel> {
  return placeHfCheckpoint(b, c.config, [{ name: 'w.safetensors', bytes: c.weights }]);
}

/** logits of every token when the tokens go in as these forward calls */
function runCalls(m: EngineModel, toks: number[], calls: number[], kv: RefKvBudget, pinned = 0): { logits: Float32Array; lens: number[] } {
  const s = m.createSession();
  s.setKvBudget(kv.budget, kv.sink, kv.window, kv.decay, kv.policy);
  const V = m.config.vocabSize;
  const logits = new Float32Array(toks.length * V);
  const lens: number[] = [];
  let at = 0;
  for (const n of calls) {
    if (at < pinned) s.pin(true);
    logits.set(s.forward(toks.slice(at, at + n), true), at * V);
    s.pin(false);
    at += n;
    lens.push(s.kvLength);
  }
  s.free();
  return { logits, lens };
}

describe('the bounded MLA cache', async () => {
  const backends = await allBackends();
  const c = makeCase();
  const toks = tokens(72, c.config.vocabSize, 9);
  const kv = { budget: 16, sink: 2, window: 4, decay: 0.9 };

  it('decodes token by token as the float64 model with full attention, then the same selection', async () => {
    const ref = reference(c, toks, { kv });
    for (const b of backends) {
      const m = await load(b, c);
      const { logits, lens } = runCalls(m, toks, toks.map(() => 1), kv);
      expect(relErr(logits, ref), b.name).toBeLessThan(TOL);
      expect(Math.max(...lens)).toBe(kv.budget);
      m.free();
    }
    // the selection matters: the newest rows alone give other logits
    const recent = { ...kv, policy: 'recent' as const };
    const recentRef = reference(c, toks, { kv: recent });
    expect(relErr(recentRef, ref)).toBeGreaterThan(1e-3);
    for (const b of backends) {
      const m = await load(b, c);
      const { logits } = runCalls(m, toks, toks.map(() => 1), recent);
      expect(relErr(logits, recentRef), `${b.name} recent`).toBeLessThan(TOL);
      m.free();
    }
  });

  it('drops many rows at once after a prefill batch, and keeps pinned prompt tokens', async () => {
    const rest = [1, 1, 1, 20, ...Array.from({ length: 9 }, () => 1)];
    const refs: Float64Array[] = [];
    for (const pinned of [0, 8]) {
      const calls = pinned ? [pinned, 40 - pinned, ...rest] : [40, ...rest];
      const opts = { kv: { ...kv, budget: 24 }, calls, pinned };
      const ref = reference(c, toks, opts);
      refs.push(ref);
      for (const b of backends) {
        const m = await load(b, c);
        const { logits, lens } = runCalls(m, toks, calls, opts.kv, pinned);
        expect(relErr(logits, ref), `${b.name} pinned ${pinned}`).toBeLessThan(TOL);
        expect(lens.at(pinned ? 1 : 0)).toBe(24);
        expect(Math.max(...lens)).toBe(24);
        m.free();
      }
    }
    // pinning kept rows the scores would have dropped
    expect(relErr(refs[1]!, refs[0]!)).toBeGreaterThan(1e-3);
  });

  it('a call of several batches drops rows after each (a budget above the batch)', async () => {
    const long = tokens(150, c.config.vocabSize, 12);
    const opts = { kv: { ...kv, budget: 100, window: 20 }, calls: [64, 64, 22] };
    const ref = reference(c, long, opts);
    for (const b of backends) {
      const m = await load(b, c);
      const { logits, lens } = runCalls(m, long, [150], opts.kv);
      expect(relErr(logits, ref), b.name).toBeLessThan(TOL);
      expect(lens).toEqual([100]);
      m.free();
    }
  });

  it('a learned importance head (kv_importance_head) scores rows once; safetensors and GGUF carry it', async () => {
    const json = { ...TWO_MLA, kv_importance_head: true };
    const learned: Case = { config: parseKimiConfig(json), weights: syntheticWeights(json, 43) };
    expect(parseSafetensors(learned.weights).tensors.has('model.layers.1.self_attn.kv_importance.weight')).toBe(true);
    const opts = { kv: { ...kv, policy: 'learned' as const }, calls: [30, ...Array.from({ length: 42 }, () => 1)] };
    const ref = reference(learned, toks, opts);
    // it is not the attention policy under another name
    expect(relErr(ref, reference(learned, toks, { ...opts, kv: { ...kv } }))).toBeGreaterThan(1e-3);
    for (const b of backends) {
      const m = await load(b, learned);
      const { logits } = runCalls(m, toks, opts.calls, opts.kv);
      expect(relErr(logits, ref), `${b.name} learned`).toBeLessThan(TOL);
      // a model without the head refuses the policy
      const plain = await load(b, c);
      expect(() => plain.createSession().setKvBudget(16, 2, 4, 0.9, 'learned')).toThrow(/invalid argument/);
      m.free();
      plain.free();
    }
    // the default policy of a model with a head is the learned one; GGUF keeps the head
    const kernels = new Kernels(backends[0]!);
    const gguf = hfToGguf(json, parseSafetensors(learned.weights), kernels);
    const fromGguf = await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend: backends[2]! });
    expect(fromGguf.config.kvImportanceHead).toBe(true);
    const s = fromGguf.createSession({ kvBudget: 16 });
    expect(s.kvBudget?.policy).toBe('learned');
    s.free();
    fromGguf.free();
  });

  it('changes nothing while the budget holds the whole context (bit for bit on the CPU)', async () => {
    for (const b of backends) {
      const m = await load(b, c);
      const free = m.createSession();
      const want = free.forward(toks.slice(0, 30), true);
      const wantDecode = toks.slice(30, 50).map((t) => free.forward([t]));
      const s = m.createSession();
      s.setKvBudget(50, 4, 8, 0.95);
      expect(s.forward(toks.slice(0, 30), true)).toEqual(want);
      toks.slice(30, 50).forEach((t, i) => expect(s.forward([t])).toEqual(wantDecode[i]));
      expect(s.kvLength).toBe(50);
      free.free();
      s.free();
      m.free();
    }
  });

  it('holds memory flat once the budget is reached', async () => {
    const m = await load(backends[2]!, c);
    const s = m.createSession();
    s.setKvBudget(16, 2, 4, 0.9);
    const sizes: number[] = [];
    for (const t of tokens(200, c.config.vocabSize, 3)) {
      s.forward([t]);
      sizes.push(s.stateSize());
    }
    expect(new Set(sizes.slice(15)).size).toBe(1);
    expect(sizes.at(-1)).toBe(sessionBlobBytes(c.config, 200, 16));
    expect(s.pos).toBe(200);
    s.free();
    m.free();
  });

  it('moves a budgeted state between sessions and backends (save, load, continue)', async () => {
    const models = await Promise.all(backends.map((b) => load(b, c)));
    const first = models[0]!.createSession();
    first.setKvBudget(16, 2, 4, 0.9);
    first.forward(toks.slice(0, 40));
    toks.slice(40, 50).forEach((t) => first.forward([t]));
    const blob = first.save();
    const want = toks.slice(50, 60).map((t) => first.forward([t]));
    for (const m of models) {
      const s = m.createSession();
      s.load(blob);
      expect(s.kvSettings()).toEqual({ kvBudget: 16, sink: 2, window: 4, decay: expect.closeTo(0.9, 6) as number, policy: 'attention' });
      expect(s.kvLength).toBe(16);
      expect(s.pos).toBe(50);
      const got = toks.slice(50, 60).map((t) => s.forward([t]));
      got.forEach((g, i) => expect(relErr(g, want[i]!), m.backend.name).toBeLessThan(1e-5));
      // its own blob matches the one it loaded before it moved on
      s.free();
    }
    first.free();
    for (const m of models) m.free();
  });

  it('refuses bad settings and forged blobs, changing nothing', async () => {
    const m = await load(backends[0]!, c);
    const s = m.createSession();
    for (const [b, sink, win, d] of [[0, 0, 0, 0.5], [-3, 0, 0, 0.5], [8, 4, 4, 0.5], [8, 0, 0, 1.5], [8, 0, 0, Number.NaN]] as const)
      if (b !== 0) expect(() => s.setKvBudget(b, sink, win, d)).toThrow(/invalid argument/);
    s.forward(toks.slice(0, 20));
    expect(() => s.setKvBudget(10, 2, 2, 0.9)).toThrow(/20 rows cached/);
    s.setKvBudget(24, 2, 2, 0.9);
    s.forward(toks.slice(20, 30));
    expect(s.kvLength).toBe(24);
    expect(() => s.setKvBudget(0, 0, 0, 0)).toThrow(/invalid argument/); // rows were dropped: the bound stays
    const blob = s.save();
    const before = s.save();
    const forge = (edit: (dv: DataView) => void): Uint8Array => {
      const x = blob.slice();
      edit(new DataView(x.buffer));
      const n = x.length - 8;
      let h = 0xcbf29ce484222325n;
      for (let i = 0; i < n; i++) h = ((h ^ BigInt(x[i]!)) * 0x100000001b3n) & 0xffffffffffffffffn;
      new DataView(x.buffer).setBigUint64(n, h, true);
      return x;
    };
    // a row said to hold a token at or past the position; a budget below its rows; a bad decay
    const [kda0] = layerKinds(c.config, 0), [mla1] = layerKinds(c.config, 1);
    const infoAt = 56 + 4 * (kda0.stateFloats(c.config) + 24 * mla1.cacheRowFloats(c.config));
    const forged = [
      forge((dv) => dv.setUint32(infoAt, 30, true)),
      forge((dv) => dv.setUint32(32, 20, true)),
      forge((dv) => dv.setFloat32(44, 2, true)),
      forge((dv) => dv.setUint32(48, 8, true)), // the learned policy, on a model without a head
      forge((dv) => dv.setUint32(48, 1 | dv.getUint32(48, true), true)), // no such flag (pinning is never saved)
    ];
    expect(() => s.load(forge(() => undefined))).not.toThrow();
    for (const f of forged) expect(() => s.load(f)).toThrow(/malformed/);
    expect(s.save()).toEqual(before);
    s.free();
    m.free();
  });

  it('checks the host-side settings and fills in the defaults', async () => {
    expect(kvBudgetOf({ kvBudget: 1024 })).toEqual({ kvBudget: 1024, sink: 4, window: 256, decay: 1, keepPrompt: false, policy: 'attention' });
    expect(() => kvBudgetOf({ kvBudget: 8, policy: 'h2o' as 'recent' })).toThrow(/policy must be one of attention, recent/);
    expect(kvBudgetOf({ kvBudget: 3 })).toMatchObject({ sink: 0, window: 0 });
    for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 31]) expect(() => kvBudgetOf({ kvBudget: bad })).toThrow(/kvBudget must be an integer/);
    expect(() => kvBudgetOf({ kvBudget: 8, sink: 4, window: 4 })).toThrow(/must exceed sink/);
    expect(() => kvBudgetOf({ kvBudget: 8, decay: 2 })).toThrow(/decay/);
    const model = new Model(await load(backends[0]!, c), null, 'two-mla');
    const s = model.createSession({ kvBudget: { kvBudget: 20, sink: 2, window: 4, keepPrompt: true } });
    expect(() => s.prefill(toks.slice(0, 15))).toThrow(/15 prompt tokens do not fit kvBudget 20 less sink 2 and window 4 \(14\)/);
    expect(s.length).toBe(0);
    s.prefill(toks.slice(0, 14));
    expect(() => s.prefill([1])).toThrow(/15 prompt tokens/);
    for (let i = 0; i < 30; i++) s.decode({ temperature: 0 });
    expect(s.kvLength).toBe(20);
    expect(s.length).toBe(44);
    s.free();
    // a generate call may set the bound; a bad one is refused before any token
    const g = model.createSession();
    for await (const ev of g.generate(toks.slice(0, 10), { kvBudget: 8, maxTokens: 20, temperature: 0 })) void ev;
    expect([g.kvLength, g.length, g.kvBudget?.kvBudget]).toEqual([8, 30, 8]);
    await expect(async () => {
      for await (const ev of g.generate([1], { kvBudget: { kvBudget: 8, decay: -1 } })) void ev;
    }).rejects.toThrow(/decay must be a number in \[0, 1\]/);
    expect(g.length).toBe(30);
    g.free();
    model.free();
  });
});

