/**
 * The model config: HF `config.json` of `KimiLinearForCausalLM` (model_type "kimi_linear") read
 * into a checked, engine-ready form. Every key that changes the math is read explicitly; one we
 * do not support is refused with its name, never ignored.
 */

/** A config the engine cannot run, with the key that says why. */
export class ConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`config.json: ${key}: ${message}`);
    this.name = 'ConfigError';
  }
}

export type LayerKind = 'kda' | 'mla';

export interface MoeConfig {
  readonly numExperts: number;
  readonly expertsPerToken: number;
  readonly numSharedExperts: number;
  readonly moeIntermediateSize: number;
  readonly firstKDenseReplace: number;
  readonly moeLayerFreq: number;
  readonly numExpertGroup: number;
  readonly topkGroup: number;
  readonly routerActivation: 'softmax' | 'sigmoid';
  readonly renormalize: boolean;
  readonly routedScalingFactor: number;
}

export interface KimiConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly intermediateSize: number;
  readonly rmsNormEps: number;
  readonly tieWordEmbeddings: boolean;
  readonly layerKinds: readonly LayerKind[];
  /**
   * The linear-attention layers. `gatePerHead` gives them one decay per head (Gated DeltaNet's
   * gate: f_b_proj and dt_bias of num_heads rows) instead of one per channel (KDA's); no
   * config.json key selects it yet, so only configs built in code have it.
   */
  readonly kda: { numHeads: number; headDim: number; convKernel: number; gateLowerBound: number; gatePerHead: boolean };
  readonly mla: { numHeads: number; qkNopeHeadDim: number; qkRopeHeadDim: number; vHeadDim: number; kvLoraRank: number };
  readonly moe: MoeConfig | null;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** model_max_length, if the config gives one */
  readonly maxContext: number | null;
  /**
   * Every MLA layer has a learned token-importance head (our extension: config key
   * kv_importance_head, tensor self_attn.kv_importance.weight [1, hidden]), which the bounded
   * MLA cache's 'learned' policy scores rows with (docs/kv-budget.md).
   */
  readonly kvImportanceHead: boolean;
}

type Json = Record<string, unknown>;

function int(o: Json, key: string, path = key, opts: { min?: number; optional?: number } = {}): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (opts.optional !== undefined) return opts.optional;
    throw new ConfigError(path, 'missing');
  }
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ConfigError(path, `expected an integer, got ${JSON.stringify(v)}`);
  if (v < (opts.min ?? 0)) throw new ConfigError(path, `${v} is below ${opts.min ?? 0}`);
  return v;
}

function num(o: Json, key: string, fallback?: number): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ConfigError(key, 'missing');
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(key, `expected a number, got ${JSON.stringify(v)}`);
  return v;
}

function bool(o: Json, key: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw new ConfigError(key, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function intList(o: Json, key: string, path: string): number[] {
  const v = o[key];
  if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x))) throw new ConfigError(path, 'expected a list of integers');
  return v as number[];
}

