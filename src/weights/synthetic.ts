/**
 * Synthetic Kimi Linear checkpoints: a config.json and one safetensors file of seeded random
 * weights with exactly the names and shapes KimiLinearForCausalLM uses. They make the embedded
 * default model (models/make-default.ts), the engine's tests, and the peer comparison's inputs.
 */
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

export type ConfigJson = Record<string, unknown>;

/** The keys syntheticWeights reads (a config.json that parseKimiConfig accepts has them). */
interface SynthConfig {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  linear_attn_config: { kda_layers: number[]; num_heads: number; head_dim: number; short_conv_kernel_size: number };
  num_experts: number;
  num_experts_per_token: number;
  num_shared_experts: number;
  moe_intermediate_size: number;
  first_k_dense_replace: number;
  moe_layer_freq?: number;
  tie_word_embeddings?: boolean;
}

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

/**
 * Random weights for a config.json (the tensor set the config implies). Matrices are scaled by
 * 1/sqrt(fan-in) so activations stay O(1) through the layers and the logits are not flat.
 */
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
  /** One forget-gate value per head (f_b_proj and dt_bias of num_heads rows), as KimiConfig.kda.gatePerHead. */
  gatePerHead?: boolean;
}

export function syntheticWeights(cfg: ConfigJson, seed: number, opts: SyntheticOptions = {}): Uint8Array {
  const dtype = opts.dtype ?? 'F32';
  const c = cfg as unknown as SynthConfig;
  const r = rng(seed);
  const t: Record<string, TensorToWrite> = {};
  const D = c.hidden_size, V = c.vocab_size;
  const put = (name: string, shape: number[], a: Float32Array, vec = false) => {
    t[name] = vec || dtype === 'F32' ? { dtype: 'F32', shape, data: a } : { dtype: 'BF16', shape, data: toBf16(a) };
  };
  const mat = (name: string, rows: number, cols: number, gain = 1) => put(name, [rows, cols], f32(rows * cols, r, (gain * Math.sqrt(3)) / Math.sqrt(cols)));
  const norm = (name: string, n: number) => put(name, [n], f32(n, r, 0.1, 1), true);
  put('model.embed_tokens.weight', [V, D], f32(V * D, r, 1));
  const la = c.linear_attn_config;
  const kdaIds = la.kda_layers;
  const H = la.num_heads, dk = la.head_dim, W = la.short_conv_kernel_size;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    norm(`${p}input_layernorm.weight`, D);
    norm(`${p}post_attention_layernorm.weight`, D);
    if (kdaIds.includes(l + 1)) {
      for (const x of ['q', 'k', 'v']) mat(`${p}self_attn.${x}_proj.weight`, H * dk, D);
      for (const x of ['q', 'k', 'v']) put(`${p}self_attn.${x}_conv1d.weight`, [H * dk, 1, W], f32(H * dk * W, r, 0.5), true);
      mat(`${p}self_attn.f_a_proj.weight`, dk, D);
      const HG = opts.gatePerHead ? H : H * dk;
      mat(`${p}self_attn.f_b_proj.weight`, HG, dk);
      const alog = new Float32Array(H).map(() => Math.log(1 + 15 * (0.5 + 0.5 * r())));
      put(`${p}self_attn.A_log`, [1, 1, H, 1], alog, true);
      put(`${p}self_attn.dt_bias`, [HG], f32(HG, r, 1, -1), true);
      mat(`${p}self_attn.b_proj.weight`, H, D);
      mat(`${p}self_attn.g_a_proj.weight`, dk, D);
      mat(`${p}self_attn.g_b_proj.weight`, H * dk, dk);
      norm(`${p}self_attn.o_norm.weight`, dk);
      mat(`${p}self_attn.o_proj.weight`, D, H * dk);
    } else {
      const Hm = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vh = c.v_head_dim, R = c.kv_lora_rank;
      mat(`${p}self_attn.q_proj.weight`, Hm * (nope + rope), D, 2);
      mat(`${p}self_attn.kv_a_proj_with_mqa.weight`, R + rope, D, 2);
      norm(`${p}self_attn.kv_a_layernorm.weight`, R);
      mat(`${p}self_attn.kv_b_proj.weight`, Hm * (nope + vh), R);
      mat(`${p}self_attn.o_proj.weight`, D, Hm * vh);
    }
    const moe = c.num_experts > 0 && l >= c.first_k_dense_replace && l % (c.moe_layer_freq || 1) === 0;
    if (!moe) {
      mat(`${p}mlp.gate_proj.weight`, c.intermediate_size, D);
      mat(`${p}mlp.up_proj.weight`, c.intermediate_size, D);
      mat(`${p}mlp.down_proj.weight`, D, c.intermediate_size);
    } else {
      const E = c.num_experts, MI = c.moe_intermediate_size, S = c.num_shared_experts * MI;
      put(`${p}block_sparse_moe.gate.weight`, [E, D], f32(E * D, r, 2 / Math.sqrt(D)), true);
      const bias = f32(E, r, 0.05);
      put(`${p}block_sparse_moe.gate.e_score_correction_bias`, [E], opts.zeroRouterBias ? bias.fill(0) : bias, true);
      for (let e = 0; e < E; e++) {
        mat(`${p}block_sparse_moe.experts.${e}.w1.weight`, MI, D);
        mat(`${p}block_sparse_moe.experts.${e}.w2.weight`, D, MI);
        mat(`${p}block_sparse_moe.experts.${e}.w3.weight`, MI, D);
      }
      if (S) {
        mat(`${p}block_sparse_moe.shared_experts.gate_proj.weight`, S, D);
        mat(`${p}block_sparse_moe.shared_experts.up_proj.weight`, S, D);
        mat(`${p}block_sparse_moe.shared_experts.down_proj.weight`, D, S);
      }
    }
  }
  norm('model.norm.weight', D);
  if (!cfg.tie_word_embeddings) mat('lm_head.weight', V, D, 4);
  return writeSafetensors(t, { format: 'pt' });
}
