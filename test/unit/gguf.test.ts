import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Kernels } from '../../src/engine/kernels.js';
import type { GgufMeta, GgufTensorToWrite } from '../../src/formats/gguf-writer.js';
import { writeGguf } from '../../src/formats/gguf-writer.js';
import { loadModel } from '../../src/model/load.js';
import { parseSafetensors, tensorF32 } from '../../src/formats/safetensors.js';
import { sourceFromFiles } from '../../src/formats/source.js';
import { hfToGgufParts } from '../../src/weights/to-gguf.js';
import { relErr } from '../../src/verify/relerr.js';
import { syntheticWeights, TINY_CONFIG, withHeadGate } from '../../src/weights/synthetic.js';
import { allBackends, tinyDir, tokens } from '../helpers/tiny-model.js';
import { loadModelFromDirectory } from '../../src/node.js';

const read = (f: string) => readFileSync(join(tinyDir, f));
const cfg = JSON.parse(read('config.json').toString()) as Record<string, unknown>;
const st = parseSafetensors(new Uint8Array(read('model.safetensors')));
const tj = JSON.parse(read('tokenizer.json').toString()) as unknown;
const tc = JSON.parse(read('tokenizer_config.json').toString()) as Record<string, unknown>;
const toks = tokens(70, 512, 5);