/** Reads and checks an HF config.json (already parsed from JSON). */
export function parseKimiConfig(raw: unknown): KimiConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('(root)', 'not a JSON object');
  const o = raw as Json;
  const arch = o.architectures;
  if (o.model_type !== undefined && o.model_type !== 'kimi_linear') {
    throw new ConfigError('model_type', `"${String(o.model_type)}" is not kimi_linear (KimiLinearForCausalLM)`);
  }
  if (Array.isArray(arch) && !arch.includes('KimiLinearForCausalLM')) {
    throw new ConfigError('architectures', `${JSON.stringify(arch)} does not name KimiLinearForCausalLM`);
  }
  const numLayers = int(o, 'num_hidden_layers', undefined, { min: 1 });
  const hiddenSize = int(o, 'hidden_size', undefined, { min: 4 });
  if (hiddenSize % 4) throw new ConfigError('hidden_size', `${hiddenSize} is not a multiple of 4`);
  if (o.hidden_act !== undefined && o.hidden_act !== 'silu') throw new ConfigError('hidden_act', `"${String(o.hidden_act)}" is not supported (silu only)`);

  const lac = o.linear_attn_config;
  if (typeof lac !== 'object' || lac === null) throw new ConfigError('linear_attn_config', 'missing (an all-MLA Kimi config is not a Kimi Linear model)');
  const la = lac as Json;
  const kdaIds = intList(la, 'kda_layers', 'linear_attn_config.kda_layers');
  const fullIds = intList(la, 'full_attn_layers', 'linear_attn_config.full_attn_layers');
  const layerKinds: LayerKind[] = [];
  for (let i = 1; i <= numLayers; i++) {
    const k = kdaIds.includes(i), f = fullIds.includes(i);
    if (k === f) throw new ConfigError('linear_attn_config', `layer ${i} (one-based) must be in exactly one of kda_layers and full_attn_layers`);
    layerKinds.push(k ? 'kda' : 'mla');
  }
  for (const id of [...kdaIds, ...fullIds]) if (id < 1 || id > numLayers) throw new ConfigError('linear_attn_config', `layer id ${id} is outside 1..${numLayers}`);
  if (la.use_full_rank_gate === true) throw new ConfigError('linear_attn_config.use_full_rank_gate', 'true is not supported yet (no public checkpoint to verify its tensor names against)');
  const kdaHeadDim = int(la, 'head_dim', 'linear_attn_config.head_dim', { min: 4 });
  if (kdaHeadDim % 4 || kdaHeadDim > 1024) throw new ConfigError('linear_attn_config.head_dim', `${kdaHeadDim} must be a multiple of 4 up to 1024`);
  const gateLowerBound = la.gate_lower_bound === undefined || la.gate_lower_bound === null ? 0 : num(la, 'gate_lower_bound');
  if (gateLowerBound > 0) throw new ConfigError('linear_attn_config.gate_lower_bound', `${gateLowerBound} must be negative`);
  // "channel": KDA's decay per key channel; "head": Gated DeltaNet's one decay per head (GDN-H)
  const gateType = la.gate_type === undefined || la.gate_type === null ? 'channel' : la.gate_type;
  if (gateType !== 'channel' && gateType !== 'head') throw new ConfigError('linear_attn_config.gate_type', `${JSON.stringify(gateType)} is not "channel" (KDA) or "head" (Gated DeltaNet)`);
  const kda = {
    numHeads: int(la, 'num_heads', 'linear_attn_config.num_heads', { min: 1 }),
    headDim: kdaHeadDim,
    convKernel: int(la, 'short_conv_kernel_size', 'linear_attn_config.short_conv_kernel_size', { min: 1 }),
    gateLowerBound,
    gatePerHead: gateType === 'head',
  };
  if (kda.convKernel > 16) throw new ConfigError('linear_attn_config.short_conv_kernel_size', `${kda.convKernel} exceeds 16`);
  if (la.num_kv_heads !== undefined && la.num_kv_heads !== kda.numHeads) throw new ConfigError('linear_attn_config.num_kv_heads', 'grouped KDA heads are not supported');

  if (o.q_lora_rank !== undefined && o.q_lora_rank !== null) throw new ConfigError('q_lora_rank', 'a low-rank q path is not supported (Kimi Linear uses none)');
  if (o.mla_use_nope === false) throw new ConfigError('mla_use_nope', 'false (rotary MLA) is not supported: Kimi Linear MLA uses no positional encoding');
  if (o.mla_use_output_gate === true) throw new ConfigError('mla_use_output_gate', 'the MLA output gate is not supported yet');
  if (o.rope_scaling !== undefined && o.rope_scaling !== null) throw new ConfigError('rope_scaling', 'is set, but MLA uses no rotary here (mla_use_nope)');
  const anyMla = layerKinds.includes('mla');
  const mla = {
    numHeads: anyMla ? int(o, 'num_attention_heads', undefined, { min: 1 }) : 0,
    qkNopeHeadDim: anyMla ? int(o, 'qk_nope_head_dim', undefined, { min: 1 }) : 0,
    qkRopeHeadDim: anyMla ? int(o, 'qk_rope_head_dim', undefined, { optional: 0 }) : 0,
    vHeadDim: anyMla ? int(o, 'v_head_dim', undefined, { min: 1 }) : 0,
    kvLoraRank: anyMla ? int(o, 'kv_lora_rank', undefined, { min: 4 }) : 0,
  };
  if (anyMla) {
    if (mla.kvLoraRank % 4) throw new ConfigError('kv_lora_rank', `${mla.kvLoraRank} is not a multiple of 4`);
    if (mla.kvLoraRank + mla.qkRopeHeadDim > 1024) throw new ConfigError('kv_lora_rank', 'kv_lora_rank + qk_rope_head_dim exceeds 1024');
    const kvh = o.num_key_value_heads;
    if (kvh !== undefined && kvh !== null && kvh !== mla.numHeads) throw new ConfigError('num_key_value_heads', `${String(kvh)} differs from num_attention_heads (MLA shares one latent)`);
  }

  let moe: MoeConfig | null = null;
  const numExperts = o.num_experts === null || o.num_experts === undefined ? 0 : int(o, 'num_experts');
  if (numExperts > 0) {
    const act = o.moe_router_activation_func ?? 'softmax';
    if (act !== 'softmax' && act !== 'sigmoid') throw new ConfigError('moe_router_activation_func', `"${String(act)}" is not softmax or sigmoid`);
    const grouped = bool(o, 'use_grouped_topk', false);
    moe = {
      numExperts,
      expertsPerToken: int(o, 'num_experts_per_token', undefined, { min: 1 }),
      numSharedExperts: int(o, 'num_shared_experts', undefined, { optional: 0 }),
      moeIntermediateSize: int(o, 'moe_intermediate_size', undefined, { min: 1 }),
      firstKDenseReplace: int(o, 'first_k_dense_replace', undefined, { optional: 0 }),
      moeLayerFreq: int(o, 'moe_layer_freq', undefined, { min: 1, optional: 1 }),
      numExpertGroup: grouped ? int(o, 'num_expert_group', undefined, { min: 1, optional: 1 }) : 1,
      topkGroup: grouped ? int(o, 'topk_group', undefined, { min: 1, optional: 1 }) : 1,
      routerActivation: act,
      renormalize: bool(o, 'moe_renormalize', true),
      routedScalingFactor: num(o, 'routed_scaling_factor', 1),
    };
    if (moe.expertsPerToken > numExperts) throw new ConfigError('num_experts_per_token', `${moe.expertsPerToken} exceeds num_experts ${numExperts}`);
    if (numExperts % moe.numExpertGroup) throw new ConfigError('num_expert_group', `${moe.numExpertGroup} does not divide num_experts ${numExperts}`);
    if (moe.topkGroup > moe.numExpertGroup) throw new ConfigError('topk_group', `${moe.topkGroup} exceeds num_expert_group`);
    if (moe.expertsPerToken > moe.topkGroup * (numExperts / moe.numExpertGroup)) throw new ConfigError('num_experts_per_token', 'more experts than the chosen groups hold');
  }
  const needsDense = layerKinds.some((_, l) => !(moe && l >= moe.firstKDenseReplace && l % moe.moeLayerFreq === 0));
  const intermediateSize = needsDense ? int(o, 'intermediate_size', undefined, { min: 1 }) : int(o, 'intermediate_size', undefined, { optional: 0 });
  const eos = o.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.filter((x): x is number => Number.isSafeInteger(x)) : Number.isSafeInteger(eos) ? [eos as number] : [];
  const vocabSize = int(o, 'vocab_size', undefined, { min: 1 });
  for (const id of eosTokenIds) if (id < 0 || id >= vocabSize) throw new ConfigError('eos_token_id', `${id} is outside the vocabulary (0..${vocabSize - 1})`);
  const bos = o.bos_token_id;
  if (Number.isSafeInteger(bos) && ((bos as number) < 0 || (bos as number) >= vocabSize)) throw new ConfigError('bos_token_id', `${String(bos)} is outside the vocabulary (0..${vocabSize - 1})`);
  if (o.model_max_length !== undefined && o.model_max_length !== null && !(Number.isSafeInteger(o.model_max_length) && (o.model_max_length as number) >= 1)) throw new ConfigError('model_max_length', `expected a positive integer, got ${JSON.stringify(o.model_max_length)}`);
  return {
    vocabSize,
    hiddenSize,
    numLayers,
    intermediateSize,
    rmsNormEps: num(o, 'rms_norm_eps', 1e-6),
    tieWordEmbeddings: bool(o, 'tie_word_embeddings', false),
    layerKinds,
    kda,
    mla,
    moe,
    bosTokenId: Number.isSafeInteger(o.bos_token_id) ? (o.bos_token_id as number) : null,
    eosTokenIds,
    maxContext: Number.isSafeInteger(o.model_max_length) ? (o.model_max_length as number) : null,
    kvImportanceHead: bool(o, 'kv_importance_head', false),
  };
}

