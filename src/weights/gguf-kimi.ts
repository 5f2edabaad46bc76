/**
 * Kimi Linear in GGUF, with llama.cpp's names and conventions (its convert_hf_to_gguf.py
 * KimiLinearModel and its kimi-linear loader): metadata under "kimi-linear.", KDA tensors as
 * ssm_* (A stored as -exp(A_log), dt_bias as ssm_dt.bias, conv as [d_conv, 1, C, 1]), MLA's
 * kv_b split into attn_k_b (transposed per head) and attn_v_b, experts stacked into 3-D
 * tensors, the router's selection bias as exp_probs_b.bias.
 */
import { ConfigError, type KimiConfig } from '../engine/config.js';
import { expertTensors, layerTensors } from '../engine/layer-kinds.js';
import type { GgufValue } from '../formats/gguf.js';
import type { Role } from '../engine/roles.js';

export const ARCH = 'kimi-linear';

function need(md: ReadonlyMap<string, GgufValue>, key: string): GgufValue {
  const v = md.get(key);
  if (v === undefined) throw new ConfigError(key, 'missing from the GGUF metadata');
  return v;
}

function num(md: ReadonlyMap<string, GgufValue>, key: string, fallback?: number): number {
  const v = md.get(key);
  if (v === undefined) {
    if (fallback !== undefined) return fallback;
    throw new ConfigError(key, 'missing from the GGUF metadata');
  }
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number') return v;
  if (Array.isArray(v) && v.length && v.every((x) => x === v[0])) return Number(v[0]);
  throw new ConfigError(key, `expected a number, got ${JSON.stringify(v, (_, x: unknown) => (typeof x === 'bigint' ? Number(x) : x))}`);
}

/** An HF-style config.json object from GGUF metadata (then checked by parseKimiConfig). */
export function ggufToHfConfig(md: ReadonlyMap<string, GgufValue>, vocabFromTensors: number | null): Record<string, unknown> {
  const arch = need(md, 'general.architecture');
  if (arch !== ARCH) throw new ConfigError('general.architecture', `"${String(arch)}" is not ${ARCH}`);
  const k = (s: string) => `${ARCH}.${s}`;
  const L = num(md, k('block_count'));
  const kvHeads = md.get(k('attention.head_count_kv'));
  if (!Array.isArray(kvHeads) || kvHeads.length !== L) throw new ConfigError(k('attention.head_count_kv'), 'must be a per-layer array (0 marks a KDA layer)');
  const kda: number[] = [], full: number[] = [];
  kvHeads.forEach((h, i) => (Number(h) === 0 ? kda : full).push(i + 1));
  const qLora = md.get(k('attention.q_lora_rank'));
  if (qLora !== undefined && Number(qLora) !== 0) throw new ConfigError(k('attention.q_lora_rank'), 'a low-rank q path is not supported');
  const act = md.get(k('hidden_activation'));
  if (act !== undefined && act !== 'silu') throw new ConfigError(k('hidden_activation'), `"${String(act)}" is not silu`);
  const rope = num(md, k('rope.dimension_count'));
  const gating = num(md, k('expert_gating_func'), 0);
  const tokens = md.get('tokenizer.ggml.tokens');
  const lowerBound = md.get(k('kda.gate_lower_bound'));
  const eos = md.get('tokenizer.ggml.eos_token_id');
  const bos = md.get('tokenizer.ggml.bos_token_id');
  return {
    architectures: ['KimiLinearForCausalLM'],
    model_type: 'kimi_linear',
    vocab_size: num(md, k('vocab_size'), Array.isArray(tokens) ? tokens.length : (vocabFromTensors ?? undefined)),
    hidden_size: num(md, k('embedding_length')),
    intermediate_size: num(md, k('feed_forward_length'), 0),
    num_hidden_layers: L,
    num_attention_heads: num(md, k('attention.head_count')),
    num_key_value_heads: num(md, k('attention.head_count')),
    kv_lora_rank: full.length ? num(md, k('attention.kv_lora_rank')) : 0,
    q_lora_rank: null,
    qk_rope_head_dim: rope,
    qk_nope_head_dim: full.length ? num(md, k('attention.key_length_mla')) - rope : 0,
    v_head_dim: full.length ? num(md, k('attention.value_length_mla')) : 0,
    mla_use_nope: true,
    rms_norm_eps: num(md, k('attention.layer_norm_rms_epsilon')),
    linear_attn_config: {
      kda_layers: kda,
      full_attn_layers: full,
      // files llama.cpp writes have one head count for both kinds; ours say KDA's apart
      num_heads: num(md, k('kda.head_count'), num(md, k('attention.head_count'))),
      head_dim: num(md, k('kda.head_dim')),
      short_conv_kernel_size: num(md, k('ssm.conv_kernel')),
      ...(lowerBound !== undefined ? { gate_lower_bound: Number(lowerBound) } : {}),
    },
    num_experts: num(md, k('expert_count'), 0),
    num_experts_per_token: num(md, k('expert_used_count'), 0),
    num_shared_experts: num(md, k('expert_shared_count'), 0),
    moe_intermediate_size: num(md, k('expert_feed_forward_length'), 0),
    first_k_dense_replace: num(md, k('leading_dense_block_count'), 0),
    moe_layer_freq: 1,
    moe_renormalize: md.get(k('expert_weights_norm')) ?? true,
    moe_router_activation_func: gating === 1 ? 'softmax' : 'sigmoid',
    routed_scaling_factor: num(md, k('expert_weights_scale'), 1),
    use_grouped_topk: true,
    num_expert_group: num(md, k('expert_group_count'), 1) || 1,
    topk_group: num(md, k('expert_group_used_count'), 1) || 1,
    tie_word_embeddings: false,
    bos_token_id: bos === undefined ? null : Number(bos),
    eos_token_id: eos === undefined ? null : Number(eos),
    model_max_length: num(md, k('context_length'), 0) || null,
  };
}

/** What a GGUF tensor name is, for a layer of a given kind. */
export type GgufTarget =
  | { kind: 'slot'; role: Role; layer: number; transform?: 'neg_exp_inverse' }
  | { kind: 'experts'; role: 'EXP_GATE' | 'EXP_UP' | 'EXP_DOWN'; layer: number }
  | { kind: 'kv_b_part'; part: 'k' | 'v'; layer: number };

export function ggufTarget(name: string, c: KimiConfig): GgufTarget | null {
  if (name === 'token_embd.weight') return { kind: 'slot', role: 'TOK_EMBD', layer: -1 };
  if (name === 'output_norm.weight') return { kind: 'slot', role: 'OUT_NORM', layer: -1 };
  if (name === 'output.weight') return { kind: 'slot', role: 'LM_HEAD', layer: -1 };
  const m = /^blk\.(\d+)\.(.+)$/.exec(name);
  if (!m) return null;
  const layer = Number(m[1]);
  const kind = c.layerKinds[layer];
  if (!kind) return null;
  const rest = m[2]!;
  if (kind === 'kda' && rest === 'ssm_a') return { kind: 'slot', role: 'KDA_A_LOG', layer, transform: 'neg_exp_inverse' };
  if (kind === 'mla' && (rest === 'attn_k_b.weight' || rest === 'attn_v_b.weight')) return { kind: 'kv_b_part', part: rest[5] as 'k' | 'v', layer };
  const t = layerTensors(c, layer).find((x) => x.gguf === rest);
  if (t) return { kind: 'slot', role: t.role, layer };
  const e = c.moe ? expertTensors(c).find((x) => x.gguf === rest) : undefined;
  if (e) return { kind: 'experts', role: e.role, layer };
  return null;
}