describe('GGUF in llama.cpp\'s Kimi-Linear layout', async () => {
  const backends = await allBackends();
  const kernels = new Kernels(backends[0]!);
  const parts = (weights: 'F32' | 'BF16' | 'Q8_0' | 'Q4_0') => hfToGgufParts(cfg, st, kernels, { weights, tokenizerJson: tj, tokenizerConfig: tc });
  const load = (bytes: Uint8Array, b = backends[0]!) => loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend: b });
  const ref = (await loadModelFromDirectory(tinyDir)).createSession().prefill(toks);

  it('BF16 files give exactly the logits of the HF checkpoint (BF16), F32 ones the same within f32 sums; the same tokenizer', async () => {
    for (const w of ['F32', 'BF16'] as const) {
      const p = parts(w);
      const m = await load(writeGguf(p.metadata, p.tensors));
      const got = m.createSession().prefill(toks);
      // the same weights in the same kernels: the same bits. As F32 the same values go through
      // the f32 kernels, whose sums run in another order than the BF16 ones (a one-token BF16
      // matvec multiplies even and odd columns apart): equal but for f32 rounding
      if (w === 'BF16') expect(got).toEqual(ref);
      else expect(relErr(got, ref)).toBeLessThan(1e-6);
      const text = 'Hello, world! Ünïcödé <|im_end|>';
      const hf = await loadModelFromDirectory(tinyDir);
      expect(m.tokenizer!.encode(text)).toEqual(hf.tokenizer!.encode(text));
      expect(m.tokenizer!.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toBe(hf.tokenizer!.applyChatTemplate([{ role: 'user', content: 'Hi' }]));
      expect(m.eosTokenIds).toEqual([257]);
    }
  });

  it('KDA and MLA sizes of their own (heads, head sizes) survive the round trip: HF -> GGUF -> the same logits', async () => {
    // 4 KDA heads of 32 beside 6 MLA heads (nope 24, rope 8, value 40, latent 48): the GGUF
    // carries each kind's head count (attention.head_count for MLA, as llama.cpp reads it;
    // kda.head_count beside kda.head_dim)
    const own = { ...TINY_CONFIG, num_attention_heads: 6, num_key_value_heads: 6, qk_nope_head_dim: 24, qk_rope_head_dim: 8, v_head_dim: 40, kv_lora_rank: 48 };
    const bytes = syntheticWeights(own, 41);
    const hf = await loadModel(sourceFromFiles({ 'config.json': JSON.stringify(own), 'model.safetensors': bytes }), { backend: backends[0]! });
    const p = hfToGgufParts(own, parseSafetensors(bytes), kernels, { weights: 'F32' });
    expect(p.metadata['kimi-linear.attention.head_count']).toEqual({ type: 'u32', value: 6 });
    expect(p.metadata['kimi-linear.kda.head_count']).toEqual({ type: 'u32', value: 4 });
    const m = await load(writeGguf(p.metadata, p.tensors));
    expect(m.config.kda.numHeads).toBe(4);
    expect(m.config.mla).toEqual(hf.config.mla);
    expect(m.createSession().prefill(toks)).toEqual(hf.createSession().prefill(toks));
  });

  it('Gated DeltaNet\'s gate (one decay per head) and tied embeddings survive the round trip, the gate told by its shape', async () => {
    const gdn = withHeadGate({ ...TINY_CONFIG, tie_word_embeddings: true });
    const bytes = syntheticWeights(gdn, 43);
    const hf = await loadModel(sourceFromFiles({ 'config.json': JSON.stringify(gdn), 'model.safetensors': bytes }), { backend: backends[0]! });
    expect(hf.config.kda.gatePerHead).toBe(true);
    const p = hfToGgufParts(gdn, parseSafetensors(bytes), kernels, { weights: 'F32' });
    expect(p.tensors.some((t) => t.name === 'output.weight')).toBe(false);
    const m = await load(writeGguf(p.metadata, p.tensors));
    expect(m.config.kda.gatePerHead).toBe(true);
    expect(m.config.tieWordEmbeddings).toBe(true);
    expect(m.createSession().prefill(toks)).toEqual(hf.createSession().prefill(toks));
  });

  for (const w of ['Q8_0', 'Q4_0'] as const) {
    it(`${w}: every backend gives the same logits, near f32 math on the dequantized weights`, async () => {
      const p = parts(w);
      const deq: GgufTensorToWrite[] = p.tensors.map((t) => {
        if (t.type === 'F32') return t;
        const n = t.ne.reduce((a, b) => a * b, 1);
        const f = kernels.dequantize(w === 'Q8_0' ? 'q8_0' : 'q4_0', t.data, n);
        return { ...t, type: 'F32', data: new Uint8Array(f.buffer) };
      });
      const f32 = (await load(writeGguf(p.metadata, deq))).createSession().prefill(toks);
      const qs: Float32Array[] = [];
      for (const b of backends) qs.push((await load(writeGguf(p.metadata, p.tensors), b)).createSession().prefill(toks));
      // the backends multiply the same integers (matmul_q8.c) and differ in the order of float
      // sums, which can move an activation across a rounding boundary of its int8 code: one step
      // of one block, which this random model's layers amplify (measured rel L2 under 1e-6 for
      // Q8_0 and 1.1e-2 for Q4_0 between wasm and native; each matmul alone agrees to 1e-5)
      for (const q of qs.slice(1)) expect(relErr(q, qs[0]!)).toBeLessThan(0.05);
      // the activations are quantized per block of 32 too, as llama.cpp multiplies these formats:
      // measured rel L2 4.7e-2 (Q8_0) and 4.1e-2 (Q4_0) against f32 activations on this random
      // model after 70 tokens (each matmul's own error is bounded in test/unit/matmul.test.ts)
      expect(relErr(qs[0]!, f32)).toBeLessThan(0.1);
      // against the unquantized model: measured rel L2 3.1e-2 (Q8_0) and 0.73 (Q4_0) on this
      // random-weight model after 70 tokens; random weights amplify weight noise far more than
      // trained ones, so only Q8_0 gets a bound here
      if (w === 'Q8_0') expect(relErr(f32, ref)).toBeLessThan(0.1);
    });
  }

  // kimi-edge convert --type q4_k_m: rows of 256 values take K-quants written by our encoders
  it('Q4_K_M: Q4_K rows, Q6_K LM head and the down projections llama-quantize gives more bits, Q8_0 where rows are not 256 long; every backend near the dequantized file', async () => {
    const wide = { ...TINY_CONFIG, hidden_size: 256, intermediate_size: 512, moe_intermediate_size: 256, num_hidden_layers: 8,
      linear_attn_config: { ...TINY_CONFIG.linear_attn_config, kda_layers: [1, 2, 3, 5, 6, 7], full_attn_layers: [4, 8], head_dim: 64 } };
    const p = hfToGgufParts(wide, parseSafetensors(syntheticWeights(wide, 47)), kernels, { weights: 'Q4_K_M' });
    // layers 0 and 7 (the first and last eighth) and every third between from the first eighth: 3, 6
    const more = new Set([0, 3, 6, 7]);
    const types = new Map<string, number>();
    for (const t of p.tensors) {
      types.set(t.type, (types.get(t.type) ?? 0) + 1);
      if (t.type === 'F32') continue;
      const layer = Number(/^blk\.(\d+)\./.exec(t.name)?.[1] ?? -1);
      const want = t.ne[0]! % 256 ? 'Q8_0' : t.name === 'output.weight' || (/\.ffn_down/.test(t.name) && more.has(layer)) ? 'Q6_K' : 'Q4_K';
      expect(t.type, t.name).toBe(want);
    }
    expect(types.get('Q4_K')).toBeGreaterThan(20);
    expect(types.get('Q6_K')).toBeGreaterThan(4);
    // the writer: each quantized matrix within its encoder's error of the checkpoint's values
    // (relative RMS measured 0.055 for Q4_K, 0.013 for Q6_K, 0.004 for Q8_0 on these weights)
    const src = parseSafetensors(syntheticWeights(wide, 47));
    const tol = { Q4_K: 0.06, Q6_K: 0.015, Q8_0: 0.005 } as Record<string, number>;
    const lm = p.tensors.find((t) => t.name === 'output.weight')!;
    const blk1q = p.tensors.find((t) => t.name === 'blk.1.attn_q.weight')!;
    for (const [t, hf] of [[lm, 'lm_head.weight'], [blk1q, 'model.layers.1.self_attn.q_proj.weight']] as const) {
      const want = tensorF32(src.tensors.get(hf)!);
      const got = kernels.dequantize(t.type.toLowerCase() as 'q4_k' | 'q6_k', t.data, want.length);
      expect(relErr(got, want), t.name).toBeLessThan(tol[t.type]!);
    }
    // every backend reads the file and multiplies the same integers: logits near each other (a
    // code of an activation can round the other way under another order of float sums, which
    // this random 8-layer model amplifies: measured 2.3e-1 between native's int8 prefill and
    // wasm's f32 tiles, and rel L2 up to 0.65 between int8 and f32 activations per decode step
    // over the same weights, as much for Q8_0 files of this model)
    const qs: Float32Array[] = [];
    for (const b of backends) qs.push((await load(writeGguf(p.metadata, p.tensors), b)).createSession().prefill(toks));
    for (const q of qs.slice(1)) expect(relErr(q, qs[0]!)).toBeLessThan(0.5);
    expect(relErr(qs[1]!, qs[0]!)).toBeLessThan(1e-5); // wasm SIMD and scalar: the same f32 tiles
  });

  describe('malformed files get an error that names the tensor or key', () => {
    const good = parts('Q8_0');
    const withParts = (f: (md: Record<string, GgufMeta>, ts: GgufTensorToWrite[]) => void) => {
      const md = structuredClone(good.metadata);
      const ts = good.tensors.map((t) => ({ ...t, ne: [...t.ne], data: t.data.slice() }));
      f(md, ts);
      return writeGguf(md, ts);
    };
    const file = writeGguf(good.metadata, good.tensors);
    const rejects = (bytes: Uint8Array, re: RegExp) => expect(load(bytes)).rejects.toThrow(re);

    it('not GGUF, unknown version, truncated anywhere', async () => {
      await rejects(new TextEncoder().encode('GGUX and more bytes'), /not a GGUF file/);
      const v = file.slice();
      new DataView(v.buffer).setUint32(4, 7, true);
      await rejects(v, /GGUF version 7 is not supported/);
      await rejects(file.subarray(0, 30), /stream ended .* \(truncated file\?\)/);
      await rejects(file.subarray(0, file.length - 100), /tensor '[^']+': data ends at \d+, but the stream ended at \d+ \(truncated file\?\)/);
    });

    it('counts and lengths that exceed the limits', async () => {
      const big = file.slice();
      new DataView(big.buffer).setBigUint64(8, 1n << 40n, true);
      await rejects(big, /tensor count \d+ exceeds/);
      const key = file.slice();
      new DataView(key.buffer).setBigUint64(24, 1n << 50n, true); // first key's length
      await rejects(key, /metadata key 0 length \d+ exceeds/);
    });

    it('unsupported tensor type, unaligned or overlapping offsets, wrong shape', async () => {
      await rejects(withParts((_, ts) => (ts[0] = { ...ts[0]!, type: 'F16', data: ts[0]!.data.subarray(0, 10) })), /token_embd.weight/);
      const q4k = file.slice();
      // the ggml type of the first tensor info sits after its name and dims: find it by value
      const dv = new DataView(q4k.buffer);
      const name = new TextEncoder().encode('token_embd.weight');
      const at = q4k.findIndex((_, i) => name.every((c, j) => q4k[i + j] === c));
      dv.setUint32(at + name.length + 4 + 16, 16, true); // IQ2_XXS: not read here
      await rejects(q4k, /tensor 'token_embd.weight': ggml type 16 is not supported/);
      dv.setUint32(at + name.length + 4 + 16, 12, true); // Q4_K, on rows of 128 (its blocks are 256)
      await rejects(q4k, /tensor 'token_embd.weight': Q4_K rows of 128 elements do not fill whole blocks/);
      await rejects(withParts((_, ts) => (ts[1] = { ...ts[1]!, ne: [64, 2] })), /tensor 'output_norm.weight': ggml shape \[64, 2\], the metadata needs/);
      const mis = withParts((_, ts) => {
        const i = ts.findIndex((t) => t.name === 'blk.0.ffn_gate.weight');
        ts[i] = { ...ts[i]!, ne: [ts[i]!.ne[1]!, ts[i]!.ne[0]!] };
      });
      await rejects(mis, /tensor 'blk.0.ffn_gate.weight': ggml shape \[256, 128\], the metadata needs \[128, 256\]/);
      const unaligned = file.slice();
      const n2 = new TextEncoder().encode('output_norm.weight');
      const at2 = unaligned.findIndex((_, i) => n2.every((c, j) => unaligned[i + j] === c));
      const offAt = at2 + n2.length + 4 + 8 + 4; // ndims, one dim, type
      new DataView(unaligned.buffer).setBigUint64(offAt, new DataView(unaligned.buffer).getBigUint64(offAt, true) + 4n, true);
      await rejects(unaligned, /tensor 'output_norm.weight': offset \d+ is not aligned to 32/);
      const overlap = file.slice();
      new DataView(overlap.buffer).setBigUint64(offAt, 0n, true);
      await rejects(overlap, /tensors 'token_embd.weight' and 'output_norm.weight' overlap|tensors 'output_norm.weight' and 'token_embd.weight' overlap/);
    });

    it('NaN in an F32 tensor and in a Q8_0 block scale', async () => {
      await rejects(withParts((_, ts) => new DataView(ts[1]!.data.buffer).setFloat32(8, NaN, true)), /output_norm.weight': value 2 is not finite/);
      await rejects(withParts((_, ts) => new DataView(ts[0]!.data.buffer).setUint16(34 * 3, 0x7e00, true)), /token_embd.weight': block 3 has a scale that is not finite/);
    });

    it('missing, unknown and doubled tensors; wrong metadata', async () => {
      await rejects(withParts((_, ts) => ts.splice(ts.findIndex((t) => t.name === 'blk.3.attn_v_b.weight'), 1)), /blk.3 has attn_v_b missing/);
      await rejects(withParts((_, ts) => ts.splice(ts.findIndex((t) => t.name === 'blk.1.ssm_beta.weight'), 1)), /missing tensor for KDA_BETA of layer 1/);
      await rejects(withParts((_, ts) => ts.push({ ...ts[1]!, name: 'blk.0.attn_kv_a_norm.weight' })), /tensor 'blk.0.attn_kv_a_norm.weight' is not part of kimi-linear/);
      await rejects(withParts((md) => (md['general.architecture'] = { type: 'str', value: 'deepseek2' })), /general.architecture: "deepseek2" is not kimi-linear/);
      await rejects(withParts((md) => (md['kimi-linear.attention.head_count_kv'] = { type: 'u32', value: 1 })), /head_count_kv: must be a per-layer array/);
      await rejects(withParts((md) => delete md['kimi-linear.kda.head_dim']), /kimi-linear.kda.head_dim: missing from the GGUF metadata/);
      await rejects(withParts((_, ts) => new DataView(ts.find((t) => t.name === 'blk.0.ssm_a')!.data.buffer).setFloat32(0, 0.5, true)), /ssm_a': A must be negative/);
    });
  });
});
