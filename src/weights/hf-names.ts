/**
 * HF tensor names of KimiLinearForCausalLM (as its modeling code names its modules) -> engine
 * slots. Attention module names are shared by KDA and MLA layers (q_proj, o_proj), so the
 * layer's kind decides the role.
 */
import type { Role, TensorSlot } from '../engine/roles.js';
import type { KimiConfig } from '../engine/config.js';

const GLOBAL: Record<string, Role> = {
  'model.embed_tokens.weight': 'TOK_EMBD',
  'model.norm.weight': 'OUT_NORM',
  'lm_head.weight': 'LM_HEAD',
};

const KDA: Record<string, Role> = {
  'self_attn.q_proj.weight': 'KDA_Q',
  'self_attn.k_proj.weight': 'KDA_K',
  'self_attn.v_proj.weight': 'KDA_V',
  'self_attn.q_conv1d.weight': 'KDA_CONV_Q',
  'self_attn.k_conv1d.weight': 'KDA_CONV_K',
  'self_attn.v_conv1d.weight': 'KDA_CONV_V',
  'self_attn.f_a_proj.weight': 'KDA_F_A',
  'self_attn.f_b_proj.weight': 'KDA_F_B',
  'self_attn.A_log': 'KDA_A_LOG',
  'self_attn.dt_bias': 'KDA_DT_BIAS',
  'self_attn.b_proj.weight': 'KDA_BETA',
  'self_attn.g_a_proj.weight': 'KDA_G_A',
  'self_attn.g_b_proj.weight': 'KDA_G_B',
  'self_attn.o_norm.weight': 'KDA_O_NORM',
  'self_attn.o_proj.weight': 'KDA_O',
};

const MLA: Record<string, Role> = {
  'self_attn.q_proj.weight': 'MLA_Q',
  'self_attn.kv_a_proj_with_mqa.weight': 'MLA_KV_A',
  'self_attn.kv_a_layernorm.weight': 'MLA_KV_NORM',
  'self_attn.kv_b_proj.weight': 'MLA_KV_B',
  'self_attn.o_proj.weight': 'MLA_O',
};

const LAYER: Record<string, Role> = {
  'input_layernorm.weight': 'ATTN_NORM',
  'post_attention_layernorm.weight': 'FFN_NORM',
  'mlp.gate_proj.weight': 'FFN_GATE',
  'mlp.up_proj.weight': 'FFN_UP',
  'mlp.down_proj.weight': 'FFN_DOWN',
  'block_sparse_moe.gate.weight': 'MOE_ROUTER',
  'block_sparse_moe.gate.e_score_correction_bias': 'MOE_BIAS',
  'block_sparse_moe.shared_experts.gate_proj.weight': 'SHEXP_GATE',
  'block_sparse_moe.shared_experts.up_proj.weight': 'SHEXP_UP',
  'block_sparse_moe.shared_experts.down_proj.weight': 'SHEXP_DOWN',
};

// the experts' w1/w2/w3 are gate/down/up (Mixtral's naming)
const EXPERT: Record<string, Role> = { w1: 'EXP_GATE', w3: 'EXP_UP', w2: 'EXP_DOWN' };

/** Names that hold no weights of the math (buffers some exports include). */
export function isIgnorableHfName(name: string): boolean {
  return name.endsWith('.rotary_emb.inv_freq');
}

/** The slot of an HF tensor name, or null if the name is not part of this architecture. */
export function hfSlot(name: string, c: KimiConfig): TensorSlot | null {
  const g = GLOBAL[name];
  if (g) return { role: g, layer: -1, expert: 0 };
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  if (!m) return null;
  const layer = Number(m[1]);
  if (layer >= c.numLayers) return null;
  const rest = m[2]!;
  const byKind = (c.layerKinds[layer] === 'kda' ? KDA : MLA)[rest];
  if (byKind) return { role: byKind, layer, expert: 0 };
  const r = LAYER[rest];
  if (r) return { role: r, layer, expert: 0 };
  const e = /^block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$/.exec(rest);
  if (e) return { role: EXPERT[e[2]!]!, layer, expert: Number(e[1]) };
  return null;
}

/** The HF name of a slot (for messages about tensors that are missing). */
export function hfName(s: TensorSlot, c: KimiConfig): string {
  if (s.layer < 0) return Object.entries(GLOBAL).find(([, r]) => r === s.role)?.[0] ?? s.role;
  const pre = `model.layers.${s.layer}.`;
  const table = { ...LAYER, ...(c.layerKinds[s.layer] === 'kda' ? KDA : MLA) };
  const hit = Object.entries(table).find(([, r]) => r === s.role);
  if (hit) return pre + hit[0];
  const w = Object.entries(EXPERT).find(([, r]) => r === s.role);
  return w ? `${pre}block_sparse_moe.experts.${s.expert}.${w[0]}.weight` : `${pre}${s.role}`;
}
