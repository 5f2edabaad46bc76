/**
 * The layer kinds of the Kimi Linear family as data, the TypeScript twin of the rows in
 * engine/model/layers.c: each kind's tensors (engine role, HF and GGUF names, shapes, how a
 * synthetic checkpoint initializes them), its per-session state and the cache it grows per token.
 * The checkpoint names, the synthetic-model maker, the GGUF converter, the router's memory
 * estimates and the benches read this instead of repeating the formulas; a test checks it
 * against the engine's own answers (kle_model_tensor_expect, kle_session_state_size).
 */
import { isMoeLayer, type KimiConfig, type LayerKind } from './config.js';
import type { Role } from './roles.js';

/** How a synthetic checkpoint fills a tensor (see weights/synthetic.ts). */
export type Init =
  | { kind: 'matrix'; gain?: number } // uniform, scaled by gain / sqrt(fan-in)
  | { kind: 'norm' } // 1 + small noise
  | { kind: 'conv' } | { kind: 'a_log' } | { kind: 'dt_bias' } | { kind: 'router' } | { kind: 'router_bias' };

export interface LayerTensor {
  readonly role: Role;
  /** HF name after `model.layers.N.` */
  readonly hf: string;
  /** llama.cpp's GGUF name after `blk.N.`, where the tensor maps one to one (null: the converter splits or stacks it) */
  readonly gguf: string | null;
  /** the engine's [rows, cols] (nn.Linear's [out, in]; [1, n] for vectors) */
  readonly rows: number;
  readonly cols: number;
  /** the shape the HF checkpoint stores, where it is not [rows, cols] */
  readonly hfShape?: readonly number[];
  /** f32 only (norms, gates, conv, router): never quantized */
  readonly f32: boolean;
  readonly optional?: boolean;
  readonly init: Init;
}

export interface LayerKindSpec {
  readonly name: 'kda' | 'mla' | 'dense' | 'moe';
  /** the tensors of one layer (a MoE layer's per-expert ones are in {@link expertTensors}) */
  tensors(c: KimiConfig): LayerTensor[];
  /** floats of per-session state that do not grow (KDA: three conv tails and S) */
  stateFloats(c: KimiConfig): number;
  /** floats each token adds to the session's cache (MLA: one latent row) */
  cacheRowFloats(c: KimiConfig): number;
}

const mat = (role: Role, hf: string, gguf: string | null, rows: number, cols: number, gain?: number): LayerTensor => ({
  role, hf, gguf, rows, cols, f32: false, init: { kind: 'matrix', ...(gain ? { gain } : {}) },
});
const vec = (role: Role, hf: string, gguf: string | null, n: number, init: Init, hfShape?: number[]): LayerTensor => ({
  role, hf, gguf, rows: 1, cols: n, f32: true, init, ...(hfShape ? { hfShape } : {}),
});

/** Gate values per head of the linear-attention layers: one per channel (KDA) or one (Gated DeltaNet). */
export function kdaGateWidth(c: KimiConfig): number {
  return c.kda.gatePerHead ? 1 : c.kda.headDim;
}

const kda: LayerKindSpec = {
  name: 'kda',
  tensors(c) {
    const D = c.hiddenSize, { numHeads: H, headDim: dk, convKernel: W } = c.kda, HK = H * dk, HG = H * kdaGateWidth(c);
    const conv = (x: 'q' | 'k' | 'v'): LayerTensor => ({
      role: `KDA_CONV_${x.toUpperCase() as 'Q' | 'K' | 'V'}`, hf: `self_attn.${x}_conv1d.weight`, gguf: `ssm_conv1d_${x}.weight`,
      rows: HK, cols: W, hfShape: [HK, 1, W], f32: true, init: { kind: 'conv' },
    });
    return [
      mat('KDA_Q', 'self_attn.q_proj.weight', 'attn_q.weight', HK, D),
      mat('KDA_K', 'self_attn.k_proj.weight', 'attn_k.weight', HK, D),
      mat('KDA_V', 'self_attn.v_proj.weight', 'attn_v.weight', HK, D),
      conv('q'), conv('k'), conv('v'),
      mat('KDA_F_A', 'self_attn.f_a_proj.weight', 'ssm_f_a.weight', dk, D),
      mat('KDA_F_B', 'self_attn.f_b_proj.weight', 'ssm_f_b.weight', HG, dk),
      // GGUF stores A = -exp(A_log) as ssm_a (the converter and loader transform it)
      vec('KDA_A_LOG', 'self_attn.A_log', null, H, { kind: 'a_log' }, [1, 1, H, 1]),
      vec('KDA_DT_BIAS', 'self_attn.dt_bias', 'ssm_dt.bias', HG, { kind: 'dt_bias' }),
      mat('KDA_BETA', 'self_attn.b_proj.weight', 'ssm_beta.weight', H, D),
      mat('KDA_G_A', 'self_attn.g_a_proj.weight', 'ssm_g_a.weight', dk, D),
      mat('KDA_G_B', 'self_attn.g_b_proj.weight', 'ssm_g_b.weight', HK, dk),
      vec('KDA_O_NORM', 'self_attn.o_norm.weight', 'ssm_norm.weight', dk, { kind: 'norm' }),
      mat('KDA_O', 'self_attn.o_proj.weight', 'attn_output.weight', D, HK),
    ];
  },
  stateFloats: (c) => {
    const HK = c.kda.numHeads * c.kda.headDim;
    return 3 * (c.kda.convKernel - 1) * HK + c.kda.numHeads * c.kda.headDim * c.kda.headDim;
  },
  cacheRowFloats: () => 0,
};

