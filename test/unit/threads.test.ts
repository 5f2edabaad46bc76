// The engine's worker threads (engine/model/pool.c): a matmul split by weight rows, KDA and MLA
// split by heads give the same logits to the bit at any thread count, for every weight format's
// path, natively (pthreads) and in the wasm threads build (workers on one shared memory); the
// other wasm builds report one thread and stay there.
import { describe, expect, it } from 'vitest';
import { parseKimiConfig } from '../../src/engine/config.js';
import { EngineModel } from '../../src/engine/engine.js';
import { placeHfCheckpoint } from '../../src/weights/hf-loader.js';
import { syntheticWeights } from '../../src/weights/synthetic.js';
import { defaultModelDir, loadModelFromDirectory, loadNativeBackend, loadWasmBackend } from '../../src/node.js';
import { tokens } from '../helpers/tiny-model.js';
import { hfToGguf } from '../../src/weights/to-gguf.js';
import { parseSafetensors } from '../../src/formats/safetensors.js';
import { Kernels } from '../../src/engine/kernels.js';
import type { KernelBackend } from '../../src/engine/backend.js';
import { loadModel } from '../../src/model/load.js';
import { sourceFromFiles } from '../../src/formats/source.js';

// wide enough that every matmul splits into several 64-row slices and passes the size threshold,
// and that the KDA heads (4 x 128 x 128 a step) and, past ~460 cached rows, the MLA decode's
// heads are handed out too
const WIDE = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 1024, hidden_size: 256, intermediate_size: 512,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4, kv_lora_rank: 64, q_lora_rank: null, qk_nope_head_dim: 32,
  qk_rope_head_dim: 16, v_head_dim: 32, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  linear_attn_config: { kda_layers: [1], full_attn_layers: [2], num_heads: 4, head_dim: 128, short_conv_kernel_size: 4 },
  num_experts: 8, num_experts_per_token: 2, num_shared_experts: 1, moe_intermediate_size: 128, first_k_dense_replace: 1,
  moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid', routed_scaling_factor: 2.446,
  use_grouped_topk: true, num_expert_group: 1, topk_group: 1,
};

describe('threads', () => {
  const native = loadNativeBackend();
  const config = parseKimiConfig(WIDE);
  const prompt = tokens(500, 1024, 5);

  async function models(b: KernelBackend): Promise<[string, EngineModel][]> {
    const st = syntheticWeights(WIDE, 3);
    const out: [string, EngineModel][] = [['f32', await placeHfCheckpoint(b, config, [{ name: 'w', bytes: st }])], ['bf16', EngineModel.synthesize(b, config, 3, 'bf16')]];
    const kernels = new Kernels(native);
    for (const w of ['Q8_0', 'Q4_0', 'Q4_K_M'] as const) {
      const gguf = hfToGguf(WIDE, parseSafetensors(st), kernels, { weights: w });
      out.push([w, (await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend: b })).engine]);
    }
    return out;
  }

  async function sameAtEveryCount(b: KernelBackend, counts: number[]): Promise<void> {
    for (const [fmt, m] of await models(b)) {
      expect(m.threads()).toBeGreaterThanOrEqual(1);
      const runs: Float32Array[][] = [];
      for (const n of counts) {
        expect(m.threads(n)).toBe(n);
        expect(await m.threadsReady()).toBe(n); // wasm threads: the workers have started
        const s = m.createSession();
        const pre = s.forward(prompt, true);
        const dec = [s.forward([3]), s.forward([4])];
        s.free();
        runs.push([pre, ...dec]);
      }
      for (const r of runs.slice(1)) r.forEach((a, i) => expect(a, `${b.name} ${fmt}, output ${i}`).toEqual(runs[0]![i]));
      m.free();
    }
  }

  it('the native engine gives the same logits on 1, 2 and 5 threads (prefill and decode, every format; matmuls, KDA and MLA heads)', async () => {
    await sameAtEveryCount(native, [1, 2, 5]);
  });

  it('so does the wasm threads build, its threads workers on one shared memory (1, 2 and 3 threads)', async () => {
    const wasm = await loadWasmBackend('threads');
    expect(wasm.sharedMemory).toBe(true);
    await sameAtEveryCount(wasm, [1, 2, 3]);
  }, 120_000);

  it('the wasm threads build generates what the SIMD build does, sampling included (its logits copied out of the shared memory)', async () => {
    const out: number[][] = [];
    for (const backend of ['wasm', 'wasm-threads'] as const) {
      const m = await loadModelFromDirectory(defaultModelDir(), { backend });
      m.engine.threads(2);
      const toks: number[] = [];
      for await (const ev of m.createSession().generate('The jury said', { maxTokens: 16, temperature: 0.9, topP: 0.95, seed: 7 }))
        if (ev.type === 'token' && ev.token >= 0) toks.push(ev.token);
      out.push(toks);
      m.free();
    }
    expect(out[0]!.length).toBe(16);
    expect(out[1]).toEqual(out[0]);
  });

  it('refuses a thread count outside 1..256; wasm runs one thread', async () => {
    const m = EngineModel.synthesize(native, config, 1, 'bf16');
    expect(() => m.threads(0)).toThrow(RangeError);
    expect(() => m.threads(257)).toThrow(RangeError);
    m.free();
    const w = EngineModel.synthesize(await loadWasmBackend('simd'), config, 1, 'bf16');
    expect(w.threads()).toBe(1);
    expect(w.threads(4)).toBe(1);
    w.free();
  });
});
