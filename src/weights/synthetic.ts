/**
 * Synthetic Kimi Linear checkpoints: a config.json and one safetensors file of seeded random
 * weights with exactly the names and shapes KimiLinearForCausalLM uses. They make the embedded
 * random test model (models/make-random-tiny.ts), the engine's tests, and the peer comparison's inputs.
 */
import { parseKimiConfig, type KimiConfig } from '../engine/config.js';
import { expertTensors, layerTensors, type LayerTensor } from '../engine/layer-kinds.js';
import { writeSafetensors, type TensorToWrite } from '../formats/safetensors-writer.js';

/** The config.json of the default model: every layer kind, dense and MoE blocks, shared experts. */
export const TINY_CONFIG = {
  architectures: ['KimiLinearForCausalLM'],
  model_type: 'kimi_linear',
  vocab_size: 512,
  hidden_size: 128,
  intermediate_size: 256,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  head_dim: 48,
  kv_lora_rank: 64,
  q_lora_rank: null,
  qk_nope_head_dim: 32,
  qk_rope_head_dim: 16,
  v_head_dim: 32,
  mla_use_nope: true,
  hidden_act: 'silu',
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  rope_scaling: null,
  tie_word_embeddings: false,
  linear_attn_config: { kda_layers: [1, 2, 3], full_attn_layers: [4], num_heads: 4, head_dim: 32, short_conv_kernel_size: 4 },
  num_experts: 8,
  num_experts_per_token: 2,
  num_shared_experts: 1,
  moe_intermediate_size: 64,
  first_k_dense_replace: 1,
  moe_layer_freq: 1,
  moe_renormalize: true,
  moe_router_activation_func: 'sigmoid',
  routed_scaling_factor: 2.446,
  use_grouped_topk: true,
  num_expert_group: 1,
  topk_group: 1,
  bos_token_id: 256,
  eos_token_id: 257,
  pad_token_id: 258,
  model_max_length: 1048576,
  dtype: 'float32',
} as const;

/**
 * Kimi-Linear-48B's attention shapes (KDA 32 heads x 128, MLA 32 heads over a 512 + 64 latent) in
 * 4 layers with 16 small experts: big enough to exercise every kernel at real size, small
 * enough to load in seconds (the CUDA parity test and bench:cuda-engine).
 */
export const ATTENTION_48B_CONFIG = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 4096, hidden_size: 1024, intermediate_size: 2048,
  num_hidden_layers: 4, num_attention_heads: 32, num_key_value_heads: 32, kv_lora_rank: 512, q_lora_rank: null,
  qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  linear_attn_config: { kda_layers: [1, 2, 3], full_attn_layers: [4], num_heads: 32, head_dim: 128, short_conv_kernel_size: 4 },
  num_experts: 16, num_experts_per_token: 4, num_shared_experts: 1, moe_intermediate_size: 256, first_k_dense_replace: 1,
  moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid', routed_scaling_factor: 2.446,
  use_grouped_topk: true, num_expert_group: 1, topk_group: 1, model_max_length: 1 << 22,
};

/**
 * Kimi-Linear-48B-A3B's config.json as Moonshot publishes it (27 layers: 20 KDA with 32 heads x
 * 128, 7 MLA with 32 heads over a 512 + 64 latent; 256 experts, top 8, one shared, the first layer
 * dense; hidden 2304; vocabulary 163,840). With EngineModel.synthesize the engine makes its
 * weights in device memory (about 98 GB in BF16): the full-size model without downloading it.
 */
export const KIMI_LINEAR_48B_CONFIG = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 163840, hidden_size: 2304, intermediate_size: 9216,
  num_hidden_layers: 27, num_attention_heads: 32, num_key_value_heads: 32, kv_lora_rank: 512, q_lora_rank: null,
  qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  linear_attn_config: {
    kda_layers: [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26], full_attn_layers: [4, 8, 12, 16, 20, 24, 27],
    num_heads: 32, head_dim: 128, short_conv_kernel_size: 4,
  },
  num_experts: 256, num_experts_per_token: 8, num_shared_experts: 1, moe_intermediate_size: 1024, first_k_dense_replace: 1,
  moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid', routed_scaling_factor: 2.446,
  use_grouped_topk: true, num_expert_group: 1, topk_group: 1, model_max_length: 1048576,
};

export type ConfigJson = Record<string, unknown>;

/** xorshift32 -> uniform (-1, 1); cheap, seeded, identical on every platform */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 2 ** 32) * 2 - 1;
  };
}

function f32(n: number, r: () => number, scale: number, offset = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = offset + r() * scale;
  return a;
}

function toBf16(a: Float32Array): Uint16Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16; // round to nearest even
  return out;
}

/** Options of {@link syntheticWeights}. */
export interface SyntheticOptions {
  /** matrix dtype (vectors, norms and gates stay F32 as checkpoints keep them) */
  dtype?: 'F32' | 'BF16';
  /**
   * Zero the MoE selection bias (e_score_correction_bias). Moonshot's modeling_kimi.py adds it
   * in place to the sigmoid scores it then gathers the expert weights from, so the bias leaks
   * into the weights there but not in vLLM or llama.cpp (selection only, as DeepSeek-V3
   * defines it; what this engine does). With a zero bias every implementation agrees.
   */
  zeroRouterBias?: boolean;
}

