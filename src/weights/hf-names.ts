/**
 * HF tensor names of KimiLinearForCausalLM (as its modeling code names its modules) -> engine
 * slots, read from the layer kinds' description (engine/layer-kinds.ts). Attention module names
 * are shared by KDA and MLA layers (q_proj, o_proj), so the layer's kind decides the role.
 */
import type { KimiConfig } from '../engine/config.js';
import { expertTensors, layerTensors } from '../engine/layer-kinds.js';
import type { Role, TensorSlot } from '../engine/roles.js';

const GLOBAL: Record<string, Role> = {
  'model.embed_tokens.weight': 'TOK_EMBD',
  'model.norm.weight': 'OUT_NORM',
  'lm_head.weight': 'LM_HEAD',
};

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
  const t = layerTensors(c, layer).find((x) => x.hf === rest);
  if (t) return { role: t.role, layer, expert: 0 };
  const e = /^block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$/.exec(rest);
  const ex = e && c.moe ? expertTensors(c).find((x) => x.hf === e[2]) : undefined;
  if (ex) return { role: ex.role, layer, expert: Number(e![1]) };
  return null;
}

/** The HF name of a slot (for messages about tensors that are missing). */
export function hfName(s: TensorSlot, c: KimiConfig): string {
  if (s.layer < 0) return Object.entries(GLOBAL).find(([, r]) => r === s.role)?.[0] ?? s.role;
  const pre = `model.layers.${s.layer}.`;
  const hit = layerTensors(c, s.layer).find((t) => t.role === s.role);
  if (hit) return pre + hit.hf;
  const w = expertTensors(c).find((t) => t.role === s.role);
  return w ? `${pre}block_sparse_moe.experts.${s.expert}.${w.hf}.weight` : `${pre}${s.role}`;
}