const mla: LayerKindSpec = {
  name: 'mla',
  tensors(c) {
    const D = c.hiddenSize, { numHeads: Hm, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vh, kvLoraRank: R } = c.mla;
    return [
      mat('MLA_Q', 'self_attn.q_proj.weight', 'attn_q.weight', Hm * (nope + rope), D, 2),
      mat('MLA_KV_A', 'self_attn.kv_a_proj_with_mqa.weight', 'attn_kv_a_mqa.weight', R + rope, D, 2),
      vec('MLA_KV_NORM', 'self_attn.kv_a_layernorm.weight', 'attn_kv_a_norm.weight', R, { kind: 'norm' }),
      // llama.cpp splits kv_b into attn_k_b (transposed per head) and attn_v_b
      mat('MLA_KV_B', 'self_attn.kv_b_proj.weight', null, Hm * (nope + vh), R),
      mat('MLA_O', 'self_attn.o_proj.weight', 'attn_output.weight', D, Hm * vh),
      // our extension (docs/kv-budget.md): a learned token importance for the bounded cache
      ...(c.kvImportanceHead ? [{ ...vec('MLA_KV_IMPORTANCE', 'self_attn.kv_importance.weight', 'attn_kv_importance.weight', D, { kind: 'matrix' }), hfShape: [1, D] }] : []),
    ];
  },
  stateFloats: () => 0,
  cacheRowFloats: (c) => c.mla.kvLoraRank + c.mla.qkRopeHeadDim,
};

const dense: LayerKindSpec = {
  name: 'dense',
  tensors(c) {
    const D = c.hiddenSize, I = c.intermediateSize;
    return [
      mat('FFN_GATE', 'mlp.gate_proj.weight', 'ffn_gate.weight', I, D),
      mat('FFN_UP', 'mlp.up_proj.weight', 'ffn_up.weight', I, D),
      mat('FFN_DOWN', 'mlp.down_proj.weight', 'ffn_down.weight', D, I),
    ];
  },
  stateFloats: () => 0,
  cacheRowFloats: () => 0,
};

const moe: LayerKindSpec = {
  name: 'moe',
  tensors(c) {
    const m = c.moe!, D = c.hiddenSize, E = m.numExperts, S = m.moeIntermediateSize * m.numSharedExperts;
    const p = 'block_sparse_moe.';
    return [
      { role: 'MOE_ROUTER', hf: `${p}gate.weight`, gguf: 'ffn_gate_inp.weight', rows: E, cols: D, f32: true, init: { kind: 'router' } },
      // optional: a checkpoint without it routes as with a zero bias
      { ...vec('MOE_BIAS', `${p}gate.e_score_correction_bias`, 'exp_probs_b.bias', E, { kind: 'router_bias' }), optional: true },
      ...(S
        ? [
            mat('SHEXP_GATE', `${p}shared_experts.gate_proj.weight`, 'ffn_gate_shexp.weight', S, D),
            mat('SHEXP_UP', `${p}shared_experts.up_proj.weight`, 'ffn_up_shexp.weight', S, D),
            mat('SHEXP_DOWN', `${p}shared_experts.down_proj.weight`, 'ffn_down_shexp.weight', D, S),
          ]
        : []),
    ];
  },
  stateFloats: () => 0,
  cacheRowFloats: () => 0,
};