/** One tensor of a KimiLinearForCausalLM checkpoint: its HF name and shape, and how synthetic values fill it. */
export interface CheckpointTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly rows: number;
  readonly cols: number;
  /** stored as F32 whatever the checkpoint's dtype (vectors, norms, gates, the router) */
  readonly f32: boolean;
  readonly hfShape?: readonly number[];
  readonly init: LayerTensor['init'] | { kind: 'embedding' };
}

/** Every tensor a config implies, in the order checkpoints list them (engine/layer-kinds.ts). */
export function checkpointTensors(c: KimiConfig): CheckpointTensor[] {
  const D = c.hiddenSize, V = c.vocabSize;
  const out: CheckpointTensor[] = [];
  const mat = (name: string, rows: number, cols: number, gain?: number): CheckpointTensor =>
    ({ name, shape: [rows, cols], rows, cols, f32: false, init: { kind: 'matrix', ...(gain ? { gain } : {}) } });
  out.push({ name: 'model.embed_tokens.weight', shape: [V, D], rows: V, cols: D, f32: false, init: { kind: 'embedding' } });
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    for (const x of layerTensors(c, l)) {
      out.push({ name: p + x.hf, shape: x.hfShape ?? (x.rows === 1 ? [x.cols] : [x.rows, x.cols]), rows: x.rows, cols: x.cols, f32: x.f32, ...(x.hfShape ? { hfShape: x.hfShape } : {}), init: x.init });
      // routed experts come between the router's bias and the shared experts, as checkpoints list them
      if (x.role === 'MOE_BIAS')
        for (let e = 0; e < c.moe!.numExperts; e++) for (const w of expertTensors(c)) out.push(mat(`${p}block_sparse_moe.experts.${e}.${w.hf}.weight`, w.rows, w.cols));
    }
  }
  out.push({ name: 'model.norm.weight', shape: [D], rows: 1, cols: D, f32: true, init: { kind: 'norm' } });
  if (!c.tieWordEmbeddings) out.push(mat('lm_head.weight', V, D, 4));
  return out;
}

/** A config.json with Gated DeltaNet's gate (one decay per head) in its linear-attention layers. */
export function withHeadGate(cfg: ConfigJson): ConfigJson {
  return { ...cfg, linear_attn_config: { ...(cfg.linear_attn_config as object), gate_type: 'head' } };
}

/**
 * Random weights for a config.json: the tensor set the layer kinds say the config implies
 * (engine/layer-kinds.ts), in checkpoint order. Matrices are scaled by 1/sqrt(fan-in) so
 * activations stay O(1) through the layers and the logits are not flat.
 */
export function syntheticWeights(cfg: ConfigJson, seed: number, opts: SyntheticOptions = {}): Uint8Array {
  const dtype = opts.dtype ?? 'F32';
  const c = parseKimiConfig(cfg);
  const r = rng(seed);
  const t: Record<string, TensorToWrite> = {};
  const D = c.hiddenSize, V = c.vocabSize;
  const put = (name: string, shape: readonly number[], a: Float32Array, vec = false) => {
    t[name] = vec || dtype === 'F32' ? { dtype: 'F32', shape: [...shape], data: a } : { dtype: 'BF16', shape: [...shape], data: toBf16(a) };
  };
  const mat = (name: string, rows: number, cols: number, gain = 1) => put(name, [rows, cols], f32(rows * cols, r, (gain * Math.sqrt(3)) / Math.sqrt(cols)));
  const fill = (name: string, x: Pick<LayerTensor, 'rows' | 'cols' | 'hfShape' | 'init'>) => {
    const n = x.rows * x.cols, shape = x.hfShape ?? (x.rows === 1 ? [x.cols] : [x.rows, x.cols]);
    switch (x.init.kind) {
      case 'matrix': return mat(name, x.rows, x.cols, x.init.gain);
      case 'norm': return put(name, shape, f32(n, r, 0.1, 1), true);
      case 'conv': return put(name, shape, f32(n, r, 0.5), true);
      // decay rates exp(A_log) spread over 1..16
      case 'a_log': return put(name, shape, new Float32Array(n).map(() => Math.log(1 + 15 * (0.5 + 0.5 * r()))), true);
      case 'dt_bias': return put(name, shape, f32(n, r, 1, -1), true);
      case 'router': return put(name, shape, f32(n, r, 2 / Math.sqrt(D)), true);
      case 'router_bias': {
        const bias = f32(n, r, 0.05);
        return put(name, shape, opts.zeroRouterBias ? bias.fill(0) : bias, true);
      }
    }
  };
  for (const x of checkpointTensors(c)) {
    const init = x.init;
    if (init.kind === 'embedding') put(x.name, x.shape, f32(x.rows * x.cols, r, 1));
    else fill(x.name, { rows: x.rows, cols: x.cols, hfShape: x.hfShape, init });
  }
  return writeSafetensors(t, { format: 'pt' });
}