/** True when layer l's feed-forward block is the MoE (same rule as the reference model). */
export function isMoeLayer(c: KimiConfig, l: number): boolean {
  return c.moe !== null && l >= c.moe.firstKDenseReplace && l % c.moe.moeLayerFreq === 0;
}

/** The engine's config arrays (order of KLE_CFG_* and KLE_CFGF_* in kle.h). */
export function engineConfig(c: KimiConfig): { ints: Int32Array; floats: Float32Array } {
  const m = c.moe;
  const ints = [
    c.vocabSize, c.hiddenSize, c.numLayers, c.intermediateSize,
    c.kda.numHeads, c.kda.headDim, c.kda.convKernel, c.kda.gatePerHead ? 1 : 0,
    c.mla.numHeads, c.mla.qkNopeHeadDim, c.mla.qkRopeHeadDim, c.mla.vHeadDim, c.mla.kvLoraRank,
    m?.numExperts ?? 0, m?.expertsPerToken ?? 0, m?.numSharedExperts ?? 0, m?.moeIntermediateSize ?? 0,
    m?.firstKDenseReplace ?? 0, m?.moeLayerFreq ?? 1, m?.numExpertGroup ?? 1, m?.topkGroup ?? 1,
    m?.routerActivation === 'sigmoid' ? 1 : 0, m?.renormalize ? 1 : 0, c.tieWordEmbeddings ? 1 : 0, c.kvImportanceHead ? 1 : 0,
    ...c.layerKinds.map((k) => (k === 'kda' ? 0 : 1)),
  ];
  return {
    ints: Int32Array.from(ints),
    floats: Float32Array.from([c.rmsNormEps, m?.routedScalingFactor ?? 1, c.kda.gateLowerBound]),
  };
}