/** A routed expert's three matrices (HF `experts.E.w1` etc.; GGUF stacks them per layer). */
export function expertTensors(c: KimiConfig): { role: 'EXP_GATE' | 'EXP_UP' | 'EXP_DOWN'; hf: 'w1' | 'w2' | 'w3'; gguf: string; rows: number; cols: number }[] {
  const D = c.hiddenSize, MI = c.moe?.moeIntermediateSize ?? 0;
  // Mixtral's naming: w1 gate, w2 down, w3 up (in the order checkpoints list them)
  return [
    { role: 'EXP_GATE', hf: 'w1', gguf: 'ffn_gate_exps.weight', rows: MI, cols: D },
    { role: 'EXP_DOWN', hf: 'w2', gguf: 'ffn_down_exps.weight', rows: D, cols: MI },
    { role: 'EXP_UP', hf: 'w3', gguf: 'ffn_up_exps.weight', rows: MI, cols: D },
  ];
}

export const MIXERS: Readonly<Record<LayerKind, LayerKindSpec>> = { kda, mla };
export const FEED_FORWARD = { dense, moe } as const;

/** The norms every layer has, before its mixer and before its feed-forward block. */
export function layerNorms(c: KimiConfig): LayerTensor[] {
  return [
    vec('ATTN_NORM', 'input_layernorm.weight', 'attn_norm.weight', c.hiddenSize, { kind: 'norm' }),
    vec('FFN_NORM', 'post_attention_layernorm.weight', 'ffn_norm.weight', c.hiddenSize, { kind: 'norm' }),
  ];
}

/** Layer l's two blocks: its token mixer and its feed-forward block. */
export function layerKinds(c: KimiConfig, l: number): [LayerKindSpec, LayerKindSpec] {
  return [MIXERS[c.layerKinds[l]!], isMoeLayer(c, l) ? moe : dense];
}

/** Every per-layer tensor of layer l, in checkpoint order: norms, mixer, feed-forward (experts aside). */
export function layerTensors(c: KimiConfig, l: number): LayerTensor[] {
  const [mixer, ffn] = layerKinds(c, l);
  return [...layerNorms(c), ...mixer.tensors(c), ...ffn.tensors(c)];
}

/**
 * Floats of a session's state at `tokens` tokens: every layer's fixed state and cache rows; with
 * an MLA cache bound (`kvBudget` > 0) at most that many rows, each with its position and score.
 */
export function sessionStateFloats(c: KimiConfig, tokens: number, kvBudget = 0): number {
  const rows = kvBudget > 0 ? Math.min(tokens, kvBudget) : tokens;
  let n = 0;
  for (let l = 0; l < c.numLayers; l++) {
    const [mixer] = layerKinds(c, l);
    const row = mixer.cacheRowFloats(c);
    n += mixer.stateFloats(c) + rows * (row + (kvBudget > 0 && row > 0 ? 2 : 0));
  }
  return n;
}

/**
 * Bytes a session holds in the engine's memory at `tokens` cached rows: f32 states, the MLA
 * caches at `kvBytes` a value (4 for f32, 2 for BF16), and the last logits (activations aside).
 */
export function sessionStateBytes(c: KimiConfig, tokens: number, kvBytes: 2 | 4 = 4): number {
  let n = 4 * c.vocabSize;
  for (let l = 0; l < c.numLayers; l++) {
    const [mixer] = layerKinds(c, l);
    n += 4 * mixer.stateFloats(c) + kvBytes * tokens * mixer.cacheRowFloats(c);
  }
  return n;
}

/** Header and checksum of a session blob (engine/model/session.c), without and with an MLA cache bound. */
export const BLOB_FRAME_BYTES = 32 + 8;
export const BLOB_FRAME_BYTES_BUDGET = 56 + 8;

/** Bytes of a session's state blob at `tokens` tokens, with its last logits (what save() writes). */
export function sessionBlobBytes(c: KimiConfig, tokens: number, kvBudget = 0): number {
  return (kvBudget > 0 ? BLOB_FRAME_BYTES_BUDGET : BLOB_FRAME_BYTES) + 4 * (sessionStateFloats(c, tokens, kvBudget) + c.vocabSize);
}
